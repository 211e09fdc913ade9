"""MELD importer: the official CSVs + dia{D}_utt{U}.mp4 clips -> manifest with
16 kHz mono WAVs extracted once into an audio cache.

Layout (MELD.Raw after unpacking train.tar.gz, dev.tar.gz, test.tar.gz):

    train_sent_emo.csv, dev_sent_emo.csv, test_sent_emo.csv
        Sr No., Utterance, Speaker, Emotion, Sentiment, Dialogue_ID, Utterance_ID,
        Season, Episode, StartTime, EndTime
    train/train_splits/dia{D}_utt{U}.mp4
    dev/dev_splits_complete/dia{D}_utt{U}.mp4
    test/output_repeated_splits_test/dia{D}_utt{U}.mp4

The CSVs and the media folders are searched for by name (a few levels deep)
under the root, so either MELD.Raw or its parent works, unpacked or flat.
Seven classes, official train/dev/test splits.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from pathlib import Path

from crab_rt.data.corpora.common import CorpusLayoutError, PrepareSummary, count_by_split, write_manifest_atomic
from crab_rt.data.manifest import ManifestRow
from crab_rt.errors import AudioError, ConfigError, ManifestError

__all__ = [
    "MELD_LABELS",
    "MELD_SPLITS",
    "MELD_CSV_NAMES",
    "MELD_MEDIA_DIRS",
    "prepare_meld",
    "read_meld_csv",
    "find_meld_files",
    "fix_meld_text",
]

MELD_LABELS: tuple[str, ...] = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
MELD_SPLITS: tuple[str, ...] = ("train", "dev", "test")
MELD_CSV_NAMES: dict[str, str] = {s: f"{s}_sent_emo.csv" for s in MELD_SPLITS}
# Official folder names first; the others are names seen in re-packaged copies.
MELD_MEDIA_DIRS: dict[str, tuple[str, ...]] = {
    "train": ("train_splits", "train"),
    "dev": ("dev_splits_complete", "dev_splits", "dev"),
    "test": ("output_repeated_splits_test", "test_splits", "test"),
}
_CSV_DEPTH = 4  # folder levels below the root searched for the CSVs
_MEDIA_DEPTH = 3  # folder levels below the CSVs' folder searched for the media folders
_CLIP = re.compile(r"^dia(\d+)_utt(\d+)\.mp4$", re.IGNORECASE)
_EXTRA_COLUMNS = ("Sentiment", "Dialogue_ID", "Utterance_ID", "Season", "Episode", "StartTime", "EndTime")
_C1 = re.compile("[\u0080-\u009f]")
_MOJIBAKE = re.compile("[\u00c2\u00c3\u00e2][\u0080-\u00bf\u0152-\u2122]")


def fix_meld_text(text: str) -> str:
    """Repair MELD's encoding damage: cp1252 bytes read as Latin-1 ("\\x92" -> "’")
    and UTF-8 read as cp1252 ("â€™" -> "’"). Clean text is returned unchanged."""
    if _C1.search(text):
        text = _C1.sub(lambda m: _c1_to_cp1252(m.group()), text)
    if _MOJIBAKE.search(text):
        try:
            text = text.encode("cp1252").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return text


def _c1_to_cp1252(ch: str) -> str:
    try:
        return bytes([ord(ch)]).decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d are undefined in cp1252
        return ""


def read_meld_csv(path: Path) -> list[dict[str, str]]:
    """Rows of one MELD CSV, decoded robustly (UTF-8, else cp1252, else Latin-1) and text-repaired.

    Raises:
        ManifestError: a required column is absent.
    """
    data = path.read_bytes()
    for enc in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            text = data.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    reader = csv.DictReader(io.StringIO(text, newline=""))
    fields = [f.strip() for f in reader.fieldnames or []]
    need = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
    absent = [c for c in need if c not in fields]
    if absent:
        raise ManifestError(f"{path}: missing MELD column(s) {', '.join(absent)} (found: {', '.join(fields)})")
    rows = []
    for raw in reader:
        row = {(k or "").strip(): fix_meld_text(v or "").strip() for k, v in raw.items() if k is not None}
        rows.append(row)
    return rows


def _walk(root: Path, depth: int):
    """(dirpath, dirnames, filenames) down to `depth` levels, hidden entries skipped."""
    root_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        level = len(Path(dirpath).parts) - root_depth
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and level < depth)
        yield Path(dirpath), dirnames, filenames


def find_meld_files(root: str | Path) -> tuple[dict[str, Path], dict[str, dict[tuple[int, int], Path]]]:
    """Locate the three CSVs and index the clips of each split's media folder.

    Returns:
        (split -> CSV path, split -> {(dialogue, utterance): mp4 path}). A split whose
        media folder is not found has an empty index.

    Raises:
        CorpusLayoutError: none of the three CSVs is under `root`.
    """
    root = Path(root)
    if not root.is_dir():
        raise CorpusLayoutError(f"{root}: not a folder (expected MELD.Raw with {', '.join(MELD_CSV_NAMES.values())})")
    csvs: dict[str, Path] = {}
    csv_to_split = {v.lower(): k for k, v in MELD_CSV_NAMES.items()}
    for dirpath, _dirnames, filenames in _walk(root, _CSV_DEPTH):
        for f in sorted(filenames):
            s = csv_to_split.get(f.lower())
            if s is not None and s not in csvs:
                csvs[s] = dirpath / f
        if len(csvs) == len(MELD_SPLITS):
            break
    if not csvs:
        raise CorpusLayoutError(
            f"{root}: does not look like MELD (expected {', '.join(MELD_CSV_NAMES.values())} "
            f"within {_CSV_DEPTH} folder levels, e.g. the MELD.Raw folder)"
        )
    media_dirs: dict[str, list[Path]] = {s: [] for s in MELD_SPLITS}
    for base in sorted({p.parent for p in csvs.values()}):
        for dirpath, dirnames, _filenames in _walk(base, _MEDIA_DEPTH):
            for d in dirnames:
                for s, names in MELD_MEDIA_DIRS.items():
                    if d.lower() in names:
                        media_dirs[s].append(dirpath / d)
    index: dict[str, dict[tuple[int, int], Path]] = {}
    for s in MELD_SPLITS:
        # Prefer the official name; a generic "train"/"dev"/"test" folder only counts if it holds clips.
        found: dict[tuple[int, int], Path] = {}
        for name in MELD_MEDIA_DIRS[s]:
            for d in (p for p in media_dirs[s] if p.name.lower() == name):
                for f in os.listdir(d):
                    m = _CLIP.match(f)
                    if m and not f.startswith("."):
                        found.setdefault((int(m.group(1)), int(m.group(2))), d / f)
            if found:
                break
        index[s] = found
    if not any(index.values()):
        where = ", ".join(sorted({str(p.parent) for p in csvs.values()}))
        raise CorpusLayoutError(
            f"{where}: MELD CSVs found but no clips (expected dia*_utt*.mp4 in "
            f"{', '.join(names[0] + '/' for names in MELD_MEDIA_DIRS.values())}; "
            "unpack train.tar.gz, dev.tar.gz and test.tar.gz next to the CSVs)"
        )
    return csvs, index


def _extract(mp4: Path, wav: Path) -> None:
    from crab_rt.audio import load_audio, write_wav

    audio = load_audio(mp4)
    tmp = wav.with_name(wav.stem + ".part.wav")
    write_wav(tmp, audio)
    os.replace(tmp, wav)


def prepare_meld(
    root: str | Path,
    out: str | Path,
    audio_cache: str | Path | None = None,
    progress: bool = True,
    workers: int = 1,
) -> PrepareSummary:
    """Build the 7-class MELD manifest, extracting each clip's audio once.

    Args:
        root: MELD.Raw (or a folder containing it).
        out: manifest path (.csv or .jsonl). Extra columns: Sentiment, Dialogue_ID,
            Utterance_ID, Season, Episode, StartTime, EndTime, media (the source mp4).
        audio_cache: where the 16 kHz mono WAVs go (`<split>/dia{D}_utt{U}.wav`);
            default `<out folder>/meld_wav`. A non-empty WAV already there is reused.
        progress: show a tqdm bar while extracting.
        workers: clips decoded in parallel (threads; FFmpeg and soxr release the GIL).

    Returns:
        The summary: counts per split, dropped emotions, missing clips and clips
        that cannot be decoded (their rows are left out of the manifest).

    Raises:
        CorpusLayoutError: `root` does not look like MELD.
        ManifestError: a CSV lacks a required column.
        ConfigError: `workers` < 1.
    """
    from concurrent.futures import ThreadPoolExecutor

    from crab_rt.errors import requires_extra

    with requires_extra("data", "tqdm"):
        from tqdm import tqdm

    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    csvs, index = find_meld_files(root)
    out = Path(out)
    cache = Path(audio_cache) if audio_cache is not None else out.parent / "meld_wav"
    dropped: Counter = Counter()
    missing: list[str] = []
    unreadable: list[tuple[str, str]] = []
    notes: list[str] = []
    jobs: list[tuple[ManifestRow, Path, Path]] = []
    for split in MELD_SPLITS:
        if split not in csvs:
            notes.append(f"warning: {MELD_CSV_NAMES[split]} not found; split {split!r} is absent")
            continue
        if not index[split]:
            notes.append(
                f"warning: no media folder with clips for split {split!r} "
                f"(looked for {', '.join(MELD_MEDIA_DIRS[split])})"
            )
        media_hint = MELD_MEDIA_DIRS[split][0]
        for n, r in enumerate(read_meld_csv(csvs[split]), start=2):
            label = r.get("Emotion", "").strip().lower()
            if label not in MELD_LABELS:
                dropped[label or "(empty)"] += 1
                continue
            try:
                d, u = int(r["Dialogue_ID"]), int(r["Utterance_ID"])
            except ValueError as e:
                raise ManifestError(f"{csvs[split]}:{n}: bad Dialogue_ID/Utterance_ID ({e})") from e
            clip = f"dia{d}_utt{u}"
            mp4 = index[split].get((d, u))
            if mp4 is None:
                missing.append(f"{split}: {media_hint}/{clip}.mp4")
                continue
            wav = cache / split / f"{clip}.wav"
            extra = {k: r.get(k, "") for k in _EXTRA_COLUMNS}
            extra["media"] = str(mp4)
            row = ManifestRow(
                f"{split}_{clip}", wav, r.get("Utterance", ""), label, split, r.get("Speaker") or None, extra
            )
            jobs.append((row, mp4, wav))
    rows: list[ManifestRow] = []
    todo = [j for j in jobs if not (j[2].is_file() and j[2].stat().st_size > 0)]
    failed: set[str] = set()

    def job(item: tuple[ManifestRow, Path, Path]) -> str | None:
        _row, mp4, wav = item
        try:
            _extract(mp4, wav)
        except AudioError as e:
            # The message names the file (sometimes twice); keep only the reason.
            return str(e).replace(f": '{mp4}'", "").removeprefix(f"{mp4}: ")
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(job, todo)
        bar = tqdm(results, total=len(todo), desc="MELD audio", unit="clip", disable=not progress or not todo)
        for (row, mp4, _wav), reason in zip(todo, bar):
            if reason is not None:
                unreadable.append((str(mp4), reason))
                failed.add(row.id)
    rows = [row for row, _, _ in jobs if row.id not in failed]
    if len(todo) < len(jobs):
        notes.append(f"reused {len(jobs) - len(todo)} cached WAVs from {cache}")
    write_manifest_atomic(out, rows)
    from crab_rt.data.corpora.paper_counts import PAPER_CLASS_COUNTS

    return PrepareSummary(
        corpus="meld",
        manifest=out,
        labels=MELD_LABELS,
        counts=count_by_split(rows, [s for s in MELD_SPLITS if s in csvs]),
        dropped=dict(dropped),
        missing=missing,
        unreadable=unreadable,
        paper_counts=PAPER_CLASS_COUNTS["meld"],
        notes=notes,
    )
