"""What every corpus importer shares: the summary it returns, problem-file
reporting, the class-count table, and atomic manifest writing."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crab_rt.data.manifest import ManifestRow, write_manifest
from crab_rt.errors import ManifestError

__all__ = [
    "CorpusLayoutError",
    "PrepareSummary",
    "count_by_split",
    "format_problem_list",
    "write_manifest_atomic",
    "visible_files",
    "probe_audio",
]


class CorpusLayoutError(ManifestError):
    """The given root does not look like the corpus (the message names what was expected)."""


@dataclass
class PrepareSummary:
    """What an importer did: counts, drops and problem files. Nothing is dropped silently.

    Attributes:
        corpus: "iemocap", "meld" or "msp-podcast".
        manifest: path of the written manifest.
        labels: the class names, in model order.
        counts: split -> label -> number of manifest rows ("" is the label of unlabelled rows).
        dropped: why -> count for annotated rows left out of the manifest on purpose
            (e.g. "fru": 1849 for IEMOCAP, "O": 123 for MSP-Podcast).
        missing: audio (or media) files the annotation names but that do not exist;
            their rows are not in the manifest.
        unreadable: (file, reason) for files that exist but cannot be decoded; their
            rows are not in the manifest.
        missing_text: ids of manifest rows without a transcript (kept, text empty).
        paper_counts: split -> label -> the paper's Table I count, where the paper gives one.
        notes: free-form remarks printed under the table.
    """

    corpus: str
    manifest: Path
    labels: tuple[str, ...]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    missing_text: list[str] = field(default_factory=list)
    paper_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        """Number of rows written to the manifest."""
        return sum(sum(c.values()) for c in self.counts.values())

    @property
    def complete(self) -> bool:
        """True when no file was missing or unreadable."""
        return not self.missing and not self.unreadable

    def format(self, max_listed: int = 10) -> str:
        """The summary as text: class-count table, drops, and problem files (first `max_listed`)."""
        lines = [f"{self.corpus}: {self.n_rows} rows -> {self.manifest}", ""]
        lines.append(self._count_table())
        if self.dropped:
            total = sum(self.dropped.values())
            parts = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items(), key=lambda kv: (-kv[1], kv[0])))
            lines.append(f"dropped on purpose (not in the label set): {total} ({parts})")
        if self.missing:
            lines.append(format_problem_list("missing audio files", self.missing, max_listed))
        if self.unreadable:
            items = [f"{p} ({why})" for p, why in self.unreadable]
            lines.append(format_problem_list("unreadable audio files", items, max_listed))
        if self.missing_text:
            lines.append(
                format_problem_list("rows without a transcript (kept, text empty)", self.missing_text, max_listed)
            )
        lines.extend(self.notes)
        return "\n".join(lines)

    def _count_table(self) -> str:
        splits = list(self.counts)
        extra = sorted({lab for c in self.counts.values() for lab in c} - set(self.labels))
        labels = [*self.labels, *extra]
        header = ["label", *splits, "total"]
        paper_cols = list(self.paper_counts)
        header += [f"paper {s}" for s in paper_cols]
        rows = []
        for lab in labels:
            vals = [self.counts[s].get(lab, 0) for s in splits]
            row = [lab or "(no label)", *map(str, vals), str(sum(vals))]
            row += [_fmt_opt(self.paper_counts[s].get(lab)) for s in paper_cols]
            rows.append(row)
        totals = [sum(self.counts[s].values()) for s in splits]
        total_row = ["total", *map(str, totals), str(sum(totals))]
        total_row += [_fmt_opt(sum(self.paper_counts[s].values()) or None) for s in paper_cols]
        rows.append(total_row)
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def fmt(r: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

        sep = "  ".join("-" * w for w in widths)
        return "\n".join([fmt(header), sep, *(fmt(r) for r in rows[:-1]), sep, fmt(rows[-1])])


def _fmt_opt(v: int | None) -> str:
    return "-" if v is None else str(v)


def format_problem_list(what: str, items: Sequence[str], max_listed: int = 10) -> str:
    """One block naming the count and the first `max_listed` items."""
    shown = list(items[:max_listed])
    more = len(items) - len(shown)
    lines = [f"{what}: {len(items)}"] + [f"  {s}" for s in shown]
    if more > 0:
        lines.append(f"  ... and {more} more")
    return "\n".join(lines)


def count_by_split(rows: Iterable[ManifestRow], split_order: Sequence[str] = ()) -> dict[str, dict[str, int]]:
    """split -> label -> count, splits in `split_order` first, then in order of appearance."""
    counts: dict[str, Counter] = {s: Counter() for s in split_order}
    for r in rows:
        counts.setdefault(r.split, Counter())[r.label or ""] += 1
    return {s: dict(c) for s, c in counts.items() if c or s in split_order}


def write_manifest_atomic(path: str | Path, rows: Iterable[ManifestRow]) -> Path:
    """Write a manifest through a temporary file in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_manifest(tmp, rows)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def visible_files(folder: Path, pattern: str) -> list[Path]:
    """Sorted files in `folder` matching `pattern`, skipping macOS "._" resource forks and dotfiles."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(pattern) if p.is_file() and not p.name.startswith("."))


def probe_audio(path: Path) -> str | None:
    """Why `path` cannot serve as audio, or None when its header reads (no full decode).

    Returns:
        "missing" when the file does not exist, otherwise a one-line reason or None.
    """
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty file"
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile raises RuntimeError/LibsndfileError for corrupt headers
        return f"cannot read audio header ({type(e).__name__})"
    if info.frames <= 0:
        return "no samples"
    return None
