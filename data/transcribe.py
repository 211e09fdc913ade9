"""Fill a manifest's transcripts with ASR, resumably (`crab-rt transcribe-manifest`).

Each finished row is appended to `<out>.partial.jsonl` (`{"id": ..., "text": ...}`)
as soon as it is transcribed, so an interrupted run picks up where it stopped.
The final manifest is written atomically at the end and the sidecar removed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from crab_rt.errors import AudioError, ManifestError

__all__ = ["transcribe_manifest", "partial_path"]

log = logging.getLogger(__name__)


def partial_path(out_path: str | Path) -> Path:
    """The resume sidecar of `out_path`: `<out>.partial.jsonl`."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".partial.jsonl")


def _load_partial(path: Path, in_path: Path) -> dict[str, str]:
    """Finished rows from the sidecar; a last line cut short by a kill is removed from the file."""
    done: dict[str, str] = {}
    if not path.is_file():
        return done
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    good: list[str] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # cut short by the interruption: drop it, that row is redone
                path.write_text("".join(good), encoding="utf-8")
                break
            raise ManifestError(f"{path}:{n}: invalid JSON in the resume file (delete it to start over)") from None
        if not line.endswith("\n"):
            line += "\n"
        good.append(line)
        if "manifest" in rec:
            if rec["manifest"] != str(in_path):
                raise ManifestError(
                    f"{path}: resume file belongs to {rec['manifest']}, not {in_path} (delete it to start over)"
                )
            continue
        done[str(rec["id"])] = str(rec["text"])
    else:
        if lines and not lines[-1].endswith("\n"):
            path.write_text("".join(good), encoding="utf-8")
    return done


def transcribe_manifest(
    in_path: str | Path,
    out_path: str | Path,
    transcribe: Callable[[np.ndarray], str],
    only_missing: bool = True,
    progress: bool = True,
) -> dict:
    """Fill transcripts of a manifest and write the result to `out_path`.

    Args:
        in_path: manifest to read (CSV or JSONL).
        out_path: manifest to write (suffix chooses the format); may equal `in_path`.
        transcribe: 16 kHz mono float32 audio -> text.
        only_missing: transcribe only rows whose text is empty; False redoes every row.
        progress: show a tqdm bar.

    Returns:
        {"rows", "transcribed" (this call), "resumed" (from the sidecar), "kept"
        (already had text), "failed" (ids whose audio could not be read; text left
        as it was), "out"}.

    Raises:
        ManifestError: the manifest cannot be read, or the sidecar belongs to another manifest.
        Whatever `transcribe` raises: the rows done so far stay in the sidecar.
    """
    from crab_rt.errors import requires_extra

    with requires_extra("data", "tqdm"):
        from tqdm import tqdm

    from crab_rt.audio import load_audio
    from crab_rt.data.corpora.common import write_manifest_atomic
    from crab_rt.data.manifest import read_manifest

    in_path, out_path = Path(in_path).resolve(), Path(out_path)
    rows = read_manifest(in_path)
    sidecar = partial_path(out_path)
    done = _load_partial(sidecar, in_path)
    resumed = 0
    todo = []
    for r in rows:
        if only_missing and r.text.strip():
            continue
        if r.id in done:
            resumed += 1
        else:
            todo.append(r)
    failed: list[str] = []
    transcribed = 0
    if todo:
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        new_file = not sidecar.is_file() or sidecar.stat().st_size == 0
        with sidecar.open("a", encoding="utf-8") as f:
            if new_file:
                f.write(json.dumps({"manifest": str(in_path)}) + "\n")
                f.flush()
            for r in tqdm(todo, desc="transcribe", unit="utt", disable=not progress):
                try:
                    audio = load_audio(r.audio)
                except AudioError as e:
                    log.warning("%s: %s", r.id, e)
                    failed.append(r.id)
                    continue
                text = " ".join(str(transcribe(audio)).split())
                f.write(json.dumps({"id": r.id, "text": text}, ensure_ascii=False) + "\n")
                f.flush()
                done[r.id] = text
                transcribed += 1
    out_rows = [dataclasses.replace(r, text=done[r.id]) if r.id in done else r for r in rows]
    write_manifest_atomic(out_path, out_rows)
    if sidecar.exists():
        sidecar.unlink()
    kept = sum(1 for r in rows if only_missing and r.text.strip())
    return {
        "rows": len(rows),
        "transcribed": transcribed,
        "resumed": resumed,
        "kept": kept,
        "failed": failed,
        "out": out_path,
    }
