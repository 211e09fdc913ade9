"""Batch prediction and evaluation of a checkpoint on a manifest split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from crab_rt.data.manifest import ManifestRow, check_labels, read_manifest
from crab_rt.errors import ManifestError
from crab_rt.model.crab import CrabModel
from crab_rt.text import TextTokenizer
from crab_rt.train.data import Collator, EmotionDataset

__all__ = ["predict", "evaluate_checkpoint"]


@torch.no_grad()
def predict(
    model: CrabModel,
    tokenizer: TextTokenizer | None,
    rows: Sequence[ManifestRow],
    max_audio_s: float,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    dataset: EmotionDataset | None = None,
    speech_states=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities for `rows`.

    `speech_states` (a `crab_rt.train.speech_states.FrozenSpeechStates` of `dataset`) supplies a frozen
    speech encoder's output instead of running it.

    Returns:
        (label ids [N] with -1 where unknown, probabilities [N, C]).
    """
    was_training = model.training
    model.eval()
    if dataset is None:
        dataset = EmotionDataset(rows, model.labels, max_audio_s, load_speech=model.speech_encoder is not None)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False,
        collate_fn=Collator(tokenizer, model.normalize_waveform, max_audio_s),
    )
    labels, probs = [], []
    for batch in loader:
        batch = batch.to(torch.device(device))
        states = None if speech_states is None else speech_states.batch(batch.indices)
        logits = model(batch.input_values, batch.audio_mask, batch.input_ids, batch.text_mask, speech_states=states)
        probs.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
        labels.append(batch.labels.cpu().numpy())
    model.train(was_training)
    if not probs:
        return np.zeros(0, dtype=np.int64), np.zeros((0, len(model.labels)), dtype=np.float32)
    return np.concatenate(labels), np.concatenate(probs)


def evaluate_checkpoint(
    checkpoint: str | Path,
    manifest: str | Path,
    splits: Sequence[str],
    out_dir: str | Path,
    batch_size: int = 8,
    device: str = "cpu",
) -> dict:
    """Evaluate a checkpoint on manifest splits; write `<split>.json` and a confusion PNG.

    Returns:
        The metrics report over all `splits` pooled (see `crab_rt.train.metrics.classification_report`),
        with the file paths under "files", "per_split" ({split: {"num_samples", "war", "uar",
        "macro_f1"}} for each split with labelled rows) and "ablation" (the paper ablation that trained
        the checkpoint, from its training config's run.ablation; None when none or unrecorded).

    Raises:
        ManifestError: unknown labels, or the split has no labelled row.
    """
    from crab_rt.model.checkpoint import load_model
    from crab_rt.train.metrics import classification_report
    from crab_rt.train.reporting import write_report

    model, tokenizer, payload = load_model(checkpoint, device)
    rows = read_manifest(manifest, splits)
    check_labels(rows, model.labels, str(manifest))
    rows = [r for r in rows if r.label is not None]
    if not rows:
        raise ManifestError(f"{manifest}: split(s) {', '.join(splits)} have no labelled rows to evaluate")
    max_audio_s = payload["model_settings"]["max_audio_s"]
    y_true, probs = predict(model, tokenizer, rows, max_audio_s, batch_size, device)
    report = classification_report(y_true.tolist(), probs.argmax(1).tolist(), model.labels)
    report["checkpoint"] = str(checkpoint)
    report["modality"] = model.head.config.modality
    report["manifest"] = str(manifest)
    report["splits"] = list(splits)
    y_pred = probs.argmax(1)
    per_split = {}
    for split in dict.fromkeys(splits):
        idx = [i for i, r in enumerate(rows) if r.split == split]
        if idx:
            part = classification_report(y_true[idx].tolist(), y_pred[idx].tolist(), model.labels)
            per_split[split] = {k: part[k] for k in ("num_samples", "war", "uar", "macro_f1")}
    report["per_split"] = per_split
    config = payload.get("config") or {}
    report["ablation"] = (config.get("run") or {}).get("ablation") or None
    files = write_report(report, out_dir, stem="_".join(splits))
    report["files"] = {k: str(v) for k, v in files.items()}
    return report
