"""Training data: manifest rows -> padded, masked batches.

Audio is decoded with `crab_rt.audio.load_audio` (16 kHz mono, cut at the
model's maximum length); text with the model's `TextTokenizer`; batches are
padded by `crab_rt.features.pad_waveforms`, the function the runtime uses too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from crab_rt.audio import SAMPLE_RATE, load_audio
from crab_rt.data.manifest import ManifestRow
from crab_rt.features import pad_waveforms
from crab_rt.text import TextTokenizer

__all__ = ["EmotionDataset", "Collator", "Batch", "drop_tokens"]


class EmotionDataset(Dataset):
    """Rows of a manifest with integer labels (-1 where the label is unknown).

    Args:
        rows: manifest rows (labels already checked against `labels`).
        labels: class names; a row's label id is its index here.
        max_audio_s: audio is cut to this length.
        load_speech: decode audio (False for text-only models).
        cache_audio: keep decoded audio in memory after the first epoch.
    """

    def __init__(
        self,
        rows: Sequence[ManifestRow],
        labels: Sequence[str],
        max_audio_s: float,
        load_speech: bool = True,
        cache_audio: bool = False,
    ) -> None:
        self.rows = list(rows)
        self.label_index = {name: i for i, name in enumerate(labels)}
        self.max_audio_s = max_audio_s
        self.load_speech = load_speech
        self._cache: dict[int, np.ndarray] | None = {} if cache_audio else None

    def __len__(self) -> int:
        return len(self.rows)

    def label_ids(self) -> list[int]:
        return [self.label_index[r.label] if r.label is not None else -1 for r in self.rows]

    def _audio(self, i: int) -> np.ndarray:
        if not self.load_speech:
            return np.zeros(0, dtype=np.float32)
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        audio = load_audio(self.rows[i].audio, SAMPLE_RATE, max_seconds=self.max_audio_s)
        if self._cache is not None:
            self._cache[i] = audio
        return audio

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        label = self.label_index[row.label] if row.label is not None else -1
        return {"index": i, "audio": self._audio(i), "text": row.text, "label": label}


@dataclass
class Batch:
    input_values: torch.Tensor
    audio_mask: torch.Tensor
    input_ids: torch.Tensor
    text_mask: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in
                       (self.input_values, self.audio_mask, self.input_ids, self.text_mask, self.labels, self.indices)))


class Collator:
    """Pads a list of dataset items into a `Batch`."""

    def __init__(self, tokenizer: TextTokenizer | None, normalize_waveform: bool, max_audio_s: float) -> None:
        self.tokenizer = tokenizer
        self.normalize_waveform = normalize_waveform
        self.max_samples = int(round(max_audio_s * SAMPLE_RATE))

    def __call__(self, items: Sequence[dict]) -> Batch:
        values, audio_mask = pad_waveforms([it["audio"] for it in items], self.normalize_waveform, self.max_samples)
        if self.tokenizer is not None:
            ids, text_mask = self.tokenizer.encode_batch([it["text"] for it in items])
        else:
            ids = text_mask = np.ones((len(items), 1), dtype=np.int64)
        return Batch(
            torch.from_numpy(values),
            torch.from_numpy(audio_mask),
            torch.from_numpy(ids),
            torch.from_numpy(text_mask),
            torch.tensor([it["label"] for it in items], dtype=torch.long),
            torch.tensor([it["index"] for it in items], dtype=torch.long),
        )


def drop_tokens(ids: torch.Tensor, mask: torch.Tensor, share: float, replacement: int) -> torch.Tensor:
    """Word dropout: each valid token of ids [B, L] (mask [B, L]) but the first and the last of its row (the
    tokenizer's <s> and </s>) becomes `replacement` with probability `share`, drawn from torch's current
    random stream; padding is never touched. Returns a new tensor (ids itself when share is 0)."""
    if share <= 0:
        return ids
    valid = mask.to(torch.bool)
    lengths = valid.sum(1, keepdim=True)
    position = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    inner = valid & (position > 0) & (position < lengths - 1)
    drop = inner & (torch.rand(ids.shape, device=ids.device) < share)
    return torch.where(drop, torch.full_like(ids, replacement), ids)
