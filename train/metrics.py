"""Classification metrics for emotion recognition: WAR, UAR, macro-F1, confusion.

Numpy only. Conventions for classes that are absent (no NaN anywhere):

- precision of a class never predicted is 0; recall of a class with no
  support is 0; F1 is 0 when precision + recall is 0 (sklearn's
  `zero_division=0`).
- UAR (unweighted average recall) averages recall over the classes that
  occur in `y_true` only, so a label set larger than the data does not drag
  it down.
- macro-F1 averages F1 over the classes that occur in `y_true` or `y_pred`
  (sklearn's default `labels=None` behaviour); a class that is neither
  present nor predicted is left out.
- WAR (weighted average recall) is plain accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["classification_report"]


def _as_ids(values: Sequence[int], name: str, num_classes: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of class ids, got shape {arr.shape}")
    if arr.size and not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_)):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{i}] = {int(arr[i])} is out of range [0, {num_classes - 1}]")
    return arr


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict:
    """Compute WAR, UAR, macro-F1, per-class scores and the confusion matrix.

    Args:
        y_true: true class ids, each in [0, len(labels)).
        y_pred: predicted class ids, same length.
        labels: class names; id i is labels[i].

    Returns:
        {"war", "uar", "macro_f1", "per_class": {label: {"precision", "recall",
        "f1", "support"}}, "confusion": [[int]] (rows true, columns predicted),
        "labels": [str], "num_samples": int}. Floats are Python floats.

    Raises:
        ValueError: empty input, length mismatch, no labels, or a class id out of range.
    """
    labels = [str(lab) for lab in labels]
    k = len(labels)
    if k == 0:
        raise ValueError("labels is empty")
    if len(set(labels)) != k:
        raise ValueError(f"labels has duplicates: {labels}")
    t = _as_ids(y_true, "y_true", k)
    p = _as_ids(y_pred, "y_pred", k)
    if t.size != p.size:
        raise ValueError(f"y_true has {t.size} items but y_pred has {p.size}")
    if t.size == 0:
        raise ValueError("y_true and y_pred are empty")

    confusion = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    tp = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)

    present = support > 0
    seen = present | (predicted > 0)
    return {
        "war": float(tp.sum() / t.size),
        "uar": float(recall[present].mean()),
        "macro_f1": float(f1[seen].mean()),
        "per_class": {
            lab: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, lab in enumerate(labels)
        },
        "confusion": confusion.astype(int).tolist(),
        "labels": labels,
        "num_samples": int(t.size),
    }
