"""Training configuration: TOML recipes with validated sections.

A recipe has the sections [model] (+ [model.head]), [data], [optim], [loss]
and [run]; every key is a field below, an unknown key is an error. Command
line overrides use dotted keys: `--set optim.epochs=3 --set loss.legs=[]`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from crab_rt.errors import ConfigError
from crab_rt.model.config import TAP_NAMES, HeadConfig, ModelConfig

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "DataConfig", "OptimConfig", "LossConfig", "RunConfig", "TrainConfig",
    "load_recipe", "recipe_path", "RECIPES_DIR", "LEG_LOSSES", "METRICS", "ABLATIONS", "NO_POSITIVE", "AMP_MODES",
    "CONTRASTIVE_BATCHES",
]

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
LEG_LOSSES = ("mpcl", "scl", "ce")
METRICS = ("uar", "war", "macro_f1")
NO_POSITIVE = ("exclude", "zero")  # crab_rt.train.losses.NO_POSITIVE (kept here so config needs no torch)
# Which samples a contrastive term sees when several processes train (crab_rt.train.distributed): "micro", one
# rank's micro-batch (the official code's semantics, and a single process's), or "global", the micro-batches
# all ranks hold at that moment, gathered with their gradients.
CONTRASTIVE_BATCHES = ("micro", "global")
AMP_MODES = ("auto", "bf16", "fp16", "off")


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and which splits play which role."""

    manifest: str = ""
    labels: tuple[str, ...] = ()
    train_splits: tuple[str, ...] = ("train",)
    dev_splits: tuple[str, ...] = ("dev",)
    test_splits: tuple[str, ...] = ("test",)
    cache_audio: bool = False  # keep decoded audio in memory (small corpora)
    num_workers: int = 0
    # In training, each transcript token (not <s> or </s>) becomes <mask> with this probability (word dropout:
    # the text branch cannot fit a training transcript by its filler words, and meets ASR-like holes); 0: off.
    text_token_dropout: float = 0.0

    def validate(self) -> DataConfig:
        if not self.manifest:
            raise ConfigError("data.manifest is required (a CSV or JSONL manifest path)")
        if len(self.labels) < 2:
            raise ConfigError(f"data.labels must list at least 2 classes, got {list(self.labels)}")
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"data.labels has duplicates: {list(self.labels)}")
        if not self.train_splits or not self.dev_splits:
            raise ConfigError("data.train_splits and data.dev_splits must not be empty")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if isinstance(self.text_token_dropout, bool) or not 0.0 <= self.text_token_dropout < 1.0:
            raise ConfigError(f"data.text_token_dropout must be in [0, 1), got {self.text_token_dropout!r}")
        return self


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with hierarchical learning rates and per-epoch cosine annealing."""

    epochs: int = 20
    batch_size: int = 32  # samples per optimizer step
    grad_accum_steps: int = 4  # micro-batch = batch_size / grad_accum_steps
    head_lr: float = 1e-5
    encoder_lr: float = 1e-6
    head_eta_min: float = 1e-6
    encoder_eta_min: float = 1e-7
    weight_decay: float = 0.01
    max_grad_norm: float = 0.0  # 0 = no clipping (the official recipe clips nothing)

    def validate(self) -> OptimConfig:
        if self.epochs < 1:
            raise ConfigError(f"optim.epochs must be >= 1, got {self.epochs}")
        if self.grad_accum_steps < 1 or self.batch_size < 1:
            raise ConfigError("optim.batch_size and optim.grad_accum_steps must be >= 1")
        if self.batch_size % self.grad_accum_steps:
            raise ConfigError(
                f"optim.batch_size={self.batch_size} must be a multiple of "
                f"optim.grad_accum_steps={self.grad_accum_steps}"
            )
        for name in ("head_lr", "encoder_lr"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"optim.{name} must be in (0, 1), got {getattr(self, name)}")
        for name, top in (("head_eta_min", "head_lr"), ("encoder_eta_min", "encoder_lr")):
            if not 0 <= getattr(self, name) <= getattr(self, top):
                raise ConfigError(f"optim.{name} must be in [0, optim.{top}], got {getattr(self, name)}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ConfigError("optim.weight_decay and optim.max_grad_norm must be >= 0")
        return self

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.grad_accum_steps


@dataclass(frozen=True)
class LossConfig:
    """Weighted CE plus alpha times the mean of the leg losses (paper eq. 8).

    Ablations (paper Table IV): `legs = []` is CE only; `legs = ["classifier"]`
    is CE + MPCL on the classifier; `leg_loss = "ce"` is MLS + CE; `leg_loss =
    "scl"` swaps MPCL for SCL.
    """

    legs: tuple[str, ...] = TAP_NAMES
    leg_loss: str = "mpcl"
    alpha: float = 2.0
    temperature: float = 0.1
    leg_dim: int = 512
    class_weighting: bool = True
    # MPCL/SCL anchors with no positive in the micro-batch: "exclude" (mean over anchors that have one) or
    # "zero" (mean over all anchors, lone ones counting 0: the official code). The paper does not say.
    no_positive: str = "exclude"
    # Under torchrun: "micro" (each rank's micro-batch, as the official code and one process) or "global"
    # (the micro-batches all ranks hold at that moment, gathered with their gradients). See CONTRASTIVE_BATCHES.
    contrastive_batch: str = "micro"

    def validate(self) -> LossConfig:
        unknown = [t for t in self.legs if t not in TAP_NAMES]
        if unknown:
            raise ConfigError(f"loss.legs has unknown tap(s) {unknown}; taps: {', '.join(TAP_NAMES)}")
        if self.leg_loss not in LEG_LOSSES:
            raise ConfigError(f"loss.leg_loss must be one of {', '.join(LEG_LOSSES)}, got {self.leg_loss!r}")
        if self.no_positive not in NO_POSITIVE:
            raise ConfigError(
                f"loss.no_positive must be one of {', '.join(NO_POSITIVE)}, got {self.no_positive!r}")
        if self.contrastive_batch not in CONTRASTIVE_BATCHES:
            raise ConfigError(f"loss.contrastive_batch must be one of {', '.join(CONTRASTIVE_BATCHES)}, "
                              f"got {self.contrastive_batch!r}")
        if self.alpha < 0 or self.temperature <= 0 or self.leg_dim < 1:
            raise ConfigError("loss.alpha must be >= 0, loss.temperature > 0 and loss.leg_dim >= 1")
        return self


@dataclass(frozen=True)
class RunConfig:
    """Where outputs go and how the run executes."""

    out_dir: str = "runs/crab"
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA when supported, else fp16; off on CPU) | bf16 | fp16 | off
    best_metric: str = "uar"  # the dev metric that picks best.pt: uar | war | macro_f1
    progress: bool = True
    ablation: str = ""  # the paper ablation this run trains (recorded by `load_recipe(..., ablation=)`); "" = none

    def validate(self) -> RunConfig:
        if self.best_metric not in METRICS:
            raise ConfigError(f"run.best_metric must be one of {', '.join(METRICS)}, got {self.best_metric!r}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"run.amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        if self.ablation and self.ablation not in ABLATIONS:
            raise ConfigError(f"run.ablation must be empty or one of {', '.join(ABLATIONS)}, got {self.ablation!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"run.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        return self


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> TrainConfig:
        self.model.validate()
        self.data.validate()
        self.optim.validate()
        self.loss.validate()
        self.run.validate()
        missing = [t for t in self.loss.legs if t not in self.model.head.taps]
        if missing:
            raise ConfigError(
                f"loss.legs {missing} do not exist for model.head.modality={self.model.head.modality!r} "
                f"(available: {', '.join(self.model.head.taps)})"
            )
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The paper's ablations (Tables III-VI) as overrides on any recipe: `crab-rt train --recipe meld --ablation ce_only`.
# `single_lr` (Table IV "w/o hierarchical lr": one rate, the head's, for every parameter) has no fixed override:
# `load_recipe` sets optim.encoder_lr / encoder_eta_min to the recipe's optim.head_lr / head_eta_min.
# `wav2vec2` is Table V's wav2vec 2.0 Large, which Table VI lists as "Large, 960 h": facebook/wav2vec2-large.
ABLATIONS: dict[str, tuple[str, ...]] = {
    "speech_only": ("model.head.modality='speech'", "loss.legs=['speech_unimodal','speech_pooled','classifier']"),
    "text_only": ("model.head.modality='text'", "loss.legs=['text_unimodal','text_pooled','classifier']"),
    "ce_only": ("loss.legs=[]",),
    "ce_mpcl_classifier": ("loss.legs=['classifier']",),
    "mls_ce": ("loss.leg_loss='ce'",),
    "scl": ("loss.leg_loss='scl'",),
    "single_lr": (),
    "hubert": ("model.speech_encoder='facebook/hubert-large-ll60k'",),
    "wav2vec2": ("model.speech_encoder='facebook/wav2vec2-large'",),
}

_SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "loss": LossConfig, "run": RunConfig}


def _coerce(cls, where: str, raw: dict) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) in [{where}]: {', '.join(unknown)} (known: {', '.join(known)})")
    values = {}
    for name, value in raw.items():
        default = getattr(cls(), name)
        if name == "head" and cls is ModelConfig:
            if not isinstance(value, dict):
                raise ConfigError(f"[{where}.head] must be a table")
            value = _coerce(HeadConfig, f"{where}.head", value)
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}.{name} must be a list, got {value!r}")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{name} must be true or false, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}.{name} must be a number, got {value!r}")
            value = float(value)
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}.{name} must be an integer, got {value!r}")
        elif isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{where}.{name} must be a string, got {value!r}")
        values[name] = value
    return cls(**values)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    path = key.strip().split(".")
    if len(path) < 2 or path[0] not in _SECTIONS:
        raise ConfigError(f"override key {key!r} must start with one of: {', '.join(_SECTIONS)}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word: take it as a string
    return path, value


def recipe_path(name_or_path: str) -> Path:
    """Resolve a recipe name (in train/recipes/) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path}: recipe file not found")
        return path
    candidate = RECIPES_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.toml")))
        raise ConfigError(f"unknown recipe {name_or_path!r} (built-in: {known}; or pass a .toml path)")
    return candidate


def load_recipe(name_or_path: str | None, overrides: Sequence[str] = (), ablation: str | None = None) -> TrainConfig:
    """Load a recipe, apply an ablation from `ABLATIONS`, then `section.key=value` overrides; validate.

    The ablation's name is recorded as `run.ablation` (checkpoints carry it, so evaluation can show the
    ablation's own paper row); `run.ablation` cannot be set any other way. `single_lr` sets the encoders'
    rate and floor to the head's after the overrides, so every parameter group gets the head's rate.

    Raises:
        ConfigError: unreadable TOML, unknown section or key, bad value.
    """
    raw: dict = {}
    if ablation is not None:
        if ablation not in ABLATIONS:
            raise ConfigError(f"unknown ablation {ablation!r} (known: {', '.join(ABLATIONS)})")
        overrides = [*ABLATIONS[ablation], *overrides]
    if name_or_path:
        path = recipe_path(name_or_path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML ({e})") from e
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)} (known: {', '.join(_SECTIONS)})")
    for item in overrides:
        path_keys, value = _parse_override(item)
        node = raw
        for k in path_keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a table")
        node[path_keys[-1]] = value
    run = raw.get("run", {})
    if not isinstance(run, dict):
        raise ConfigError("[run] must be a table")
    recorded = run.get("ablation", "")
    if "ablation" in run and recorded != (ablation or ""):
        raise ConfigError(
            f"run.ablation={recorded!r} is recorded from the ablation argument (crab-rt train --ablation NAME), "
            f"not set directly; got ablation={ablation!r}"
        )
    if ablation is not None:
        raw["run"] = {**run, "ablation": ablation}
    sections = {name: _coerce(cls, name, raw.get(name, {})) for name, cls in _SECTIONS.items()}
    if ablation == "single_lr":
        optim = sections["optim"]
        sections["optim"] = replace(optim, encoder_lr=optim.head_lr, encoder_eta_min=optim.head_eta_min)
    config = TrainConfig(**sections)
    return config.validate()


def with_updates(config: TrainConfig, **sections: dict) -> TrainConfig:
    """A copy with some fields replaced, e.g. `with_updates(c, run={"out_dir": "x"})`."""
    updated = {name: replace(getattr(config, name), **values) for name, values in sections.items()}
    return replace(config, **updated).validate()
