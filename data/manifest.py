"""Manifests: the one corpus format every stage reads.

A manifest is a CSV (header row) or JSONL file with one utterance per row:

| column  | required | meaning                                                        |
|---------|----------|----------------------------------------------------------------|
| id      | no       | unique utterance id (default: the audio file's stem)           |
| audio   | yes      | audio path, absolute or relative to the manifest's folder      |
| text    | yes      | transcript (may be empty)                                      |
| label   | yes      | emotion label; empty where unknown (e.g. a hidden test set)    |
| split   | yes      | train, dev, test, or any other split name                      |
| speaker | no       | speaker id                                                     |

Extra columns are kept in `ManifestRow.extra`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crab_rt.errors import ManifestError

__all__ = ["ManifestRow", "read_manifest", "write_manifest", "check_labels", "MANIFEST_COLUMNS"]

MANIFEST_COLUMNS = ("id", "audio", "text", "label", "split", "speaker")
_REQUIRED = ("audio", "text", "label", "split")


@dataclass(frozen=True)
class ManifestRow:
    """One utterance of a manifest. `audio` is an absolute path once read."""

    id: str
    audio: Path
    text: str
    label: str | None
    split: str
    speaker: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _row_from_dict(raw: dict, base: Path, where: str) -> ManifestRow:
    missing = [c for c in _REQUIRED if c not in raw]
    if missing:
        raise ManifestError(f"{where}: missing column(s) {', '.join(missing)}")
    audio_str = str(raw["audio"] or "").strip()
    if not audio_str:
        raise ManifestError(f"{where}: empty 'audio' path")
    audio = Path(audio_str)
    if not audio.is_absolute():
        audio = (base / audio).resolve()
    split = str(raw["split"] or "").strip()
    if not split:
        raise ManifestError(f"{where}: empty 'split'")
    label = str(raw["label"]).strip() if raw["label"] not in (None, "") else None
    speaker = raw.get("speaker")
    speaker = str(speaker).strip() if speaker not in (None, "") else None
    row_id = str(raw.get("id") or "").strip() or audio.stem
    text = "" if raw["text"] is None else str(raw["text"])
    extra = {k: str(v) for k, v in raw.items() if k not in MANIFEST_COLUMNS and v is not None}
    return ManifestRow(row_id, audio, text, label, split, speaker, extra)


def read_manifest(path: str | Path, splits: Sequence[str] | None = None) -> list[ManifestRow]:
    """Read a CSV or JSONL manifest.

    Args:
        path: `.csv` or `.jsonl` file.
        splits: keep only rows of these splits when given.

    Returns:
        Rows in file order.

    Raises:
        ManifestError: the file is missing, malformed, has duplicate ids, or
            `splits` names a split with no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    base = path.parent.resolve()
    rows: list[ManifestRow] = []
    try:
        if path.suffix.lower() in (".jsonl", ".json"):
            with path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        raw = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ManifestError(f"{path}:{n}: invalid JSON ({e.msg})") from e
                    if not isinstance(raw, dict):
                        raise ManifestError(f"{path}:{n}: each line must be a JSON object")
                    rows.append(_row_from_dict(raw, base, f"{path}:{n}"))
        else:
            with path.open(encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None:
                    raise ManifestError(f"{path}: empty manifest (no header row)")
                for n, raw in enumerate(reader, start=2):
                    rows.append(_row_from_dict(raw, base, f"{path}:{n}"))
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text") from e
    seen: dict[str, int] = {}
    for i, r in enumerate(rows):
        if r.id in seen:
            raise ManifestError(f"{path}: duplicate id {r.id!r} (rows {seen[r.id] + 1} and {i + 1})")
        seen[r.id] = i
    if splits is not None:
        wanted = set(splits)
        present = {r.split for r in rows}
        absent = sorted(wanted - present)
        if absent:
            raise ManifestError(
                f"{path}: no rows for split(s) {', '.join(absent)} (present: {', '.join(sorted(present))})"
            )
        rows = [r for r in rows if r.split in wanted]
    return rows


def check_labels(rows: Iterable[ManifestRow], labels: Sequence[str], source: str = "manifest") -> None:
    """Raise `ManifestError` naming the first row whose label is not in `labels`."""
    allowed = set(labels)
    for r in rows:
        if r.label is not None and r.label not in allowed:
            raise ManifestError(
                f"{source}: row {r.id!r} has unknown label {r.label!r} (expected one of: {', '.join(labels)})"
            )


def write_manifest(path: str | Path, rows: Iterable[ManifestRow], relative: bool = True) -> Path:
    """Write rows as CSV or JSONL (by suffix); audio paths relative to the file when `relative`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    rows = list(rows)
    extra_cols = sorted({k for r in rows for k in r.extra})

    def as_dict(r: ManifestRow) -> dict[str, str]:
        audio = Path(r.audio)
        if relative:
            try:
                audio = Path(audio).resolve().relative_to(base)
            except ValueError:
                audio = Path(audio).resolve()
        d = {
            "id": r.id,
            "audio": audio.as_posix(),
            "text": r.text,
            "label": r.label or "",
            "split": r.split,
            "speaker": r.speaker or "",
        }
        d.update({k: r.extra.get(k, "") for k in extra_cols})
        return d

    if path.suffix.lower() in (".jsonl", ".json"):
        with path.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(as_dict(r), ensure_ascii=False) + "\n")
    else:
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[*MANIFEST_COLUMNS, *extra_cols])
            writer.writeheader()
            for r in rows:
                writer.writerow(as_dict(r))
    return path
