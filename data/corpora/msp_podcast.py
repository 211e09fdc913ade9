"""MSP-Podcast 2.0 importer: labels_consensus.csv + Audios/ + Transcripts/ -> manifest.

Layout:

    Labels/labels_consensus.csv   FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set
    Audios/<FileName>             (e.g. MSP-PODCAST_0001_0008.wav)
    Transcripts/<stem>.txt        (where the corpus provides one)

Eight classes from the consensus letters; O (other) and X (no agreement) are
dropped and counted. Test3's labels are hidden (scored on the challenge
platform): its rows keep an empty label. The letter mapping is public because
the challenge submission uses letters (see `paper_results.write_msp_submission`).
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from crab_rt.data.corpora.common import (
    CorpusLayoutError,
    PrepareSummary,
    count_by_split,
    probe_audio,
    visible_files,
    write_manifest_atomic,
)
from crab_rt.data.manifest import ManifestRow
from crab_rt.errors import ManifestError

__all__ = [
    "MSP_PODCAST_LABELS",
    "MSP_LETTER_TO_LABEL",
    "MSP_LABEL_TO_LETTER",
    "MSP_SPLIT_NAMES",
    "prepare_msp_podcast",
    "find_msp_root",
]

MSP_LETTER_TO_LABEL: dict[str, str] = {
    "A": "angry",
    "S": "sad",
    "H": "happy",
    "U": "surprise",
    "F": "fear",
    "D": "disgust",
    "C": "contempt",
    "N": "neutral",
}
MSP_LABEL_TO_LETTER: dict[str, str] = {v: k for k, v in MSP_LETTER_TO_LABEL.items()}
MSP_PODCAST_LABELS: tuple[str, ...] = tuple(MSP_LETTER_TO_LABEL.values())
MSP_SPLIT_NAMES: dict[str, str] = {
    "Train": "train",
    "Development": "dev",
    "Test1": "test1",
    "Test2": "test2",
    "Test3": "test3",
}
_DROPPED_LETTERS = {"O": "O (other)", "X": "X (no agreement)"}
_REQUIRED = ("FileName", "EmoClass", "Split_Set")
_EXTRA = ("EmoAct", "EmoVal", "EmoDom", "Gender")


def find_msp_root(root: str | Path) -> Path:
    """The folder holding Labels/labels_consensus.csv (`root` itself or one level below).

    Raises:
        CorpusLayoutError: no Labels/labels_consensus.csv found.
    """
    root = Path(root)
    cands = [root] + (sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
    for cand in cands:
        if (cand / "Labels" / "labels_consensus.csv").is_file():
            return cand
    raise CorpusLayoutError(
        f"{root}: does not look like MSP-Podcast (expected Labels/labels_consensus.csv, Audios/ and Transcripts/)"
    )


def _read_transcript(path: Path) -> str | None:
    if not path.is_file():
        return None
    return " ".join(path.read_text(encoding="utf-8", errors="replace").split())


def prepare_msp_podcast(root: str | Path, out: str | Path) -> PrepareSummary:
    """Build the 8-class MSP-Podcast 2.0 manifest.

    Args:
        root: the corpus folder (with Labels/, Audios/, Transcripts/).
        out: manifest path (.csv or .jsonl). Splits: train, dev, test1, test2, test3.
            Extra columns: EmoAct, EmoVal, EmoDom, Gender.

    Returns:
        The summary: counts per split, O/X drops, missing/unreadable audio (rows
        left out), rows without a transcript (kept with empty text: fill them with
        `crab-rt transcribe-manifest`). Test3 rows are counted under "(no label)".

    Raises:
        CorpusLayoutError: `root` does not look like MSP-Podcast.
        ManifestError: the labels CSV lacks a required column.
    """
    base = find_msp_root(root)
    out = Path(out)
    labels_csv = base / "Labels" / "labels_consensus.csv"
    audio_dir, text_dir = base / "Audios", base / "Transcripts"
    with labels_csv.open(encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        absent = [c for c in _REQUIRED if c not in fields]
        if absent:
            raise ManifestError(f"{labels_csv}: missing column(s) {', '.join(absent)} (found: {', '.join(fields)})")
        raw_rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items() if k is not None} for r in reader]

    rows: list[ManifestRow] = []
    dropped: Counter = Counter()
    missing: list[str] = []
    unreadable: list[tuple[str, str]] = []
    missing_text: list[str] = []
    other_splits: Counter = Counter()
    seen_test3 = False
    for r in raw_rows:
        name = r["FileName"]
        split = MSP_SPLIT_NAMES.get(r["Split_Set"])
        if split is None:
            split = r["Split_Set"].lower() or "unknown"
            other_splits[split] += 1
        if split == "test3":
            seen_test3 = True
            label = None  # hidden: whatever the CSV holds there is not a label
        else:
            letter = r["EmoClass"].upper()
            if letter in _DROPPED_LETTERS:
                dropped[_DROPPED_LETTERS[letter]] += 1
                continue
            label = MSP_LETTER_TO_LABEL.get(letter)
            if label is None:
                dropped[f"unknown EmoClass {letter or '(empty)'}"] += 1
                continue
        _add(rows, audio_dir / name, text_dir, name, label, split, r, missing, unreadable, missing_text)
    notes: list[str] = []
    if not seen_test3:
        # Some releases ship Test3 audio without CSV rows: add those files unlabelled.
        extra_test3 = [p for p in visible_files(audio_dir, "*.wav") if "test3" in p.name.lower()]
        for p in extra_test3:
            _add(rows, p, text_dir, p.name, None, "test3", {}, missing, unreadable, missing_text)
        if extra_test3:
            notes.append(f"added {len(extra_test3)} Test3 files found in Audios/ (not in the labels CSV)")
    if other_splits:
        notes.append(f"warning: unexpected Split_Set values kept as-is: {dict(other_splits)}")
    write_manifest_atomic(out, rows)
    from crab_rt.data.corpora.paper_counts import PAPER_CLASS_COUNTS

    notes.append("paper Table I gives no count for 'sad'")
    return PrepareSummary(
        corpus="msp-podcast",
        manifest=out,
        labels=MSP_PODCAST_LABELS,
        counts=count_by_split(rows, [s for s in MSP_SPLIT_NAMES.values() if any(r.split == s for r in rows)]),
        dropped=dict(dropped),
        missing=missing,
        unreadable=unreadable,
        missing_text=missing_text,
        paper_counts=PAPER_CLASS_COUNTS["msp-podcast"],
        notes=notes,
    )


def _add(
    rows: list[ManifestRow],
    wav: Path,
    text_dir: Path,
    name: str,
    label: str | None,
    split: str,
    r: dict[str, str],
    missing: list[str],
    unreadable: list[tuple[str, str]],
    missing_text: list[str],
) -> bool:
    problem = probe_audio(wav)
    if problem == "missing":
        missing.append(str(wav))
        return False
    if problem is not None:
        unreadable.append((str(wav), problem))
        return False
    stem = Path(name).stem
    text = _read_transcript(text_dir / f"{stem}.txt")
    if text is None:
        missing_text.append(stem)
    extra = {k: r.get(k, "") for k in _EXTRA}
    rows.append(ManifestRow(stem, wav, text or "", label, split, r.get("SpkrID") or None, extra))
    return True
