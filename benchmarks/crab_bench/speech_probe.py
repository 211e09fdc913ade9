"""What a checkpoint's speech path carries: linear probes on its pooled speech features.

For each checkpoint, on a manifest's train, dev and test splits: the speech encoder's output and the head's
`speech_pooled` tap (after training; `--untrained` also probes the same architecture with random weights), each
pooled over valid frames (mean and standard deviation), standardised, and fed to a class-balanced logistic
regression fitted on train with C chosen by dev UAR. Also printed: how much the pooled encoder output varies
across clips relative to its overall spread (near 0: every clip looks the same to the head). This is the
evidence behind docs/accuracy.md's diagnosis; `python benchmarks/speech_probe.py --help`.
"""

from __future__ import annotations

import argparse

import numpy as np


def _features(model, rows, max_audio_s: float) -> dict[str, np.ndarray]:
    import torch
    from torch.utils.data import DataLoader

    from crab_rt.model.head import masked_mean
    from crab_rt.train.data import Collator, EmotionDataset

    ds = EmotionDataset(rows, model.labels, max_audio_s)
    loader = DataLoader(ds, batch_size=16, collate_fn=Collator(None, model.normalize_waveform, max_audio_s))
    enc, tap = [], []
    model.eval()
    with torch.no_grad():
        for b in loader:
            hidden, mask = model.speech_encoder(b.input_values, b.audio_mask)
            m = mask.unsqueeze(-1).float()
            mean = masked_mean(hidden, mask)
            std = (((hidden - mean[:, None]) ** 2 * m).sum(1) / m.sum(1)).sqrt()
            enc.append(torch.cat([mean, std], -1).numpy())
            s = model.head.speech_block(hidden, mask)
            tap.append(model.head.speech_pool(s, mask).numpy())
    return {"encoder": np.concatenate(enc), "speech_pooled": np.concatenate(tap)}


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
    p.add_argument("--checkpoint", action="append", required=True, help="a Crab checkpoint with speech (repeatable)")
    p.add_argument("--untrained", action="store_true", help="also probe each architecture with random weights")
    args = p.parse_args(argv)
    import torch

    from crab_rt.data.manifest import read_manifest
    from crab_rt.model.checkpoint import load_model
    from crab_rt.model.crab import CrabModel

    rows = {s: [r for r in read_manifest(args.manifest, [s]) if r.label] for s in ("train", "dev", "test")}
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
