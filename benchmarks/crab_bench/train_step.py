"""Training step time and peak memory of a paper recipe, on synthetic batches.

The step is the trainer's own (`Trainer._micro_step` and `_optimizer_step`:
autocast, weighted CE, the five MPCL legs, backward, AdamW over the head, the
legs and the encoders with the CNN feature encoder frozen); only the data is
made up: random waveforms of one length and texts cut to `text_tokens`,
padded by the trainer's own `Collator`. A real corpus pads each micro-batch to
its longest clip (capped at the recipe's 12 s), so the 12 s figure is the
slowest case. The encoders are random-weight models of the real sizes
(`random:wavlm-large` + `random:roberta-large` for the "large" preset): the
same compute as the pretrained ones, with no download.

`epoch_estimates` turns the measured rate into the wall time of an epoch and
of a whole run (the recipe's epochs) from the paper's class counts (Table I).
"""

from __future__ import annotations

import dataclasses
import time

from crab_bench.common import check_choice, check_range
from crab_rt.errors import ConfigError

__all__ = ["TrainStepConfig", "measure_train_step", "epoch_estimates", "AMP_CHOICES", "PRESET_ENCODERS"]

AMP_CHOICES = ("off", "bf16", "fp16")
# preset -> (speech encoder, text encoder, head width override or None for the recipe's)
PRESET_ENCODERS = {
    "tiny": ("random:wavlm-tiny", "random:roberta-tiny", 16),
    "base": ("random:wavlm-base-plus", "random:roberta-base", None),
    "large": ("random:wavlm-large", "random:roberta-large", None),
}
_WORDS = ("i love this so much this is terrible and i am angry okay fine then so sad today what a wonderful "
          "surprise leave me alone i do not know what to say that is great news").split()


@dataclasses.dataclass(frozen=True)
class TrainStepConfig:
    """One training-step measurement.

    Attributes:
        preset: encoder sizes, one of PRESET_ENCODERS ("large": WavLM Large + RoBERTa Large, the paper's).
        recipe: the built-in recipe whose head, loss and optimizer settings are used ("iemocap", "meld", ...).
        micro_batch: samples per micro-batch (the paper's 32 / 4 = 8); an optimizer step is `grad_accum_steps`
            of them, as in the recipe.
        audio_s: length of every waveform, seconds (the recipes cut at 12 s).
        text_tokens: length of every text, tokens (the recipes pad to 128).
        amp: "off" (fp32, the official code), "bf16" or "fp16" autocast (CUDA only; the trainer runs fp32 on
            the CPU whatever it is asked).
        device: "cpu" or "cuda:N".
        warmup_steps: untimed optimizer steps first (allocator, cuDNN and autotuning warm-up).
        steps: timed optimizer steps.
        seed: seed of the weights and the batches.
    """

    preset: str = "large"
    recipe: str = "iemocap"
    micro_batch: int = 8
    audio_s: float = 12.0
    text_tokens: int = 128
    amp: str = "bf16"
    device: str = "cuda:0"
    warmup_steps: int = 1
    steps: int = 3
    seed: int = 0

    def validate(self) -> TrainStepConfig:
        check_choice("--preset", self.preset, tuple(PRESET_ENCODERS))
        check_choice("--amp", self.amp, AMP_CHOICES)
        check_range("--micro-batch", self.micro_batch, 2)  # MPCL needs another sample in the micro-batch
        check_range("--audio-s", self.audio_s, 0.1, 60.0)
        check_range("--text-tokens", self.text_tokens, 3, 512)
        check_range("--warmup-steps", self.warmup_steps, 0)
        check_range("--steps", self.steps, 1)
        check_range("--seed", self.seed, 0)
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"--device must be cpu or cuda:N, got {self.device!r}")
        return self


def _train_config(config: TrainStepConfig):
    from crab_rt.train.config import load_recipe

    speech, text, width = PRESET_ENCODERS[config.preset]
    recipe = load_recipe(config.recipe)
    accum = recipe.optim.grad_accum_steps
    overrides = [f"model.speech_encoder='{speech}'", f"model.text_encoder='{text}'",
                 f"model.max_text_tokens={config.text_tokens}", f"model.max_audio_s={max(config.audio_s, 0.5)}",
                 "data.manifest='synthetic'", f"run.amp='{config.amp}'", f"run.device='{config.device}'",
                 f"run.seed={config.seed}", f"optim.batch_size={config.micro_batch * accum}"]
    if width is not None:
        overrides += [f"model.head.hidden_dim={width}", f"model.head.classifier_dim={width}", f"loss.leg_dim={width}"]
    return load_recipe(config.recipe, overrides)


def _trainer(train_config, model, device, tokenizer):
    """A `Trainer` around `model` without a corpus: what `Trainer.__init__` sets up, less the data."""
    import torch

    from crab_rt.train.distributed import World
    from crab_rt.train.legs import ContrastiveLegs
    from crab_rt.train.losses import class_weights
    from crab_rt.train.trainer import Trainer, TrainingObjective

    trainer = Trainer.__new__(Trainer)
    trainer.config, trainer.device, trainer.model, trainer.tokenizer = train_config, device, model, tokenizer
    trainer.train_states = trainer.dev_states = None  # no corpus: the step runs the encoders
    labels = list(train_config.data.labels)
    loss, opt = train_config.loss, train_config.optim
    # inverse-frequency weights of a balanced label mix: the values do not change the step's cost
    trainer.weights = class_weights(list(range(len(labels))), len(labels)).to(device) if loss.class_weighting else None
    leg_out = len(labels) if loss.leg_loss == "ce" else loss.leg_dim
    trainer.legs = ContrastiveLegs(model.head.config.tap_dims(), loss.legs, loss.leg_dim, leg_out).to(device)
    trainer.world, trainer.objective = World(), TrainingObjective(model, trainer.legs)  # one process
    trainer.voice_optimizer = trainer.voice_scheduler = None
    if model.speech_classifier is not None:  # trained beside Crab, as the trainer does (its cost is in the step)
        trainer.voice_optimizer = torch.optim.AdamW(model.speech_classifier.parameters(), lr=opt.head_lr)
    encoders = [p for m in (model.speech_encoder, model.text_encoder) if m is not None
                for p in m.parameters() if p.requires_grad]
    head = list(model.head.parameters()) + list(trainer.legs.parameters())
    trainer.optimizer = torch.optim.AdamW([{"params": head, "lr": opt.head_lr}, {"params": encoders,
                                           "lr": opt.encoder_lr}], weight_decay=opt.weight_decay)
    trainer.amp_dtype = trainer._amp_dtype(train_config.run.amp)
    trainer.scaler = torch.amp.GradScaler("cuda", enabled=trainer.amp_dtype == torch.float16)
    return trainer


def _tokenizer(config: TrainStepConfig, model):
    """A small BPE tokenizer for the made-up texts (None without a text encoder)."""
    from crab_rt.text import train_bpe_tokenizer

    if model.text_encoder is None:
        return None
    return train_bpe_tokenizer([" ".join(_WORDS)] * 4, vocab_size=300, max_length=config.text_tokens)


def _batch(config: TrainStepConfig, model, tokenizer, labels: list[str], rng):
    import numpy as np

    from crab_rt.audio import SAMPLE_RATE
    from crab_rt.train.data import Collator

    n = int(round(config.audio_s * SAMPLE_RATE))
    long_text = " ".join(_WORDS * (config.text_tokens // len(_WORDS) + 2))  # more tokens than the cut
    items = [{"index": i, "audio": (0.1 * rng.standard_normal(n)).astype(np.float32), "text": long_text,
              "label": i % len(labels)} for i in range(config.micro_batch)]
    return Collator(tokenizer, model.normalize_waveform, config.audio_s)(items)


def build_model(config: TrainStepConfig):
    """The recipe's model with the preset's random encoders, made on the config's device (train mode)."""
    import torch

    from crab_bench.bundles import build_on_device
    from crab_rt.model.crab import CrabModel

    train_config = _train_config(config.validate())
    torch.manual_seed(config.seed)
    return build_on_device(lambda: CrabModel.build(train_config.model, list(train_config.data.labels)),
                           config.device)


def measure_train_step(config: TrainStepConfig, model=None, log=print) -> dict:
    """Time `steps` optimizer steps (each `grad_accum_steps` micro-batches) after `warmup_steps`.

    Args:
        config: what to measure.
        model: a model from `build_model` for the same preset and recipe, to reuse across measurements
            (its weights are updated); None builds one.
        log: progress printer.

    Returns:
        The config, the timings (per optimizer step and per micro-batch, ms), samples per second, the peak
        device memory (CUDA), the losses (finite for a healthy step) and the parameter counts.
    """
    import numpy as np
    import torch

    config.validate()
    train_config = _train_config(config)
    device = torch.device(config.device)
    cuda = device.type == "cuda"
    if model is None:
        model = build_model(config)
    model.train()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    tokenizer = _tokenizer(config, model)
    trainer = _trainer(train_config, model, device, tokenizer)
    batch = _batch(config, model, tokenizer, list(train_config.data.labels),
                   np.random.default_rng(config.seed)).to(device)
    accum = train_config.optim.grad_accum_steps

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    step_ms, micro_ms, losses = [], [], []
    trainer.optimizer.zero_grad(set_to_none=True)
    for step in range(config.warmup_steps + config.steps):
        sync()
        start = time.perf_counter()
        for _ in range(accum):
            t0 = time.perf_counter()
            parts = trainer._micro_step(batch)  # .item() on the losses synchronises
            micro_ms.append((time.perf_counter() - t0) * 1000.0)
            losses.append(parts["loss"])
        trainer._optimizer_step()
        sync()
        elapsed = (time.perf_counter() - start) * 1000.0
        if step >= config.warmup_steps:
            step_ms.append(elapsed)
        log(f"  train {config.preset} {config.amp} b{config.micro_batch} {config.audio_s:g}s: step {step + 1} "
            f"{elapsed:.1f} ms{' (warm-up)' if step < config.warmup_steps else ''}, loss {parts['loss']:.4f}")
    timed_micro = micro_ms[config.warmup_steps * accum:]
    samples_per_step = config.micro_batch * accum
    p50_step = float(np.median(step_ms))
    out = {
        "config": dataclasses.asdict(config),
        "recipe_settings": {"grad_accum_steps": accum, "batch_size": samples_per_step, "amp": train_config.run.amp,
                            "legs": list(train_config.loss.legs), "leg_loss": train_config.loss.leg_loss,
                            "freeze_feature_encoder": train_config.model.freeze_feature_encoder},
        "amp_dtype": None if trainer.amp_dtype is None else str(trainer.amp_dtype).removeprefix("torch."),
        "step_ms": {"p50": round(p50_step, 2), "min": round(min(step_ms), 2), "max": round(max(step_ms), 2),
                    "n": len(step_ms)},
        "micro_step_ms_p50": round(float(np.median(timed_micro)), 2),
        "samples_per_s": round(samples_per_step / (p50_step / 1000.0), 2),
        "losses_finite": bool(np.all(np.isfinite(losses))),
        "last_loss": round(float(losses[-1]), 5),
        "parameters": model.parameter_counts(),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if cuda:
        out["peak_memory_gib"] = {"allocated": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
                                  "reserved": round(torch.cuda.max_memory_reserved(device) / 2**30, 2)}
    del trainer
    return out


def epoch_estimates(samples_per_s: float, epochs: int = 20) -> list[dict]:
    """Wall time of one epoch and of `epochs` for the paper's training sets, at `samples_per_s`.

    Training steps only: the dev evaluation after each epoch, data loading and checkpoints are not counted.
    IEMOCAP's counts are of all five sessions (the paper gives no split): the recipe trains on four of them,
    about 4/5 of the clips.
    """
    from crab_rt.data.corpora.paper_counts import PAPER_CLASS_COUNTS

    sets = [("IEMOCAP, 4 of 5 sessions (about 4/5 of Table I's 'all')",
             round(sum(PAPER_CLASS_COUNTS["iemocap"]["all"].values()) * 4 / 5)),
            ("MELD train", sum(PAPER_CLASS_COUNTS["meld"]["train"].values())),
            ("MSP-Podcast 2.0 train", sum(PAPER_CLASS_COUNTS["msp-podcast"]["train"].values()))]
    out = []
    for name, n in sets:
        epoch_s = n / samples_per_s if samples_per_s > 0 else float("inf")
        out.append({"set": name, "clips": n, "epoch_min": round(epoch_s / 60, 2),
                    "run_h": round(epoch_s * epochs / 3600, 2), "epochs": epochs})
    return out
