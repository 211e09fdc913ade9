"""Checkpoint reader: rebuild a Crab model and its tokenizer from a `.pt` file.

This is the model format's reading side, used by the torch backend, export and
evaluation; writing (with optimizer state for an exact resume) belongs to
training (`crab_rt.train.checkpoint`). A checkpoint holds the model's
architecture (encoder configs, head config, labels), the tokenizer's JSON and
the weights, so nothing needs the hub.
"""

from __future__ import annotations

from pathlib import Path

import torch

from crab_rt.errors import ConfigError
from crab_rt.model.crab import CrabModel
from crab_rt.text import TextTokenizer

__all__ = ["CHECKPOINT_FORMAT", "read_checkpoint", "load_model"]

CHECKPOINT_FORMAT = "crab-rt-checkpoint/1"


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


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[CrabModel, TextTokenizer | None, dict]:
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
