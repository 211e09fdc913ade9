"""Parity checks: exported ONNX graphs against the torch model (and fp16 against fp32).

Every export runs these. Inputs cover batch sizes 1 and 3, several lengths and
padded batches (samples of different lengths in one batch), so a graph whose
time or batch axis was frozen at the example size, or whose padding leaks into
valid positions, fails here rather than on the device.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crab_rt.audio import SAMPLE_RATE
from crab_rt.errors import BundleError, ConfigError

__all__ = [
    "DEFAULT_TOLERANCE",
    "DEFAULT_FP16_TOLERANCE",
    "ParityCase",
    "parity_cases",
    "run_pipeline",
    "check_parity",
    "check_fp16_parity",
    "compare_pipelines",
]

DEFAULT_TOLERANCE = 1e-4
DEFAULT_FP16_TOLERANCE = 1e-2

_AUDIO_S = (0.5, 1.3, 3.0)
_TOKENS = (3, 17)


@dataclass(frozen=True)
class ParityCase:
    """One batch of inputs (numpy, as the runtime feeds them). Absent modality: None."""

    name: str
    input_values: np.ndarray | None
    audio_mask: np.ndarray | None
    input_ids: np.ndarray | None
    text_mask: np.ndarray | None


def _pad(rows: list[np.ndarray], fill, dtype) -> tuple[np.ndarray, np.ndarray]:
    length = max(r.size for r in rows)
    values = np.full((len(rows), length), fill, dtype=dtype)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, r in enumerate(rows):
        values[i, : r.size] = r
        mask[i, : r.size] = 1
    return values, mask


def parity_cases(
    modality: str,
    vocab_size: int,
    pad_id: int,
    max_text_tokens: int,
    normalize: bool,
    seed: int = 0,
) -> list[ParityCase]:
    """Batches at sizes 1 and 3, including padded ones, for each modality the model uses.

    Args:
        modality: "both", "speech" or "text".
        vocab_size: text encoder vocabulary (ids are drawn from [5, vocab_size)).
        pad_id: id written at padded token positions (RoBERTa derives positions from it).
        max_text_tokens: longest token sequence allowed.
        normalize: normalise each waveform (as the runtime does for this model).
    """
    from crab_rt.features import pad_waveforms

    rng = np.random.default_rng(seed)
    use_speech, use_text = modality in ("both", "speech"), modality in ("both", "text")
    tokens = [min(n, max_text_tokens) for n in _TOKENS]
    # (case name, audio seconds per sample, tokens per sample)
    layout = [
        ("batch1-short", [_AUDIO_S[0]], [tokens[0]]),
        ("batch1-long", [_AUDIO_S[2]], [tokens[1]]),
        ("batch3-padded", [_AUDIO_S[1], _AUDIO_S[2], _AUDIO_S[0]], [tokens[1], tokens[0], tokens[1]]),
    ]
    cases = []
    for name, seconds, lengths in layout:
        values = amask = ids = tmask = None
        if use_speech:
            waves = [(0.1 * rng.standard_normal(int(s * SAMPLE_RATE))).astype(np.float32) for s in seconds]
            values, amask = pad_waveforms(waves, normalize)
        if use_text:
            rows = [rng.integers(5, max(6, vocab_size), size=n).astype(np.int64) for n in lengths]
            ids, tmask = _pad(rows, pad_id, np.int64)
        cases.append(ParityCase(name, values, amask, ids, tmask))
    return cases


def _session(path: str | Path):
    from crab_rt.backends.onnxruntime import import_onnxruntime

    ort = import_onnxruntime()

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_pipeline(sessions: Mapping[str, object], case: ParityCase) -> dict[str, np.ndarray]:
    """Run the ONNX graphs end to end on one case.

    Returns:
        every graph output, keyed "<graph>.<output>" (e.g. "head.logits").
    """
    out: dict[str, np.ndarray] = {}
    head_feed: dict[str, np.ndarray] = {}
    if "speech_encoder" in sessions:
        hidden, mask = sessions["speech_encoder"].run(
            None, {"input_values": case.input_values, "attention_mask": case.audio_mask}
        )
        out["speech_encoder.hidden_states"], out["speech_encoder.frame_mask"] = hidden, mask
        head_feed.update(speech_hidden=hidden, speech_mask=mask)
        if "speech_classifier" in sessions:
            out["speech_classifier.logits"], out["speech_classifier.probabilities"] = sessions["speech_classifier"].run(
                None, {"speech_hidden": hidden, "speech_mask": mask})
    if "text_encoder" in sessions:
        (hidden,) = sessions["text_encoder"].run(None, {"input_ids": case.input_ids, "attention_mask": case.text_mask})
        out["text_encoder.hidden_states"] = hidden
        head_feed.update(text_hidden=hidden, text_mask=case.text_mask)
    logits, probs = sessions["head"].run(None, head_feed)
    out["head.logits"], out["head.probabilities"] = logits, probs
    return out


def _max_err(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, scaled: bool = False) -> float:
    """Max abs difference of `a` from the reference `b` over the valid positions of `mask`.

    With `scaled`, divided by the reference's largest magnitude when that is above 1: encoder hidden states
    (Whisper's reach 10 and more) carry float32 rounding proportional to their size.
    """
    if a.shape != b.shape:
        return float("inf")
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    ref = np.abs(b.astype(np.float64))
    if mask is not None:  # only valid positions matter; padded ones are never read
        keep = mask.reshape(mask.shape + (1,) * (diff.ndim - mask.ndim))
        diff, ref = diff * keep, ref * keep
    if not diff.size:
        return 0.0
    return float(diff.max()) / (max(1.0, float(ref.max())) if scaled else 1.0)


def _check(errors: dict[str, float], tolerance: float, what: str) -> None:
    for key, err in errors.items():
        if not err <= tolerance:  # also catches NaN
            raise BundleError(f"{what} failed: {key} max abs error {err:.3g} exceeds tolerance {tolerance:g}")


def check_parity(
    model, graphs: Mapping[str, str | Path], max_text_tokens: int, tolerance: float = DEFAULT_TOLERANCE
) -> dict[str, float]:
    """Compare ONNX Runtime (CPU) with torch, per graph and end to end.

    Each graph is fed the torch model's own upstream outputs (so errors do not
    compound), and the whole ONNX pipeline is compared with `model.forward`.

    Args:
        model: the CrabModel in eval mode.
        graphs: {graph name: fp32 ONNX path}.
        max_text_tokens: longest token sequence.
        tolerance: largest allowed max abs error on any output (on an encoder's hidden states, relative to their
            largest magnitude where that is above 1).

    Returns:
        {"speech_encoder": err, "speech_classifier": err, "text_encoder": err, "head": err, "end_to_end": err}
        for the graphs present (each the max over all cases and outputs).

    Raises:
        ConfigError: non-positive tolerance.
        BundleError: an error above tolerance, naming graph, error and tolerance.
    """
    import torch

    if not tolerance > 0:
        raise ConfigError(f"parity tolerance must be > 0, got {tolerance}")
    modality = model.head.config.modality
    vocab, pad_id = 2, 0
    if model.text_encoder is not None:
        cfg = model.text_encoder.model.config
        vocab, pad_id = int(cfg.vocab_size), int(getattr(cfg, "pad_token_id", 0) or 0)
    cases = parity_cases(modality, vocab, pad_id, max_text_tokens, model.normalize_waveform)
    sessions = {name: _session(path) for name, path in graphs.items()}
    errors = {name: 0.0 for name in graphs} | {"end_to_end": 0.0}
    for case in cases:
        t = {k: None if v is None else torch.from_numpy(v) for k, v in vars(case).items() if k != "name"}
        with torch.no_grad(), warnings.catch_warnings():
            # torch warns about the bool key-padding mask inside HF attention; harmless here
            warnings.simplefilter("ignore", UserWarning)
            reference = model(t["input_values"], t["audio_mask"], t["input_ids"], t["text_mask"])
            head_feed = {}
            if "speech_encoder" in sessions:
                hidden, fmask = model.speech_encoder(t["input_values"], t["audio_mask"])
                got_hidden, got_mask = sessions["speech_encoder"].run(
                    None, {"input_values": case.input_values, "attention_mask": case.audio_mask}
                )
                err = _max_err(got_hidden, hidden.numpy(), fmask.numpy(), scaled=True)
                if not np.array_equal(got_mask, fmask.numpy().astype(np.int64)):
                    err = float("inf")
                errors["speech_encoder"] = max(errors["speech_encoder"], err)
                head_feed.update(speech_hidden=hidden.numpy(), speech_mask=fmask.numpy().astype(np.int64))
                if "speech_classifier" in sessions:
                    voice_ref = model.speech_classifier(hidden, fmask)
                    voice_logits, voice_probs = sessions["speech_classifier"].run(
                        None, {"speech_hidden": head_feed["speech_hidden"], "speech_mask": head_feed["speech_mask"]})
                    errors["speech_classifier"] = max(
                        errors["speech_classifier"], _max_err(voice_logits, voice_ref.numpy()),
                        _max_err(voice_probs, torch.softmax(voice_ref, -1).numpy()))
            if "text_encoder" in sessions:
                hidden = model.text_encoder(t["input_ids"], t["text_mask"])
                (got,) = sessions["text_encoder"].run(
                    None, {"input_ids": case.input_ids, "attention_mask": case.text_mask}
                )
                errors["text_encoder"] = max(errors["text_encoder"],
                                             _max_err(got, hidden.numpy(), case.text_mask, scaled=True))
                head_feed.update(text_hidden=hidden.numpy(), text_mask=case.text_mask)
        logits, probs = sessions["head"].run(None, head_feed)
        ref_logits = reference.numpy()
        ref_probs = torch.softmax(reference, -1).numpy()
        errors["head"] = max(errors["head"], _max_err(logits, ref_logits), _max_err(probs, ref_probs))
        e2e = run_pipeline(sessions, case)
        errors["end_to_end"] = max(
            errors["end_to_end"],
            _max_err(e2e["head.logits"], ref_logits),
            _max_err(e2e["head.probabilities"], ref_probs),
        )
    _check(errors, tolerance, "parity")
    return errors


def check_fp16_parity(
    fp32_graphs: Mapping[str, str | Path],
    fp16_graphs: Mapping[str, str | Path],
    modality: str,
    vocab_size: int,
    pad_id: int,
    max_text_tokens: int,
    normalize: bool,
    tolerance: float = DEFAULT_FP16_TOLERANCE,
) -> dict[str, float]:
    """Compare the fp16 pipeline's probabilities with the fp32 pipeline's (ONNX Runtime CPU).

    Returns:
        {"probabilities": max abs error, "logits": max abs error (informative)}.

    Raises:
        BundleError: probabilities differ by more than `tolerance`.
    """
    if not tolerance > 0:
        raise ConfigError(f"fp16 parity tolerance must be > 0, got {tolerance}")
    s32 = {k: _session(v) for k, v in fp32_graphs.items()}
    s16 = {k: _session(v) for k, v in fp16_graphs.items()}
    compared = compare_pipelines(s32, s16, parity_cases(modality, vocab_size, pad_id, max_text_tokens, normalize))
    errors = {k: compared[k] for k in ("probabilities", "logits", "voice_probabilities") if k in compared}
    checked = {"fp16 probabilities": errors["probabilities"]}
    if "voice_probabilities" in errors:
        checked["fp16 voice-only probabilities"] = errors["voice_probabilities"]
    _check(checked, tolerance, "fp16 parity")
    return errors


def compare_pipelines(reference: Mapping[str, Any], other: Mapping[str, Any], cases: Iterable[ParityCase]) -> dict:
    """Run both sets of sessions on every case and compare the head's outputs.

    Returns:
        {"probabilities": max abs diff, "logits": max abs diff, "label_agreement": fraction of samples whose most
        probable label is the same, "samples": how many samples were compared}; with the voice-only classifier
        in both, also "voice_probabilities" (its probabilities' max abs diff).
    """
    probs = logits = 0.0
    voice: float | None = None
    agree = samples = 0
    for case in cases:
        a, b = run_pipeline(reference, case), run_pipeline(other, case)
        if "speech_classifier.probabilities" in a and "speech_classifier.probabilities" in b:
            voice = max(voice or 0.0, _max_err(a["speech_classifier.probabilities"],
                                               b["speech_classifier.probabilities"]))
        probs = max(probs, _max_err(a["head.probabilities"], b["head.probabilities"]))
        logits = max(logits, _max_err(a["head.logits"], b["head.logits"]))
        agree += int((a["head.probabilities"].argmax(-1) == b["head.probabilities"].argmax(-1)).sum())
        samples += a["head.probabilities"].shape[0]
    out = {"probabilities": probs, "logits": logits, "label_agreement": agree / max(samples, 1), "samples": samples}
    return out if voice is None else {**out, "voice_probabilities": voice}
