"""The MLCS training loop (paper eq. 8) with exact resume, in one process or data-parallel under torchrun.

One optimizer step per `batch_size` samples, as `grad_accum_steps`
micro-batches; contrastive losses are taken per micro-batch (as in the
official code) or, under torchrun with `loss.contrastive_batch = "global"`,
over the micro-batches all ranks hold at once. AdamW with two parameter
groups (head + legs, encoders), cosine annealing per epoch, dev evaluation
after each epoch, `last.pt` every epoch, `best.pt` by the dev metric, and
`metrics.jsonl` with one line per epoch. Which rank sees which micro-batch,
and why any world size trains the same model: `crab_rt.train.distributed`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from crab_rt.data.manifest import ManifestRow, check_labels, read_manifest
from crab_rt.errors import ConfigError, ManifestError
from crab_rt.model.checkpoint import read_checkpoint
from crab_rt.model.crab import CrabModel
from crab_rt.model.presets import RANDOM_PREFIX
from crab_rt.text import TextTokenizer, train_bpe_tokenizer
from crab_rt.train.checkpoint import save_checkpoint
from crab_rt.train.config import TrainConfig
from crab_rt.train.data import Collator, EmotionDataset, drop_tokens
from crab_rt.train.distributed import (
    MicroBatch,
    World,
    broadcast_object,
    epoch_plan,
    gather_objects,
    gather_rows,
    join_world,
    local_accumulation,
    micro_seed,
    sum_across,
)
from crab_rt.train.evaluate import predict_logits
from crab_rt.train.legs import ContrastiveLegs
from crab_rt.train.losses import class_weights, mpcl_loss, scl_loss, weighted_cross_entropy
from crab_rt.train.speech_states import FrozenSpeechStates, speech_encoder_frozen

__all__ = ["Trainer", "TrainingObjective", "load_tokenizer", "resolve_device"]

log = logging.getLogger(__name__)


def resolve_device(name: str, world: World | None = None) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is an error.

    Under torchrun (`world` of several processes) each rank takes GPU `LOCAL_RANK`, so `cuda:N` is refused.
    """
    world = world or World()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device={name!r} but torch sees no CUDA device (use cpu or auto)")
    if name.startswith("cuda") and world.distributed:
        if name != "cuda":
            raise ConfigError(f"run.device={name!r} names one GPU, but under torchrun each rank takes "
                              f"cuda:LOCAL_RANK; use auto or cuda")
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"{world.describe()} has LOCAL_RANK={world.local_rank} but this machine has "
                              f"{torch.cuda.device_count()} GPU(s); use --nproc-per-node <= that")
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return torch.device(name)


def load_tokenizer(spec: str, texts: list[str], vocab_size: int, max_length: int) -> TextTokenizer:
    """The text encoder's tokenizer: trained on `texts` for random presets, else from the folder or hub."""
    if spec.startswith(RANDOM_PREFIX):
        return train_bpe_tokenizer(texts, vocab_size=vocab_size, max_length=max_length)
    folder = Path(spec)
    if (folder / "tokenizer.json").is_file():
        return TextTokenizer.from_file(folder, max_length)
    from transformers import AutoTokenizer

    return TextTokenizer(AutoTokenizer.from_pretrained(spec).backend_tokenizer, max_length)


def _comparable(config: dict | None) -> dict | None:
    """A config without the keys that may change between a run and its resume."""
    if config is None:
        return None
    run = {k: v for k, v in config["run"].items() if k not in ("out_dir", "progress")}
    return {**config, "run": run}


def _cosine_factor(epoch: int, total: int, base: float, eta_min: float) -> float:
    lr = eta_min + (base - eta_min) * (1 + math.cos(math.pi * epoch / total)) / 2
    return lr / base


class TrainingObjective(nn.Module):
    """The model and its contrastive legs as one module: what DistributedDataParallel wraps.

    Returns Crab's logits, the legs' embeddings (or None) and the voice-only classifier's logits (or None), the
    latter from the speech encoder's states detached, so that nothing of its loss reaches the rest of the model.
    """

    def __init__(self, model: CrabModel, legs: ContrastiveLegs) -> None:
        super().__init__()
        self.model, self.legs = model, legs

    def forward(self, input_values, audio_mask, input_ids, text_mask, speech_states, use_legs: bool):
        voice = self.model.speech_classifier
        if voice is not None and speech_states is None:
            speech_states = self.model.speech_encoder(input_values, audio_mask)  # what model() would run first
        out = self.model(input_values, audio_mask, input_ids, text_mask, return_taps=use_legs,
                         speech_states=speech_states)
        logits, taps = out if use_legs else (out, None)
        voice_logits = None if voice is None else voice(speech_states[0].detach(), speech_states[1])
        return logits, (self.legs(taps) if use_legs else None), voice_logits


class Trainer:
    """Train a Crab model from a `TrainConfig`.

    Args:
        config: validated training config.
        resume: continue from `out_dir/last.pt` when it exists.
        world: this process's rank among the training processes; default: read from torchrun's environment
            (one process without it). Several processes join a process group here.

    Progress (one line per epoch, resume) is logged at INFO to `crab_rt.train.trainer`, by rank 0 only.

    Raises:
        ConfigError: a bad recipe, or `optim.grad_accum_steps` that the world size does not divide.
    """

    def __init__(self, config: TrainConfig, resume: bool = False, world: World | None = None) -> None:
        self.config = config.validate()
        self.world = World.from_environment() if world is None else world
        local_accumulation(config.optim.grad_accum_steps, self.world.world_size)  # refuses a world size that won't do
        self.out_dir = Path(config.run.out_dir)
        self.device = resolve_device(config.run.device, self.world)
        join_world(self.world, self.device)
        torch.manual_seed(config.run.seed)
        labels = list(config.data.labels)

        rows = read_manifest(config.data.manifest)
        check_labels(rows, labels, config.data.manifest)
        self.train_rows = self._split(rows, config.data.train_splits, "train_splits")
        self.dev_rows = self._split(rows, config.data.dev_splits, "dev_splits")
        if config.model.head.modality != "text":
            missing = [str(r.audio) for r in self.train_rows + self.dev_rows if not r.audio.is_file()]
            if missing:
                more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
                raise ManifestError(f"{config.data.manifest}: audio file(s) not found: {', '.join(missing[:3])}{more}")

        self.model = CrabModel.build(config.model, labels).to(self.device)
        self.tokenizer = None
        if self.model.text_encoder is not None:
            self.tokenizer = load_tokenizer(
                config.model.text_encoder,
                [r.text for r in self.train_rows],
                int(self.model.text_encoder.model.config.vocab_size),
                config.model.max_text_tokens,
            )
            if self.world.distributed:  # every rank encodes text with rank 0's tokenizer
                self.tokenizer = TextTokenizer.from_json(broadcast_object(self.tokenizer.to_json()),
                                                         config.model.max_text_tokens)
        load_speech = self.model.speech_encoder is not None
        max_audio_s, cache_audio = config.model.max_audio_s, config.data.cache_audio
        self.train_set = EmotionDataset(self.train_rows, labels, max_audio_s, load_speech, cache_audio)
        self.dev_set = EmotionDataset(self.dev_rows, labels, max_audio_s, load_speech, cache_audio)
        self.collate = Collator(self.tokenizer, self.model.normalize_waveform, config.model.max_audio_s)
        # A frozen speech encoder's output, computed once per clip when `fit` starts (`encode_frozen_speech`);
        # without it the steps run the encoder, with the same result.
        self.train_states = self.dev_states = None

        loss = config.loss
        self.weights = None
        if loss.class_weighting:
            try:
                self.weights = class_weights(self.train_set.label_ids(), len(labels)).to(self.device)
            except ValueError as e:
                raise ConfigError(f"{config.data.manifest}: {e} (labels: {labels})") from e
        leg_out = len(labels) if loss.leg_loss == "ce" else loss.leg_dim
        self.legs = ContrastiveLegs(self.model.head.config.tap_dims(), loss.legs, loss.leg_dim, leg_out).to(self.device)
        self.objective: nn.Module = TrainingObjective(self.model, self.legs)
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # find_unused_parameters: trainable weights a step may not reach (WavLM's masking embedding, the
            # legs of a CE-only run, a text-only head's speech side).
            self.objective = DistributedDataParallel(
                self.objective, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )

        opt = config.optim
        encoder_params = [p for m in (self.model.speech_encoder, self.model.text_encoder) if m is not None
                          for p in m.parameters() if p.requires_grad]
        head_params = list(self.model.head.parameters()) + list(self.legs.parameters())
        self.optimizer = torch.optim.AdamW(
            [{"params": head_params, "lr": opt.head_lr}, {"params": encoder_params, "lr": opt.encoder_lr}],
            weight_decay=opt.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            [lambda e: _cosine_factor(e, opt.epochs, opt.head_lr, opt.head_eta_min),
             lambda e: _cosine_factor(e, opt.epochs, opt.encoder_lr, opt.encoder_eta_min)],
        )
        # The voice-only classifier has an optimizer of its own, so that Crab's (and its gradient clipping) is
        # exactly what it is without the classifier; it follows the head's rate and schedule.
        self.voice_optimizer = self.voice_scheduler = None
        if self.model.speech_classifier is not None:
            self.voice_optimizer = torch.optim.AdamW(self.model.speech_classifier.parameters(), lr=opt.head_lr,
                                                     weight_decay=opt.weight_decay)
            self.voice_scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.voice_optimizer, lambda e: _cosine_factor(e, opt.epochs, opt.head_lr, opt.head_eta_min))
        self.amp_dtype = self._amp_dtype(config.run.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.epoch = 0
        self.history: list[dict] = []
        self.best = {"metric": config.run.best_metric, "value": -1.0, "epoch": None}
        # The best epoch's dev labels and logits (Crab's, the voice classifier's or None): what `calibrate` fits on,
        # without a second pass over the dev split; kept in last.pt for a resumed run.
        self.best_dev: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None
        # With a frozen speech encoder the voice-only classifier keeps its own best epoch (dev UAR): best.pt gets
        # its weights from that epoch when training ends, and its temperature is fitted on that epoch's dev logits
        # (`voice_best_dev`). A speech encoder that trains changes its states every epoch, so the classifier must
        # stay the one of Crab's best epoch, which reads that epoch's encoder.
        self.voice_best: dict = {"metric": "uar", "value": -1.0, "epoch": None}
        self.voice_best_state: dict[str, torch.Tensor] | None = None
        self.voice_best_dev: np.ndarray | None = None
        if resume and self._sees_last_checkpoint():
            self._restore(self.out_dir / "last.pt")

    def _sees_last_checkpoint(self) -> bool:
        """Whether `out_dir/last.pt` exists; every rank must agree (several machines need a shared out_dir)."""
        seen = gather_objects((self.out_dir / "last.pt").is_file())
        if len(set(seen)) > 1:
            blind = [rank for rank, s in enumerate(seen) if not s]
            raise ConfigError(f"{self.out_dir / 'last.pt'} is missing on rank(s) {blind}; on several machines "
                              f"run.out_dir must be storage they all see")
        return seen[0]

    @staticmethod
    def _split(rows: list[ManifestRow], splits, field: str) -> list[ManifestRow]:
        chosen = [r for r in rows if r.split in set(splits) and r.label is not None]
        if not chosen:
            present = sorted({r.split for r in rows})
            raise ConfigError(f"data.{field}={list(splits)} selects no labelled rows (splits present: {present})")
        return chosen

    def _amp_dtype(self, amp: str) -> torch.dtype | None:
        if self.device.type != "cuda" or amp == "off":
            return None
        if amp == "fp16":
            return torch.float16
        if amp == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    # ---- checkpoints -------------------------------------------------------------
    def _settings(self) -> dict:
        return {"max_audio_s": self.config.model.max_audio_s, "max_text_tokens": self.config.model.max_text_tokens}

    def _save(self, name: str, full: bool) -> Path:
        state = {"epoch": self.epoch, "history": self.history, "best": self.best, "config": self.config.to_dict(),
                 "world_size": self.world.world_size}
        if full:
            state.update(
                legs_state=self.legs.state_dict(),
                optimizer_state=self.optimizer.state_dict(),
                scheduler_state=self.scheduler.state_dict(),
                voice_optimizer_state=None if self.voice_optimizer is None else self.voice_optimizer.state_dict(),
                voice_scheduler_state=None if self.voice_scheduler is None else self.voice_scheduler.state_dict(),
                best_dev=None if self.best_dev is None else
                [None if a is None else torch.from_numpy(a) for a in self.best_dev],
                voice_best=self.voice_best, voice_best_state=self.voice_best_state,
                voice_best_dev=None if self.voice_best_dev is None else torch.from_numpy(self.voice_best_dev),
                scaler_state=self.scaler.state_dict(),
                torch_rng=torch.get_rng_state(),
                cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            )
        return save_checkpoint(self.out_dir / name, self.model, self.tokenizer, self._settings(), **state)

    def _restore(self, path: Path) -> None:
        payload = read_checkpoint(path, self.device)
        if _comparable(payload.get("config")) != _comparable(self.config.to_dict()):
            raise ConfigError(f"{path}: was written with a different config; use a new run.out_dir or the same recipe")
        self.model.load_state_dict(payload["model_state"])
        self.legs.load_state_dict(payload["legs_state"])
        self.optimizer.load_state_dict(payload["optimizer_state"])
        self.scheduler.load_state_dict(payload["scheduler_state"])
        if self.voice_optimizer is not None:
            self.voice_optimizer.load_state_dict(payload["voice_optimizer_state"])
            self.voice_scheduler.load_state_dict(payload["voice_scheduler_state"])
        self.scaler.load_state_dict(payload["scaler_state"])
        torch.set_rng_state(payload["torch_rng"].cpu())
        if payload["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in payload["cuda_rng"]])
        if self.tokenizer is not None and payload["tokenizer_json"] is not None:
            self.tokenizer = TextTokenizer.from_json(payload["tokenizer_json"], self.config.model.max_text_tokens)
            self.collate.tokenizer = self.tokenizer
        self.epoch, self.history, self.best = payload["epoch"], payload["history"], payload["best"]
        if payload.get("best_dev") is not None:
            self.best_dev = tuple(None if t is None else t.numpy() for t in payload["best_dev"])
        if payload.get("voice_best") is not None:
            self.voice_best, self.voice_best_state = payload["voice_best"], payload["voice_best_state"]
            self.voice_best_dev = None if payload["voice_best_dev"] is None else payload["voice_best_dev"].numpy()
        if self.world.is_main:
            written = payload.get("world_size", 1)
            log.info("resumed from %s after epoch %d (written by %d process%s, continued by %d)", path, self.epoch,
                     written, "" if written == 1 else "es", self.world.world_size)

    def _write_metrics(self) -> None:
        # Rewritten from the history each epoch, so a resumed run's log has no gap or duplicate.
        lines = "".join(json.dumps(record) + "\n" for record in self.history)
        (self.out_dir / "metrics.jsonl").write_text(lines, encoding="utf-8")

    # ---- training ----------------------------------------------------------------
    def _leg_loss(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor, rows: int) -> torch.Tensor:
        """The mean leg loss over the legs; with `contrastive_batch = "global"` over all ranks' rows (this rank
        gives its first `rows`: 0 for a placeholder micro-batch)."""
        loss_cfg = self.config.loss
        gathered = loss_cfg.contrastive_batch == "global" and self.world.distributed
        if gathered:
            labels = gather_rows(labels, rows)
        losses = []
        for emb in outputs.values():
            if gathered:
                emb = gather_rows(emb, rows)
            if loss_cfg.leg_loss == "mpcl":
                losses.append(mpcl_loss(emb, labels, loss_cfg.temperature, loss_cfg.no_positive))
            elif loss_cfg.leg_loss == "scl":
                losses.append(scl_loss(emb, labels, no_positive=loss_cfg.no_positive))
            else:
                losses.append(weighted_cross_entropy(emb, labels, self.weights))
        return torch.stack(losses).mean()

    def _micro_step(self, batch, micro: MicroBatch | None = None) -> dict[str, float]:
        """Forward and backward of one micro-batch (`micro`: its place in the epoch; None: a full-weight pass
        in the current random stream), scaled so that the gradients of a step, summed here and averaged over
        ranks, are the mean over the step's `grad_accum_steps` micro-batches."""
        use_legs = bool(self.legs.names) and self.config.loss.alpha > 0
        weight = 1.0 if micro is None else micro.weight
        if micro is not None:
            torch.manual_seed(micro_seed(self.config.run.seed, self.epoch, micro.number))
        amp_dtype = self.amp_dtype or torch.float32
        with torch.autocast(self.device.type, dtype=amp_dtype, enabled=self.amp_dtype is not None):
            states = None if self.train_states is None else self.train_states.batch(batch.indices)
            ids = batch.input_ids
            if self.tokenizer is not None:  # word dropout; drop_tokens returns ids as they are at share 0
                ids = drop_tokens(ids, batch.text_mask, self.config.data.text_token_dropout, self.tokenizer.mask_id)
            logits, legs_out, voice_logits = self.objective(batch.input_values, batch.audio_mask, ids,
                                                            batch.text_mask, states, use_legs)
            ce = weighted_cross_entropy(logits, batch.labels, self.weights)
            rows = batch.labels.shape[0] if weight else 0
            leg = self._leg_loss(legs_out, batch.labels, rows) if use_legs else torch.zeros((), device=self.device)
        scale = self.world.world_size / self.config.optim.grad_accum_steps
        if self.config.loss.contrastive_batch == "global" and self.world.distributed:
            # Every rank backpropagates the same gathered leg loss, a placeholder's included (see _GatherRows).
            objective = weight * ce + self.config.loss.alpha * leg
        else:
            objective = weight * (ce + self.config.loss.alpha * leg)
        parts = {}
        if voice_logits is not None:  # its input is detached: this term trains the voice classifier only
            voice_ce = weighted_cross_entropy(voice_logits, batch.labels, self.weights)
            objective = objective + weight * voice_ce
            parts["voice_ce"] = voice_ce.item()
        self.scaler.scale(objective * scale).backward()
        total = ce + self.config.loss.alpha * leg
        return {"loss": total.item(), "ce": ce.item(), "legs": leg.item(), **parts}

    def _optimizer_step(self) -> None:
        if self.config.optim.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.optim.max_grad_norm)
        self.scaler.step(self.optimizer)
        if self.voice_optimizer is not None:
            self.scaler.step(self.voice_optimizer)
            self.voice_optimizer.zero_grad(set_to_none=True)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def train_epoch(self) -> dict[str, float]:
        """One epoch of this rank's share (`epoch_plan`); returns the mean losses over all ranks' micro-batches."""
        from tqdm.auto import tqdm

        opt = self.config.optim
        generator = torch.Generator().manual_seed(self.config.run.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.train_set), generator=generator).tolist()
        plan = epoch_plan(order, opt.batch_size, opt.micro_batch_size, self.world)
        loader = DataLoader(self.train_set, batch_sampler=[list(m.indices) for m in plan], collate_fn=self.collate,
                            num_workers=self.config.data.num_workers)
        self.objective.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.voice_optimizer is not None:
            self.voice_optimizer.zero_grad(set_to_none=True)
        keys = ("loss", "ce", "legs") + (("voice_ce",) if self.voice_optimizer is not None else ())
        sums = {**{k: 0.0 for k in keys}, "micro_batches": 0.0}
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}/{opt.epochs}", leave=False,
                   disable=not (self.config.run.progress and self.world.is_main))
        for micro, batch in zip(plan, bar):
            defer_sync = self.world.distributed and not micro.last_in_step
            with self.objective.no_sync() if defer_sync else nullcontext():
                parts = self._micro_step(batch.to(self.device), micro)
            if micro.weight:
                for k in keys:
                    sums[k] += parts[k]
                sums["micro_batches"] += 1
            if micro.last_in_step:
                self._optimizer_step()
            if micro.weight:
                bar.set_postfix(loss=f"{parts['loss']:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
        *totals, count = sum_across(list(sums.values()), self.device)
        return {k: v / max(count, 1) for k, v in zip(keys, totals)}

    def dev_logits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(labels, Crab's logits, the voice classifier's logits or None) on the whole dev split; each rank
        predicts every world_size-th clip and the ranks gather them."""
        mine = list(range(self.world.rank, len(self.dev_set), self.world.world_size))
        part = predict_logits(
            self.model, self.tokenizer, self.dev_rows, self.config.model.max_audio_s,
            batch_size=self.config.optim.micro_batch_size, device=self.device, dataset=Subset(self.dev_set, mine),
            speech_states=self.dev_states,
        )
        n, classes = len(self.dev_set), len(self.model.labels)
        y_true = np.zeros(n, dtype=np.int64)
        logits = np.zeros((n, classes), dtype=np.float32)
        voice = None if part[2] is None else np.zeros((n, classes), dtype=np.float32)
        for indices, y, z, v in gather_objects((mine, *part)):
            y_true[indices], logits[indices] = y, z
            if voice is not None:
                voice[indices] = v
        return y_true, logits, voice

    def evaluate_dev(self) -> tuple[dict, tuple]:
        """WAR, UAR and macro-F1 of Crab on the whole dev split, and the voice classifier's UAR; with the
        `dev_logits` they come from."""
        from crab_rt.train.metrics import classification_report

        y_true, logits, voice = outputs = self.dev_logits()
        report = classification_report(y_true.tolist(), logits.argmax(1).tolist(), self.model.labels)
        out = {"war": report["war"], "uar": report["uar"], "macro_f1": report["macro_f1"]}
        if voice is not None:
            voice_report = classification_report(y_true.tolist(), voice.argmax(1).tolist(), self.model.labels)
            out["voice_uar"] = voice_report["uar"]
        return out, outputs

    def encode_frozen_speech(self) -> None:
        """Run a frozen speech encoder once over the train and dev clips (a no-op otherwise, or when done)."""
        if self.train_states is not None or not speech_encoder_frozen(self.model):
            return
        report = log.info if self.world.is_main else log.debug
        report("speech encoder frozen: encoding the %d train and dev clips once",
               len(self.train_set) + len(self.dev_set))
        size = self.config.optim.micro_batch_size
        self.train_states = FrozenSpeechStates(self.model, self.train_set, self.collate, size, self.device)
        self.dev_states = FrozenSpeechStates(self.model, self.dev_set, self.collate, size, self.device)

    def fit(self, stop_after_epoch: int | None = None) -> dict:
        """Train until `optim.epochs` (or until `stop_after_epoch`); returns the best dev result."""
        self.encode_frozen_speech()
        main = self.world.is_main
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        metric = self.config.run.best_metric
        last = self.config.optim.epochs if stop_after_epoch is None else min(stop_after_epoch, self.config.optim.epochs)
        while self.epoch < last:
            started = time.perf_counter()
            lrs = [g["lr"] for g in self.optimizer.param_groups]
            train = self.train_epoch()
            train_seconds = time.perf_counter() - started
            dev, dev_outputs = self.evaluate_dev()
            self.scheduler.step()
            if self.voice_scheduler is not None:
                self.voice_scheduler.step()
            self.epoch += 1
            record = {
                "epoch": self.epoch, "lr_head": lrs[0], "lr_encoder": lrs[1],
                **{f"train_{k}": v for k, v in train.items()}, **{f"dev_{k}": v for k, v in dev.items()},
                "seconds": round(time.perf_counter() - started, 3), "train_seconds": round(train_seconds, 3),
            }
            self.history.append(record)
            improved = dev[metric] > self.best["value"]
            if improved:
                self.best = {"metric": metric, "value": dev[metric], "epoch": self.epoch}
                self.best_dev = dev_outputs
            if "voice_uar" in dev and self.train_states is not None and dev["voice_uar"] > self.voice_best["value"]:
                self.voice_best = {"metric": "uar", "value": dev["voice_uar"], "epoch": self.epoch}
                self.voice_best_state = {k: v.detach().to("cpu", copy=True)
                                         for k, v in self.model.speech_classifier.state_dict().items()}
                self.voice_best_dev = dev_outputs[2]
            if not main:
                continue
            if improved:
                self._save("best.pt", full=False)
            self._save("last.pt", full=True)
            self._write_metrics()
            voice = f"  voice UAR {dev['voice_uar']:.4f}" if "voice_uar" in dev else ""
            log.info(
                f"epoch {self.epoch}/{self.config.optim.epochs}  loss {train['loss']:.4f}  "
                f"dev WAR {dev['war']:.4f} UAR {dev['uar']:.4f} F1 {dev['macro_f1']:.4f}{voice}"
                f"{'  *best' if improved else ''}  ({record['seconds']:.1f}s)"
            )
        if main and self.epoch == self.config.optim.epochs and self.best_dev is not None:
            self.calibrate()
        return self.best

    def calibrate(self) -> dict:
        """Fit the temperatures of best.pt's head and voice classifier on the dev split (the dev logits of
        each one's best epoch, `best_dev` and `voice_best_dev`) and store them in best.pt, in one write with
        the voice-only classifier of its own best epoch when it has one (a frozen speech encoder; Crab's
        weights stay those of Crab's best epoch).

        Returns:
            {"split": "dev", "head": summary, "speech_classifier": summary (when the model has one)}, each
            summary from `crab_rt.train.calibration.calibration_summary` (temperature, ECE and NLL before and
            after).
        """
        from crab_rt.train.calibration import calibration_summary, fit_temperature
        from crab_rt.train.checkpoint import update_checkpoint

        path = self.out_dir / "best.pt"
        y, logits, voice = self.best_dev
        adopted: dict = {}
        if self.voice_best_state is not None:
            voice = self.voice_best_dev  # the logits of the voice classifier put in best.pt below
            adopted = {"voice_best": self.voice_best, "model_state_updates": {
                f"speech_classifier.{k}": v for k, v in self.voice_best_state.items()}}
            log.info(f"voice-only classifier: best dev UAR {self.voice_best['value']:.4f} at epoch "
                     f"{self.voice_best['epoch']}, its weights put in {path}")
        calibration = {"split": "dev", "head": calibration_summary(logits, y, fit_temperature(logits, y))}
        if voice is not None:
            calibration["speech_classifier"] = calibration_summary(voice, y, fit_temperature(voice, y))
        update_checkpoint(path, calibration=calibration, **adopted)
        for name, entry in calibration.items():
            if name != "split":
                log.info(f"calibrated {name} on dev: temperature {entry['temperature']:.3f}, "
                         f"ECE {entry['ece_before']:.4f} -> {entry['ece_after']:.4f}")
        return calibration
