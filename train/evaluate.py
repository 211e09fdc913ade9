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
from crab_rt.train.calibration import softmax
from crab_rt.train.data import Collator, EmotionDataset

__all__ = ["predict", "predict_logits", "evaluate_checkpoint"]


@torch.no_grad()
def predict_logits(
    model: CrabModel,
    tokenizer: TextTokenizer | None,
    rows: Sequence[ManifestRow],
    max_audio_s: float,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    dataset: EmotionDataset | None = None,
    speech_states=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Crab's logits for `rows`, and the voice-only classifier's (None when the model has none).

    `speech_states` (a `crab_rt.train.speech_states.FrozenSpeechStates` of `dataset`) supplies a frozen
    speech encoder's output instead of running it.

    Returns:
        (label ids [N] with -1 where unknown, Crab's logits [N, C], the voice classifier's logits [N, C] or None).
    """
    was_training = model.training
    model.eval()
    if dataset is None:
        dataset = EmotionDataset(rows, model.labels, max_audio_s, load_speech=model.speech_encoder is not None)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False,
        collate_fn=Collator(tokenizer, model.normalize_waveform, max_audio_s),
    )
    voice = model.speech_classifier
    labels, logits, voice_logits = [], [], []
    for batch in loader:
        batch = batch.to(torch.device(device))
        states = None if speech_states is None else speech_states.batch(batch.indices)
        if voice is not None and states is None:
            states = model.speech_encoder(batch.input_values, batch.audio_mask)
        out = model(batch.input_values, batch.audio_mask, batch.input_ids, batch.text_mask, speech_states=states)
        logits.append(out.float().cpu().numpy())
        if voice is not None:
            voice_logits.append(voice(*states).float().cpu().numpy())
        labels.append(batch.labels.cpu().numpy())
    model.train(was_training)
    classes = len(model.labels)
    if not logits:
        empty = np.zeros((0, classes), dtype=np.float32)
        return np.zeros(0, dtype=np.int64), empty, None if voice is None else empty
    return (np.concatenate(labels), np.concatenate(logits),
            None if voice is None else np.concatenate(voice_logits))


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
    """Class probabilities for `rows` (arguments as `predict_logits`).

    Returns:
        (label ids [N] with -1 where unknown, probabilities [N, C]).
    """
    labels, logits, _ = predict_logits(model, tokenizer, rows, max_audio_s, batch_size, device, dataset,
                                       speech_states)
    return labels, softmax(logits)


def evaluate_checkpoint(
    checkpoint: str | Path,
    manifest: str | Path,
    splits: Sequence[str],
    out_dir: str | Path,
    batch_size: int = 8,
    device: str = "cpu",
) -> dict:
    """Evaluate a checkpoint on manifest splits; write `<split>.json`, a confusion PNG and a reliability diagram.

    Probabilities are calibrated with the temperatures training fitted on dev (`best.pt`'s "calibration"; 1.0
    without one), as a bundle of the checkpoint runs them.

    Returns:
        The metrics report over all `splits` pooled (see `crab_rt.train.metrics.classification_report`),
        with the file paths under "files", "per_split" ({split: {"num_samples", "war", "uar",
        "macro_f1"}} for each split with labelled rows), "ablation" (the paper ablation that trained
        the checkpoint, from its training config's run.ablation; None when none or unrecorded),
        "calibration" ({"head": summary, "speech_classifier": summary}: the temperature and the ECE (15 bins)
        and NLL before and after it, `crab_rt.train.calibration.calibration_summary`) and, for a checkpoint
        with the voice-only classifier, "provisional" (its war, uar and macro_f1: the provisional events').

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
    from crab_rt.train.calibration import calibration_summary, reliability_diagram

    max_audio_s = payload["model_settings"]["max_audio_s"]
    y_true, logits, voice = predict_logits(model, tokenizer, rows, max_audio_s, batch_size, device)
    fitted = payload.get("calibration") or {}
    temperatures = {name: float((fitted.get(name) or {}).get("temperature", 1.0))
                    for name in ("head", "speech_classifier")}
    probs = softmax(logits, temperatures["head"])
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
    report["calibration"] = {"fitted_on": fitted.get("split"),
                             "head": calibration_summary(logits, y_true, temperatures["head"])}
    curves = {"Crab, raw": (softmax(logits), y_true), "Crab, calibrated": (probs, y_true)}
    if voice is not None:
        voice_probs = softmax(voice, temperatures["speech_classifier"])
        report["calibration"]["speech_classifier"] = calibration_summary(voice, y_true,
                                                                         temperatures["speech_classifier"])
        voice_report = classification_report(y_true.tolist(), voice_probs.argmax(1).tolist(), model.labels)
        report["provisional"] = {k: voice_report[k] for k in ("war", "uar", "macro_f1")}
        curves.update({"voice only, raw": (softmax(voice), y_true), "voice only, calibrated": (voice_probs, y_true)})
    stem = "_".join(splits)
    files = write_report(report, out_dir, stem=stem)
    files["reliability_png"] = reliability_diagram(
        curves, Path(out_dir) / f"{stem}_reliability.png", f"reliability on {', '.join(splits)} ({len(rows)} clips)")
    report["files"] = {k: str(v) for k, v in files.items()}
    return report
