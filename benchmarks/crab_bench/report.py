"""Benchmark outputs: JSON, Markdown tables and PNG plots (matplotlib, headless)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

__all__ = ["write_json", "markdown_table", "write_markdown", "line_panels", "stacked_bars", "output_paths"]


def output_paths(out_dir: Path, name: str, tag: str | None) -> dict[str, Path]:
    """{"json", "md", "stem"} for a result called `name` (with `_<tag>` appended when tagged)."""
    stem = f"{name}_{tag}" if tag else name
    return {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "stem": out_dir / stem}


def write_json(path: Path, payload: dict) -> Path:
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub Markdown table; floats get 3 significant digits (one decimal from 10 up)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown(path: Path, title: str, sections: Sequence[tuple[str, str]], notes: Sequence[str] = ()) -> Path:
    """`# title`, bullet notes, then `## heading` + body per section."""
    parts = [f"# {title}", ""]
    parts += [f"- {n}" for n in notes]
    for heading, body in sections:
        parts += ["", f"## {heading}", "", body]
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_panels(path: Path, title: str, panels: Sequence[dict]) -> Path:
    """One line plot per panel, side by side.

    Args:
        panels: each {"title", "xlabel", "ylabel", "series": {label: (xs, ys)}}.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.0), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for label, (xs, ys) in panel["series"].items():
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_title(panel["title"])
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel(panel["ylabel"])
        ax.grid(True, alpha=0.3)
        if panel["series"]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def stacked_bars(path: Path, title: str, categories: Sequence[str], stacks: dict[str, Sequence[float]],
                 ylabel: str = "ms") -> Path:
    """One stacked bar per category; `stacks` maps a stage to one value per category."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(categories) + 3), 4.2))
    bottom = [0.0] * len(categories)
    for stage, values in stacks.items():
        ax.bar(categories, values, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
