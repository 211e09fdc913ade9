"""Human-readable evaluation output: a text table, a confusion-matrix PNG, a JSON file.

All functions take the dict built by `crab_rt.train.metrics.classification_report`.
matplotlib is imported inside `plot_confusion_matrix` with the Agg backend, so
nothing needs a display.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from crab_rt.errors import ConfigError

__all__ = ["format_report_table", "format_comparison_table", "plot_confusion_matrix", "write_report"]

_REQUIRED_KEYS = ("war", "uar", "macro_f1", "per_class", "confusion", "labels", "num_samples")


def _check_report(report: dict) -> None:
    missing = [k for k in _REQUIRED_KEYS if k not in report]
    if missing:
        raise ConfigError(
            f"report is missing key(s) {', '.join(missing)}; build it with classification_report"
        )


def format_report_table(report: dict) -> str:
    """Per-class precision/recall/F1/support, then WAR, UAR and macro-F1.

    Raises:
        ConfigError: `report` is not a classification report.
    """
    _check_report(report)
    labels = list(report["labels"])
    width = max([9, *(len(lab) for lab in labels)])
    head = f"{'class':<{width}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>9}"
    lines = [head, "-" * len(head)]
    for lab in labels:
        c = report["per_class"][lab]
        scores = "  ".join(f"{c[key]:>9.4f}" for key in ("precision", "recall", "f1"))
        lines.append(f"{lab:<{width}}  {scores}  {c['support']:>9d}")
    lines.append("-" * len(head))
    lines.append(f"{'WAR':<{width}}  {report['war']:>9.4f}   (accuracy)")
    lines.append(f"{'UAR':<{width}}  {report['uar']:>9.4f}   (mean recall over classes with support)")
    lines.append(f"{'macro-F1':<{width}}  {report['macro_f1']:>9.4f}")
    lines.append(f"{'samples':<{width}}  {report['num_samples']:>9d}")
    return "\n".join(lines) + "\n"


def format_comparison_table(reports: list[dict], names: list[str] | None = None) -> str:
    """Several reports side by side on the same rows: one line each with WAR, UAR and macro-F1.

    Args:
        reports: classification reports of the same samples (checked: equal `num_samples`).
        names: a row name per report (default: the report's "modality", else its index).

    Raises:
        ConfigError: a report is malformed, or the reports cover different numbers of samples.
    """
    for report in reports:
        _check_report(report)
    sizes = {r["num_samples"] for r in reports}
    if len(sizes) > 1:
        raise ConfigError(f"reports cover different numbers of samples ({sorted(sizes)}); compare on the same split")
    names = names or [str(r.get("modality", i)) for i, r in enumerate(reports)]
    width = max([8, *(len(n) for n in names)])
    head = f"{'model':<{width}}  {'WAR':>7}  {'UAR':>7}  {'macro-F1':>8}"
    lines = [head, "-" * len(head)]
    for name, r in zip(names, reports):
        lines.append(f"{name:<{width}}  {r['war']:>7.4f}  {r['uar']:>7.4f}  {r['macro_f1']:>8.4f}")
    return "\n".join(lines) + "\n"


def plot_confusion_matrix(report: dict, path: str | Path, title: str | None = None) -> Path:
    """Save the confusion matrix as an image, normalised per true class (row).

    Cells show the row fraction as colour and text, and the count below it.
    Rows with no support stay blank (0).

    Args:
        report: a classification report.
        path: output image (.png recommended); parent folders are created.
        title: figure title (default: WAR/UAR/macro-F1 summary).

    Returns:
        `path`.

    Raises:
        ConfigError: `report` is not a classification report.
    """
    _check_report(report)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    labels = list(report["labels"])
    counts = np.asarray(report["confusion"], dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    k = len(labels)
    size = max(4.0, 0.9 * k + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    try:
        im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
        ax.set_xticks(range(k), labels=labels, rotation=45, ha="right")
        ax.set_yticks(range(k), labels=labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if title is None:
            title = (
                f"Confusion (n={report['num_samples']})  WAR {report['war']:.3f}  "
                f"UAR {report['uar']:.3f}  F1 {report['macro_f1']:.3f}"
            )
        ax.set_title(title, fontsize=10)
        fontsize = 9 if k <= 8 else 7
        for i in range(k):
            for j in range(k):
                colour = "white" if norm[i, j] > 0.5 else "black"
                ax.text(j, i, f"{norm[i, j]:.2f}\n({int(counts[i, j])})", ha="center", va="center",
                        color=colour, fontsize=fontsize)  # fmt: skip
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def write_report(report: dict, out_dir: str | Path, stem: str = "report") -> dict[str, Path]:
    """Write `<stem>.json` and `<stem>_confusion.png` into `out_dir`.

    Returns:
        {"json": path, "confusion_png": path}.

    Raises:
        ConfigError: `report` is not a classification report.
    """
    _check_report(report)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    png_path = plot_confusion_matrix(report, out_dir / f"{stem}_confusion.png")
    return {"json": json_path, "confusion_png": png_path}
