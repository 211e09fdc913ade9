"""Confidence that means what it says: temperature scaling, expected calibration error, reliability diagrams.

Temperature scaling (Guo et al. 2017) divides a classifier's logits by one number T fitted on held-out data
(the dev split) to minimise the negative log-likelihood; the predicted class never changes, only how sure the
probabilities are. The trainer fits T for Crab's head and for the voice-only classifier after training and
stores them in `best.pt`; export copies them into the bundle, and the runtime applies them
(`crab_rt.runtime.emotion_model`, whose `softmax` this module uses too). ECE (15 equal-width confidence bins,
the usual choice) measures the gap between confidence and accuracy: sum over bins of (bin size / N) *
|accuracy - mean confidence|.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from crab_rt.runtime.emotion_model import softmax

__all__ = ["ECE_BINS", "fit_temperature", "expected_calibration_error", "reliability_bins", "calibration_summary",
           "reliability_diagram", "softmax"]

ECE_BINS = 15
# T is searched in [MIN, MAX]: below, a classifier would claim certainty from nothing; above, it says nothing.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def _labelled(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    keep = labels >= 0
    return np.asarray(scores)[keep], labels[keep]


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits.astype(np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the mean negative log-likelihood of `labels` (rows labelled -1 are
    ignored): a golden-section search over log T, where the NLL of temperature scaling is unimodal.

    Raises:
        ValueError: no labelled row.
    """
    logits, labels = _labelled(logits, labels)
    if len(labels) == 0:
        raise ValueError("no labelled rows to fit a temperature on")
    lo, hi = np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll(logits, labels, np.exp(a)), _nll(logits, labels, np.exp(b))
    for _ in range(80):  # the bracket shrinks by 0.618 per round: 80 rounds reach float precision
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll(logits, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(logits, labels, np.exp(b))
    return float(np.exp((lo + hi) / 2.0))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width confidence bin (lower edge exclusive, the first bin includes 0): its edges, how many
    predictions fell in it, their accuracy and their mean confidence (None for an empty bin)."""
    probs, labels = _labelled(probs, labels)
    confidence = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = probs.argmax(axis=1) == labels if len(probs) else np.zeros(0, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = []
    for i in range(bins):
        inside = (confidence > edges[i]) & (confidence <= edges[i + 1])
        if i == 0:
            inside |= confidence == 0.0
        n = int(inside.sum())
        out.append({"low": float(edges[i]), "high": float(edges[i + 1]), "count": n,
                    "accuracy": float(correct[inside].mean()) if n else None,
                    "confidence": float(confidence[inside].mean()) if n else None})
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over `bins` equal-width confidence bins (rows labelled -1 are ignored; 0.0 for no row)."""
    table = reliability_bins(probs, labels, bins)
    total = sum(b["count"] for b in table)
    if total == 0:
        return 0.0
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in table if b["count"]))


def calibration_summary(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """ECE and NLL before (T = 1) and after temperature scaling with `temperature`."""
    z, y = _labelled(logits, labels)
    return {
        "temperature": round(float(temperature), 4),
        "ece_before": round(expected_calibration_error(softmax(z), y), 4),
        "ece_after": round(expected_calibration_error(softmax(z, temperature), y), 4),
        "nll_before": round(_nll(z, y, 1.0), 4) if len(y) else None,
        "nll_after": round(_nll(z, y, temperature), 4) if len(y) else None,
        "num_samples": int(len(y)),
    }


def reliability_diagram(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str,
                        bins: int = ECE_BINS) -> Path:
    """Accuracy against confidence per bin for each named (probabilities, labels) pair, with the diagonal of
    perfect calibration and each curve's ECE in its legend; written as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=110)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    for (name, (probs, labels)), marker in zip(curves.items(), "osD^v"):
        table = [b for b in reliability_bins(probs, labels, bins) if b["count"]]
        ece = expected_calibration_error(probs, labels, bins)
        ax.plot([b["confidence"] for b in table], [b["accuracy"] for b in table], marker=marker, linewidth=1.5,
                label=f"{name} (ECE {ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"confidence (mean of bin, {bins} bins)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
