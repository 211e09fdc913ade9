"""Checkpoints: save, load and rebuild a Crab model without downloading.

A checkpoint holds the model's architecture (encoder configs, head config,
labels), the tokenizer's JSON and the weights, so export and evaluation never
need the hub. `last.pt` also holds optimizer, scheduler and RNG state for an
exact resume; `best.pt` holds the model only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from crab_rt import __version__
from crab_rt.errors import ConfigError
from crab_rt.model.crab import CrabModel
from crab_rt.text import TextTokenizer

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "read_checkpoint", "load_model"]

CHECKPOINT_FORMAT = "crab-rt-checkpoint/1"


def save_checkpoint(
    path: str | Path,
    model: CrabModel,
    tokenizer: TextTokenizer | None,
    model_settings: dict,
    **state: Any,
) -> Path:
    """Write a checkpoint atomically (temp file, then rename).

    Args:
        model_settings: max_audio_s and max_text_tokens.
        state: anything else to store (optimizer state, epoch, history, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "crab_rt_version": __version__,
        "architecture": model.architecture(),
        "model_settings": dict(model_settings),
        "tokenizer_json": None if tokenizer is None else tokenizer.to_json(),
        "model_state": model.state_dict(),
        **state,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint dict, checking its format.

    Raises:
        ConfigError: missing file, not a crab-rt checkpoint, or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file
        raise ConfigError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: not a crab-rt checkpoint (expected format {CHECKPOINT_FORMAT})")
    return payload


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[CrabModel, TextTokenizer | None, dict]:
    """Rebuild the model (eval mode) and tokenizer from a checkpoint.

    Returns:
        (model, tokenizer or None for speech-only models, the checkpoint dict).
    """
    payload = read_checkpoint(path, map_location)
    model = CrabModel.from_architecture(payload["architecture"])
    model.load_state_dict(payload["model_state"])
    model.eval()
    settings = payload["model_settings"]
    tokenizer = None
    if payload["tokenizer_json"] is not None:
        tokenizer = TextTokenizer.from_json(payload["tokenizer_json"], settings["max_text_tokens"])
    return model, tokenizer, payload
