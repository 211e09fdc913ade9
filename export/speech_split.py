"""The speech encoder as two graphs for incremental encoding, and their parity against the whole graph.

`speech_frontend` is the CNN feature encoder plus the feature projection
(waveforms [B, T] -> features [B, F, D]); `speech_backend` is the rest
(features and an int64 frame mask -> hidden states). The runtime
runs the front end on chunks while the person speaks
(`crab_rt.runtime.speech_frontend`), which is exact only when every frame
depends on its own 400 samples alone. Two things break that, and each is
recorded in the manifest's `incremental_speech.locality`:

- `normalize_waveform` (WavLM Large): the whole pass normalises the waveform
  with the utterance's mean and variance; the first conv has a bias, so a later
  LayerNorm does not cancel the scale. The runtime uses running statistics.
- GroupNorm in the CNN (`feat_extract_norm="group"`, wavlm-base-plus): the
  first conv's output is normalised per channel over the whole input.

`check_incremental_parity` measures, on a fixed set of generated utterances
(short ones, a tail-only one under the receptive field, forced-split pieces,
random chunkings with the segmenter's hangover audio beyond the cut, batch 1
and a padded batch), the max abs difference of the encoder output and of the
probabilities between the runtime's incremental path and the whole graph. The
bundle writer keeps the split graphs only when both are within the bound.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crab_rt.audio import SAMPLE_RATE
from crab_rt.runtime.speech_frontend import SPLIT_GRAPHS, FrontendGeometry, UtteranceFrames, encode_split, run_chunks

__all__ = ["SPLIT_GRAPHS", "DEFAULT_CHUNK_FRAMES", "DEFAULT_ENCODER_BOUND", "DEFAULT_PROBABILITY_BOUND",
           "SpeechFrontendGraph", "SpeechBackendGraph", "geometry", "locality_issues", "export_split_graphs",
           "parity_utterances", "check_incremental_parity", "incremental_entry"]

log = logging.getLogger(__name__)

DEFAULT_CHUNK_FRAMES = 16  # 320 ms of new audio per chunk
DEFAULT_ENCODER_BOUND = 1e-3
DEFAULT_PROBABILITY_BOUND = 1e-4


class SpeechFrontendGraph(nn.Module):
    """input_values [B, T] float -> features [B, F, D] (no mask: a frame sees only its own samples)."""

    def __init__(self, speech_encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = speech_encoder

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return self.encoder.frontend(input_values)


class SpeechBackendGraph(nn.Module):
    """features [B, F, D], frame_mask [B, F] int64 -> hidden_states [B, F, D] (padded frames zero)."""

    def __init__(self, speech_encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = speech_encoder

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder.backend(features, frame_mask > 0)


def geometry(speech_encoder) -> dict:
    """{"stride_samples", "receptive_field_samples"} of the CNN, from its kernels and strides."""
    config = speech_encoder.model.config
    stride, field = 1, 1
    for kernel, step in zip(config.conv_kernel, config.conv_stride):
        field += (int(kernel) - 1) * stride
        stride *= int(step)
    return {"stride_samples": stride, "receptive_field_samples": field}


def locality_issues(model) -> list[str]:
    """What makes a front-end frame depend on more than its own samples (empty: frames are local)."""
    issues = []
    if not model.speech_encoder.splittable:
        issues.append("Whisper's log-mel floor is set by the utterance's loudest bin (whisper: speech encoder)")
    if model.normalize_waveform:
        issues.append("the waveform is normalised over the whole utterance (normalize_waveform)")
    if getattr(model.speech_encoder.model.config, "feat_extract_norm", "layer") == "group":
        issues.append("the CNN's GroupNorm normalises over the whole utterance (feat_extract_norm=group)")
    return issues


def export_split_graphs(model, out_dir: str | Path, opset: int = 17) -> dict[str, Path]:
    """Export `speech_frontend.onnx` and `speech_backend.onnx` of a model prepared for export
    (`crab_rt.export.onnx_export.export_model_copy`) into `out_dir`."""
    from crab_rt.export.onnx_export import _export

    out_dir = Path(out_dir)
    encoder = model.speech_encoder
    values = torch.randn(2, SAMPLE_RATE)
    paths = {"speech_frontend": out_dir / "speech_frontend.onnx", "speech_backend": out_dir / "speech_backend.onnx"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        log.info("exporting the speech encoder's front end and backend (incremental encoding)...")
        _export(SpeechFrontendGraph(encoder), (values,), paths["speech_frontend"],
                {"input_values": {0: "batch", 1: "samples"}}, {"features": {0: "batch", 1: "frames"}}, opset)
        features = encoder.frontend(values)
        mask = torch.ones(features.shape[:2], dtype=torch.int64)
        mask[1, features.shape[1] * 2 // 3:] = 0
        _export(SpeechBackendGraph(encoder), (features, mask), paths["speech_backend"],
                {"features": {0: "batch", 1: "frames"}, "frame_mask": {0: "batch", 1: "frames"}},
                {"hidden_states": {0: "batch", 1: "frames"}}, opset)
    return paths


def _speechlike(rng: np.random.Generator, samples: int) -> np.ndarray:
    """Noise and harmonics under a syllable-rate envelope, with pauses: level changes like speech."""
    t = np.arange(samples) / SAMPLE_RATE
    f0 = 110 + 60 * rng.random()
    voiced = sum(np.sin(2 * np.pi * f0 * k * t + rng.random() * 6.28) / k for k in range(1, 6))
    envelope = np.clip(np.sin(2 * np.pi * (3 + 2 * rng.random()) * t + rng.random() * 6.28), 0, None) ** 2
    envelope *= (np.sin(2 * np.pi * 0.4 * t + rng.random() * 6.28) > -0.6)  # pauses
    x = 0.3 * envelope * voiced + 0.02 * rng.standard_normal(samples) + 0.01 * rng.random()
    return x.astype(np.float32)


def parity_utterances(seed: int = 0, max_utterance_s: float = 2.0) -> list[dict]:
    """The fixed parity set: {"name", "stream" (utterance audio plus the hangover the stream saw after it),
    "samples" (the utterance's length), "forced_split"}.

    Lengths: under the receptive field (a forced split's last piece can be that short), under one chunk,
    1.37 s, 3.1 s, and a 5 s region split at `max_utterance_s` into contiguous pieces.
    """
    rng = np.random.default_rng(seed)
    cases = []
    for name, seconds in (("tail-only", 0.015), ("short", 0.3), ("mid", 1.37), ("long", 3.1)):
        n = max(1, int(seconds * SAMPLE_RATE))
        stream = _speechlike(rng, n + SAMPLE_RATE // 2)  # the segmenter's hangover: audio past the cut
        cases.append({"name": name, "stream": stream, "samples": n, "forced_split": False})
    region = _speechlike(rng, 5 * SAMPLE_RATE + SAMPLE_RATE // 2)
    piece = int(max_utterance_s * SAMPLE_RATE)
    for i, start in enumerate(range(0, 5 * SAMPLE_RATE, piece)):
        n = min(piece, 5 * SAMPLE_RATE - start)
        cases.append({"name": f"split-{i}", "stream": region[start:], "samples": n, "forced_split": n == piece})
    return cases


def _incremental_states(frontend, geometry_, cases: list[dict], rng: np.random.Generator) -> list:
    """Feed each case's stream to an `UtteranceFrames` in random pieces, running chunks at random times."""
    states = []
    for case in cases:
        state = UtteranceFrames(0, geometry_)
        stream, pos = case["stream"], 0
        while pos < stream.size:
            step = int(rng.integers(160, 6000))
            state.append(stream[pos: pos + step])
            pos += step
            if state.chunk_ready() and rng.random() < 0.6:  # otherwise chunks pile up for a later visit
                run_chunks(frontend, [state], max_chunks=int(rng.integers(1, 4)))
        states.append(state)
    return states


def check_incremental_parity(model, graphs: dict[str, Path], chunk_frames: int = DEFAULT_CHUNK_FRAMES,
                             max_audio_samples: int | None = None, seed: int = 0) -> dict:
    """Compare the incremental path (split graphs, runtime code) with the whole `speech_encoder` graph.

    Args:
        model: the CrabModel (eval mode).
        graphs: fp32 ONNX paths with "speech_encoder", "head", "speech_frontend", "speech_backend" (and
            "text_encoder" for a bimodal model; its input is a fixed short text).
        chunk_frames: frames per chunk during speech.
        max_audio_samples: the model's longest input (cut as the runtime cuts).
        seed: the chunkings' seed.

    Returns:
        {"encoder": max abs diff of hidden states, "probabilities": max abs diff, "utterances": n,
        "force_split": pieces cut at the length limit, "chunkings": chunkings tried per utterance}.
    """
    from crab_rt.backends.onnxruntime import OrtSession
    from crab_rt.features import pad_waveforms

    sessions = {name: OrtSession(path, name) for name, path in graphs.items()}
    max_samples = max_audio_samples or 12 * SAMPLE_RATE
    g = FrontendGeometry(**{"stride": geometry(model.speech_encoder)["stride_samples"],
                            "receptive_field": geometry(model.speech_encoder)["receptive_field_samples"]},
                         chunk_frames=chunk_frames, normalize=model.normalize_waveform, max_samples=max_samples)
    text_feed = {}
    if "text_encoder" in sessions:
        cfg = model.text_encoder.model.config
        ids = np.array([[0] + [int(i) % int(cfg.vocab_size) for i in (35, 61, 12, 90)] + [2]], dtype=np.int64)
        mask = np.ones_like(ids)
        text_feed = {"text_hidden": sessions["text_encoder"].run({"input_ids": ids, "attention_mask": mask})[
            "hidden_states"], "text_mask": mask}

    def probabilities(hidden: np.ndarray) -> np.ndarray:
        feed = {"speech_hidden": hidden[None], "speech_mask": np.ones((1, hidden.shape[0]), dtype=np.int64)}
        return sessions["head"].run({**feed, **text_feed})["probabilities"][0]

    cases = parity_utterances(seed)
    whole = []
    for case in cases:
        audio = case["stream"][: case["samples"]]
        values, amask = pad_waveforms([audio], model.normalize_waveform, max_samples)
        out = sessions["speech_encoder"].run({"input_values": values, "attention_mask": amask})
        hidden = out["hidden_states"][0, : int(out["frame_mask"].sum())]
        whole.append((hidden, probabilities(hidden)))
    rng = np.random.default_rng(seed)
    errors = {"encoder": 0.0, "probabilities": 0.0}
    chunkings = 3
    for trial in range(chunkings):
        states = _incremental_states(sessions["speech_frontend"], g, cases, rng)
        audios = [c["stream"][: c["samples"]] for c in cases]
        if trial == 0:  # one utterance at a time
            hidden = [encode_split(sessions["speech_frontend"], sessions["speech_backend"], g, [a], [s])[0][0]
                      for a, s in zip(audios, states)]
        else:  # all together: padded tails and a padded backend batch
            hidden, _ = encode_split(sessions["speech_frontend"], sessions["speech_backend"], g, audios, states)
        for (ref_hidden, ref_probs), got in zip(whole, hidden):
            err = np.inf if got.shape != ref_hidden.shape else float(np.abs(got - ref_hidden).max())
            errors["encoder"] = max(errors["encoder"], err)
            errors["probabilities"] = max(errors["probabilities"],
                                          float(np.abs(probabilities(got) - ref_probs).max()))
    return {**errors, "utterances": len(cases), "force_split": sum(c["forced_split"] for c in cases),
            "chunkings": chunkings}


def incremental_entry(model, graphs: dict[str, Path], out_dir: str | Path, opset: int,
                      encoder_bound: float = DEFAULT_ENCODER_BOUND,
                      probability_bound: float = DEFAULT_PROBABILITY_BOUND,
                      chunk_frames: int = DEFAULT_CHUNK_FRAMES,
                      max_audio_samples: int | None = None) -> tuple[dict, dict[str, Path]]:
    """Export the split graphs next to `graphs`, measure their incremental parity and decide.

    Returns:
        the manifest's `incremental_speech` entry, and the split graphs kept ({} when the parity misses its
        bound: their files are removed, the bundle runs the whole `speech_encoder`).
    """
    from crab_rt.export.onnx_export import export_model_copy

    if not model.speech_encoder.splittable:
        issues = locality_issues(model)
        log.info("no split graphs: the speech encoder cannot be split (%s); the runtime runs the whole speech "
                 "encoder", "; ".join(issues))
        return {"graphs": [], "chunk_frames": chunk_frames, "locality": issues, "parity": {},
                "bound": {"encoder": encoder_bound, "probabilities": probability_bound}, "within_bound": False}, {}
    copy = export_model_copy(model)
    split = export_split_graphs(copy, out_dir, opset)
    log.info("incremental speech parity (split graphs vs the whole speech encoder, bound %g / %g)...",
             encoder_bound, probability_bound)
    parity = check_incremental_parity(copy, {**graphs, **split}, chunk_frames, max_audio_samples)
    ok = parity["encoder"] <= encoder_bound and parity["probabilities"] <= probability_bound
    issues = locality_issues(model)
    entry = {
        "graphs": list(split) if ok else [],
        **geometry(model.speech_encoder),
        "chunk_frames": chunk_frames,
        "locality": issues,
        "parity": parity,
        "bound": {"encoder": encoder_bound, "probabilities": probability_bound},
        "within_bound": bool(ok),
    }
    if ok:
        log.info("  encoder output max err %.1e, probabilities %.1e: incremental encoding on", parity["encoder"],
                 parity["probabilities"])
        return entry, split
    log.info("  encoder output max err %.2g, probabilities %.2g miss the bound%s: no split graphs, the runtime "
             "runs the whole speech encoder", parity["encoder"], parity["probabilities"],
             f" ({'; '.join(issues)})" if issues else "")
    for path in split.values():
        path.unlink(missing_ok=True)
    return entry, {}
