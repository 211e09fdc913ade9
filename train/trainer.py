"""The MLCS training loop (paper eq. 8) with exact resume.

One optimizer step per `batch_size` samples, as `grad_accum_steps`
micro-batches; contrastive losses are taken per micro-batch (as in the
official code). AdamW with two parameter groups (head + legs, encoders),
cosine annealing per epoch, dev evaluation after each epoch, `last.pt` every
epoch, `best.pt` by the dev metric, and `metrics.jsonl` with one line per epoch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

from crab_rt.data.manifest import ManifestRow, check_labels, read_manifest
from crab_rt.errors import ConfigError, ManifestError
from crab_rt.model.checkpoint import read_checkpoint
from crab_rt.model.crab import CrabModel
from crab_rt.model.presets import RANDOM_PREFIX
from crab_rt.text import TextTokenizer, train_bpe_tokenizer
from crab_rt.train.checkpoint import save_checkpoint
from crab_rt.train.config import TrainConfig
from crab_rt.train.data import Collator, EmotionDataset
from crab_rt.train.evaluate import predict
from crab_rt.train.legs import ContrastiveLegs
from crab_rt.train.losses import class_weights, mpcl_loss, scl_loss, weighted_cross_entropy
from crab_rt.train.speech_states import FrozenSpeechStates, speech_encoder_frozen

__all__ = ["Trainer", "load_tokenizer", "resolve_device"]

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device={name!r} but torch sees no CUDA device (use cpu or auto)")
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


class Trainer:
    """Train a Crab model from a `TrainConfig`.

    Args:
        config: validated training config.
        resume: continue from `out_dir/last.pt` when it exists.

    Progress (one line per epoch, resume) is logged at INFO to `crab_rt.train.trainer`.
    """

    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        self.config = config.validate()
        self.out_dir = Path(config.run.out_dir)
        self.device = resolve_device(config.run.device)
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
        self.amp_dtype = self._amp_dtype(config.run.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.epoch = 0
        self.history: list[dict] = []
        self.best = {"metric": config.run.best_metric, "value": -1.0, "epoch": None}
        if resume and (self.out_dir / "last.pt").is_file():
            self._restore(self.out_dir / "last.pt")

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
        state = {"epoch": self.epoch, "history": self.history, "best": self.best, "config": self.config.to_dict()}
        if full:
            state.update(
                legs_state=self.legs.state_dict(),
                optimizer_state=self.optimizer.state_dict(),
                scheduler_state=self.scheduler.state_dict(),
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
        self.scaler.load_state_dict(payload["scaler_state"])
        torch.set_rng_state(payload["torch_rng"].cpu())
        if payload["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in payload["cuda_rng"]])
        if self.tokenizer is not None and payload["tokenizer_json"] is not None:
            self.tokenizer = TextTokenizer.from_json(payload["tokenizer_json"], self.config.model.max_text_tokens)
            self.collate.tokenizer = self.tokenizer
        self.epoch, self.history, self.best = payload["epoch"], payload["history"], payload["best"]
        log.info("resumed from %s after epoch %d", path, self.epoch)

    def _write_metrics(self) -> None:
        # Rewritten from the history each epoch, so a resumed run's log has no gap or duplicate.
        lines = "".join(json.dumps(record) + "\n" for record in self.history)
        (self.out_dir / "metrics.jsonl").write_text(lines, encoding="utf-8")

    # ---- training ----------------------------------------------------------------
    def _leg_loss(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        loss_cfg = self.config.loss
        losses = []
        for emb in outputs.values():
            if loss_cfg.leg_loss == "mpcl":
                losses.append(mpcl_loss(emb, labels, loss_cfg.temperature, loss_cfg.no_positive))
            elif loss_cfg.leg_loss == "scl":
                losses.append(scl_loss(emb, labels, no_positive=loss_cfg.no_positive))
            else:
                losses.append(weighted_cross_entropy(emb, labels, self.weights))
        return torch.stack(losses).mean()

    def _micro_step(self, batch) -> dict[str, float]:
        use_legs = bool(self.legs.names) and self.config.loss.alpha > 0
        amp_dtype = self.amp_dtype or torch.float32
        with torch.autocast(self.device.type, dtype=amp_dtype, enabled=self.amp_dtype is not None):
            states = None if self.train_states is None else self.train_states.batch(batch.indices)
            out = self.model(batch.input_values, batch.audio_mask, batch.input_ids, batch.text_mask,
                             return_taps=use_legs, speech_states=states)
            logits, taps = out if use_legs else (out, None)
            ce = weighted_cross_entropy(logits, batch.labels, self.weights)
            leg = self._leg_loss(self.legs(taps), batch.labels) if use_legs else torch.zeros((), device=self.device)
        total = ce + self.config.loss.alpha * leg
        self.scaler.scale(total / self.config.optim.grad_accum_steps).backward()
        return {"loss": total.item(), "ce": ce.item(), "legs": leg.item()}

    def _optimizer_step(self) -> None:
        if self.config.optim.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.optim.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def train_epoch(self) -> dict[str, float]:
        from tqdm.auto import tqdm

        opt = self.config.optim
        generator = torch.Generator().manual_seed(self.config.run.seed * 1000 + self.epoch)
        loader = DataLoader(
            self.train_set, batch_size=opt.micro_batch_size, sampler=RandomSampler(self.train_set, generator=generator),
            collate_fn=self.collate, num_workers=self.config.data.num_workers,
        )
        self.model.train()
        self.legs.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "ce": 0.0, "legs": 0.0}
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}/{opt.epochs}", disable=not self.config.run.progress,
                   leave=False)
        steps = 0
        for i, batch in enumerate(bar, start=1):
            parts = self._micro_step(batch.to(self.device))
            for k in sums:
                sums[k] += parts[k]
            steps += 1
            if i % opt.grad_accum_steps == 0 or i == len(loader):
                self._optimizer_step()
            bar.set_postfix(loss=f"{parts['loss']:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
        return {k: v / max(steps, 1) for k, v in sums.items()}

    def evaluate_dev(self) -> dict:
        from crab_rt.train.metrics import classification_report

        y_true, probs = predict(
            self.model, self.tokenizer, self.dev_rows, self.config.model.max_audio_s,
            batch_size=self.config.optim.micro_batch_size, device=self.device, dataset=self.dev_set,
            speech_states=self.dev_states,
        )
        report = classification_report(y_true.tolist(), probs.argmax(1).tolist(), self.model.labels)
        return {"war": report["war"], "uar": report["uar"], "macro_f1": report["macro_f1"]}

    def encode_frozen_speech(self) -> None:
        """Run a frozen speech encoder once over the train and dev clips (a no-op otherwise, or when done)."""
        if self.train_states is not None or not speech_encoder_frozen(self.model):
            return
        log.info("speech encoder frozen: encoding the %d train and dev clips once",
                 len(self.train_set) + len(self.dev_set))
        size = self.config.optim.micro_batch_size
        self.train_states = FrozenSpeechStates(self.model, self.train_set, self.collate, size, self.device)
        self.dev_states = FrozenSpeechStates(self.model, self.dev_set, self.collate, size, self.device)

    def fit(self, stop_after_epoch: int | None = None) -> dict:
        """Train until `optim.epochs` (or until `stop_after_epoch`); returns the best dev result."""
        self.encode_frozen_speech()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        metric = self.config.run.best_metric
        last = self.config.optim.epochs if stop_after_epoch is None else min(stop_after_epoch, self.config.optim.epochs)
        while self.epoch < last:
            started = time.perf_counter()
            lrs = [g["lr"] for g in self.optimizer.param_groups]
            train = self.train_epoch()
            dev = self.evaluate_dev()
            self.scheduler.step()
            self.epoch += 1
            record = {
                "epoch": self.epoch, "lr_head": lrs[0], "lr_encoder": lrs[1],
                **{f"train_{k}": v for k, v in train.items()}, **{f"dev_{k}": v for k, v in dev.items()},
                "seconds": round(time.perf_counter() - started, 3),
            }
            self.history.append(record)
            improved = dev[metric] > self.best["value"]
            if improved:
                self.best = {"metric": metric, "value": dev[metric], "epoch": self.epoch}
            if improved:
                self._save("best.pt", full=False)
            self._save("last.pt", full=True)
            self._write_metrics()
            log.info(
                f"epoch {self.epoch}/{self.config.optim.epochs}  loss {train['loss']:.4f}  "
                f"dev WAR {dev['war']:.4f} UAR {dev['uar']:.4f} F1 {dev['macro_f1']:.4f}"
                f"{'  *best' if improved else ''}  ({record['seconds']:.1f}s)"
            )
        return self.best
