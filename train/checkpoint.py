"""Checkpoint writer for training: `best.pt` (the model only) and `last.pt`
(also optimizer, scheduler and RNG state for an exact resume).

Reading and rebuilding a model is the model format's concern and lives in
`crab_rt.model.checkpoint`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from crab_rt import __version__
from crab_rt.model.checkpoint import CHECKPOINT_FORMAT
from crab_rt.model.crab import CrabModel
from crab_rt.text import TextTokenizer

__all__ = ["save_checkpoint", "update_checkpoint"]


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


def update_checkpoint(path: str | Path, model_state_updates: dict[str, torch.Tensor] | None = None,
                      **entries: Any) -> Path:
    """Add or replace top-level entries of a checkpoint, atomically (e.g. `calibration` after training), and
    replace the `model_state` tensors named in `model_state_updates`.

    Raises:
        KeyError: an update names a tensor the model state does not have.
    """
    path = Path(path)
    payload = torch.load(path, map_location="cpu", weights_only=False)
    payload.update(entries)
    for key, value in (model_state_updates or {}).items():
        if key not in payload["model_state"]:
            raise KeyError(f"{path}: the model state has no {key!r}")
        payload["model_state"][key] = value
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path
