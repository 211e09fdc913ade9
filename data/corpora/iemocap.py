"""IEMOCAP importer: EmoEvaluation labels + transcriptions + sentence WAVs -> manifest.

Layout (the official release, `IEMOCAP_full_release/`):

    Session1..5/dialog/EmoEvaluation/<dialog>.txt
        "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]" (+ per-annotator lines)
    Session1..5/dialog/transcriptions/<dialog>.txt
        "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me."
    Session1..5/sentences/wav/<dialog>/<turn>.wav

Four classes (the paper's protocol): neutral, happy (hap + exc merged), angry,
sad. Every other code (fru, sur, fea, dis, oth, xxx) is dropped and counted.
The manifest's split column is the session ("Session1".."Session5"); a
training config picks folds with `iemocap_fold_splits`.
"""

from __future__ import annotations

import re
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
from crab_rt.errors import ConfigError

__all__ = [
    "IEMOCAP_LABELS",
    "IEMOCAP_CODE_TO_LABEL",
    "IEMOCAP_SESSIONS",
    "prepare_iemocap",
    "iemocap_fold_splits",
    "parse_emo_evaluation",
    "parse_transcription",
    "find_iemocap_root",
]

IEMOCAP_LABELS: tuple[str, ...] = ("neutral", "happy", "angry", "sad")
IEMOCAP_CODE_TO_LABEL: dict[str, str] = {
    "neu": "neutral",
    "hap": "happy",
    "exc": "happy",
    "ang": "angry",
    "sad": "sad",
}
IEMOCAP_SESSIONS: tuple[str, ...] = tuple(f"Session{i}" for i in range(1, 6))

_HEADER = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(Ses\w+)\s+(\w+)\s+\[([^\]]*)\]")
_TRANSCRIPT = re.compile(r"^(Ses\w+)\s+\[[^\]]*\]:\s?(.*)$")


def parse_emo_evaluation(path: Path) -> list[dict[str, str]]:
    """The turn header lines of one EmoEvaluation file.

    Per-annotator lines ("C-E1:", "A-E2:"), "%" lines and blank lines are ignored.

    Returns:
        One dict per turn: turn, code, start_s, end_s, val, act, dom (as strings).
    """
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _HEADER.match(line)
        if not m:
            continue
        start, end, turn, code, vad = m.groups()
        parts = [p.strip() for p in vad.split(",")]
        val, act, dom = (parts + ["", "", ""])[:3]
        out.append(
            {"turn": turn, "code": code.lower(), "start_s": start, "end_s": end, "val": val, "act": act, "dom": dom}
        )
    return out


def parse_transcription(path: Path) -> dict[str, str]:
    """turn -> text for one transcription file (lines without a turn id, e.g. "M: [BREATHING]", are skipped)."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _TRANSCRIPT.match(line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _speaker(turn: str) -> str:
    # "Ses01F_impro01_F000" -> "Ses01F"; "Ses01M_script01_1_F012" -> "Ses01F": the
    # speaker's gender is the first letter of the last "_"-separated part.
    return turn[:5] + turn.rsplit("_", 1)[-1][:1].upper()


def find_iemocap_root(root: str | Path) -> Path:
    """The folder holding Session1..5 (`root` itself or `root/IEMOCAP_full_release`).

    Raises:
        CorpusLayoutError: no Session*/dialog/EmoEvaluation/*.txt under either.
    """
    root = Path(root)
    for cand in (root, root / "IEMOCAP_full_release"):
        if any(visible_files(cand / s / "dialog" / "EmoEvaluation", "*.txt") for s in IEMOCAP_SESSIONS):
            return cand
    raise CorpusLayoutError(
        f"{root}: does not look like IEMOCAP (expected Session1..Session5/dialog/EmoEvaluation/*.txt, "
        "e.g. the IEMOCAP_full_release folder)"
    )


def prepare_iemocap(root: str | Path, out: str | Path) -> PrepareSummary:
    """Build the 4-class IEMOCAP manifest (split = session).

    Args:
        root: IEMOCAP_full_release (or its parent).
        out: manifest path (.csv or .jsonl). Extra columns: start_s, end_s, val, act, dom, code.

    Returns:
        The summary: counts per session, dropped codes, missing/unreadable WAVs
        (their rows are left out of the manifest), turns without transcript.

    Raises:
        CorpusLayoutError: `root` does not look like IEMOCAP.
    """
    base = find_iemocap_root(root)
    out = Path(out)
    rows: list[ManifestRow] = []
    dropped: Counter = Counter()
    missing: list[str] = []
    unreadable: list[tuple[str, str]] = []
    missing_text: list[str] = []
    for session in IEMOCAP_SESSIONS:
        sdir = base / session
        for evf in visible_files(sdir / "dialog" / "EmoEvaluation", "*.txt"):
            dialog = evf.stem
            texts = parse_transcription(sdir / "dialog" / "transcriptions" / f"{dialog}.txt")
            for t in parse_emo_evaluation(evf):
                label = IEMOCAP_CODE_TO_LABEL.get(t["code"])
                if label is None:
                    dropped[t["code"]] += 1
                    continue
                wav = sdir / "sentences" / "wav" / dialog / f"{t['turn']}.wav"
                problem = probe_audio(wav)
                if problem == "missing":
                    missing.append(str(wav))
                    continue
                if problem is not None:
                    unreadable.append((str(wav), problem))
                    continue
                text = texts.get(t["turn"])
                if text is None:
                    missing_text.append(t["turn"])
                extra = {k: t[k] for k in ("start_s", "end_s", "val", "act", "dom", "code")}
                rows.append(ManifestRow(t["turn"], wav, text or "", label, session, _speaker(t["turn"]), extra))
    write_manifest_atomic(out, rows)
    from crab_rt.data.corpora.paper_counts import PAPER_CLASS_COUNTS

    return PrepareSummary(
        corpus="iemocap",
        manifest=out,
        labels=IEMOCAP_LABELS,
        counts=count_by_split(rows, IEMOCAP_SESSIONS),
        dropped=dict(dropped),
        missing=missing,
        unreadable=unreadable,
        missing_text=missing_text,
        paper_counts=PAPER_CLASS_COUNTS["iemocap"],
        notes=["paper counts are totals over all five sessions (compare with the 'total' column)"],
    )


def iemocap_fold_splits(test_session: int, dev: str = "test") -> dict[str, list[str]]:
    """Leave-one-session-out fold: which manifest splits (sessions) train, validate and test.

    IEMOCAP has no official split. A common protocol in the literature trains on
    four sessions and tests on the fifth; the Crab paper states no protocol for
    its IEMOCAP numbers (it only notes that IEMOCAP has no official partitions),
    nor what it selected checkpoints on, so this fold is crab-rt's choice.

    Args:
        test_session: 1..5, the held-out session.
        dev: "test" (default): dev = the held-out session, train = the other four.
            This keeps all four sessions for training and matches the common
            protocol, but checkpoint selection then sees the test session, so the
            score is optimistic. "next": dev = the following session (5 -> 1),
            train = the remaining three; an unbiased estimate with less training data.

    Returns:
        {"train": [...], "dev": [...], "test": [...]} of "SessionN" names.

    Raises:
        ConfigError: `test_session` outside 1..5 or unknown `dev`.
    """
    if not isinstance(test_session, int) or not 1 <= test_session <= 5:
        raise ConfigError(f"test_session must be an integer in 1..5, got {test_session!r}")
    test = f"Session{test_session}"
    others = [s for s in IEMOCAP_SESSIONS if s != test]
    if dev == "test":
        return {"train": others, "dev": [test], "test": [test]}
    if dev == "next":
        dev_s = f"Session{test_session % 5 + 1}"
        return {"train": [s for s in others if s != dev_s], "dev": [dev_s], "test": [test]}
    raise ConfigError(f"dev must be 'test' or 'next', got {dev!r}")
