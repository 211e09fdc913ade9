"""What a checkpoint's speech path carries: linear probes on its pooled speech features.

For each checkpoint, on a manifest's train, dev and test splits: the speech encoder's output and the head's
`speech_pooled` tap (after training; `--untrained` also probes the same architecture with random weights), each
pooled over valid frames (mean and standard deviation), standardised, and fed to a class-balanced logistic
regression fitted on train with C chosen by dev UAR. Also printed: how much the pooled encoder output varies
across clips relative to its overall spread (near 0: every clip looks the same to the head). `--encoder SPEC`
probes every layer of a speech encoder as `model.speech_encoder_layers` would cut it (layer N through the final
norm), which is how the synthetic recipe's layer was chosen. This is the evidence behind docs/accuracy.md's
diagnosis; `python benchmarks/speech_probe.py --help`.
"""

from __future__ import annotations

import argparse

import numpy as np


def _batches(rows, labels, normalize: bool, max_audio_s: float):
    """The clips of `rows` as training prepares them, 16 at a time."""
    from torch.utils.data import DataLoader

    from crab_rt.train.data import Collator, EmotionDataset

    ds = EmotionDataset(rows, labels, max_audio_s)
    return DataLoader(ds, batch_size=16, collate_fn=Collator(None, normalize, max_audio_s))


def _features(model, rows, max_audio_s: float) -> dict[str, np.ndarray]:
    import torch

    from crab_rt.model.speech_classifier import mean_and_spread

    enc, tap = [], []
    model.eval()
    with torch.no_grad():
        for b in _batches(rows, model.labels, model.normalize_waveform, max_audio_s):
            hidden, mask = model.speech_encoder(b.input_values, b.audio_mask)
            enc.append(mean_and_spread(hidden, mask, eps=0.0).numpy())
            s = model.head.speech_block(hidden, mask)
            tap.append(model.head.speech_pool(s, mask).numpy())
    return {"encoder": np.concatenate(enc), "speech_pooled": np.concatenate(tap)}


def _pooled(encoder, normalize: bool, rows, labels, max_audio_s: float) -> np.ndarray:
    """Mean and standard deviation over valid frames of `encoder`'s states, one row per clip."""
    import torch

    from crab_rt.model.speech_classifier import mean_and_spread

    with torch.no_grad():
        return np.concatenate([mean_and_spread(*encoder(b.input_values, b.audio_mask), eps=0.0).numpy()
                               for b in _batches(rows, labels, normalize, max_audio_s)])


def probe_layers(spec: str, rows: dict, labels: list[str], max_audio_s: float) -> list[dict]:
    """A linear probe on each layer of the speech encoder `spec` (its pretrained weights), layer 1 to the last."""
    import copy

    from crab_rt.model.crab import _wants_normalized_input
    from crab_rt.model.encoders import SpeechEncoder, load_hf_model

    full = SpeechEncoder(load_hf_model(spec, "speech")).eval()
    normalize = _wants_normalized_input(spec, full)
    y = {s: np.array([labels.index(r.label) for r in rs]) for s, rs in rows.items()}
    depth = len(full.layers)
    results = []
    for n in range(1, depth + 1):
        encoder = copy.deepcopy(full)
        encoder.keep_layers(n)
        x = {s: _pooled(encoder, normalize, rs, labels, max_audio_s) for s, rs in rows.items()}
        results.append({"layer": n, **_probe(x, y, labels)})
    return results


def _probe(x: dict[str, np.ndarray], y: dict[str, np.ndarray], labels) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from crab_rt.train.metrics import classification_report

    scaler = StandardScaler().fit(x["train"])
    best = None
    for c in (0.001, 0.01, 0.1, 1.0):
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(scaler.transform(x["train"]),
                                                                                 y["train"])
        dev = classification_report(y["dev"], lr.predict(scaler.transform(x["dev"])), labels)["uar"]
        if best is None or dev > best[0]:
            test = classification_report(y["test"], lr.predict(scaler.transform(x["test"])), labels)["uar"]
            best = (dev, test, c)
    return {"dev_uar": round(best[0], 3), "test_uar": round(best[1], 3), "C": best[2]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/speech_probe.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True, help="manifest with train, dev and test splits")
    p.add_argument("--checkpoint", action="append", default=[], help="a Crab checkpoint with speech (repeatable)")
    p.add_argument("--encoder", action="append", default=[],
                   help="a speech encoder spec (e.g. whisper:tiny.en) whose every layer is probed (repeatable)")
    p.add_argument("--max-audio-s", type=float, default=12.0, help="clip length cap for --encoder (default: 12)")
    p.add_argument("--untrained", action="store_true", help="also probe each architecture with random weights")
    args = p.parse_args(argv)
    if not args.checkpoint and not args.encoder:
        p.error("give --checkpoint or --encoder")
    import torch

    from crab_rt.data.manifest import read_manifest
    from crab_rt.model.checkpoint import load_model
    from crab_rt.model.crab import CrabModel

    rows = {s: [r for r in read_manifest(args.manifest, [s]) if r.label] for s in ("train", "dev", "test")}
    labels = sorted({r.label for rs in rows.values() for r in rs})
    for spec in args.encoder:
        for result in probe_layers(spec, rows, labels, args.max_audio_s):
            print(f"{spec} layer {result.pop('layer')}: linear probe {result}")
    for checkpoint in args.checkpoint:
        model, _, payload = load_model(checkpoint, "cpu")
        max_audio_s = payload["model_settings"]["max_audio_s"]
        y = {s: np.array([model.labels.index(r.label) for r in rs]) for s, rs in rows.items()}
        models = [("trained", model)]
        if args.untrained:
            torch.manual_seed(0)
            models.append(("untrained", CrabModel.from_architecture(model.architecture())))
        for state, m in models:
            feats = {s: _features(m, rs, max_audio_s) for s, rs in rows.items()}
            for key in ("encoder", "speech_pooled"):
                x = {s: f[key] for s, f in feats.items()}
                spread = float(x["train"].std(0).mean() / (x["train"].std() + 1e-12))
                print(f"{checkpoint} [{state}] {key:>13}: across-clip spread {spread:.3f}, linear probe "
                      f"{_probe(x, y, m.labels)}")
    return 0
