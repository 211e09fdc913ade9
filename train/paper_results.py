"""The Crab paper's published results as data, comparison tables, and the
MSP-Podcast Test3 submission file: what evaluation compares a run with.

Source: `papers/crab-paper.md` (Tables II-VIII). Metrics are fractions in
[0, 1]. Table I's class counts describe the corpora and live with the
importers (`crab_rt.data.corpora.paper_counts`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from crab_rt.errors import ConfigError, ManifestError

__all__ = [
    "PaperResult",
    "PAPER_RESULTS",
    "ABLATION_ROWS",
    "paper_results",
    "compare_with_paper",
    "write_msp_submission",
]

@dataclass(frozen=True)
class PaperResult:
    """One published number set. `war` is accuracy; `None` where the paper gives no value."""

    table: str
    model: str
    corpus: str
    split: str
    war: float | None
    uar: float | None = None
    macro_f1: float | None = None
    note: str = ""


def _rows(table: str, corpus: str, split: str, data: Sequence[tuple], note: str = "") -> list[PaperResult]:
    return [PaperResult(table, m, corpus, split, w, u, note=note) for m, w, u in data]


PAPER_RESULTS: tuple[PaperResult, ...] = tuple(
    # Table II: main comparison (IEMOCAP: the paper states no partitions or protocol; MELD: official test split).
    _rows(
        "II",
        "iemocap",
        "test",
        [
            ("WavLM Baseline", 0.6616, 0.6832),
            ("FocalSER", 0.6676, 0.6943),
            ("MemoCMT", 0.6964, 0.7123),
            ("Medusa", 0.6605, 0.6778),
            ("Crab", 0.7348, 0.7585),
        ],
    )
    + _rows(
        "II",
        "meld",
        "test",
        [
            ("WavLM Baseline", 0.3011, 0.3046),
            ("FocalSER", 0.3751, 0.4085),
            ("MemoCMT", 0.6490, 0.4314),
            ("Medusa", 0.4303, 0.4548),
            ("Crab", 0.6257, 0.5565),
        ],
    )
    # Table III: modality ablation.
    + _rows("III", "iemocap", "test", [("Crab speech only", 0.6153, 0.6518), ("Crab text only", 0.7024, 0.7198)])
    + _rows("III", "meld", "test", [("Crab speech only", 0.3724, 0.3176), ("Crab text only", 0.6034, 0.5381)])
    # Table IV: training objectives on MELD.
    + _rows(
        "IV",
        "meld",
        "test",
        [
            ("Crab CE", 0.5797, 0.5253),
            ("Crab CE + MPCL", 0.6050, 0.5375),
            ("Crab MLS + CE", 0.6077, 0.5539),
            ("Crab MLCS w/ SCL", 0.6337, 0.5534),
            ("Crab MLCS w/o hierarchical lr", 0.5904, 0.5182),
        ],
    )
    # Table V: speech SSL backbone on MELD (WavLM rows are Crab CE / Crab).
    + _rows(
        "V",
        "meld",
        "test",
        [
            ("Crab wav2vec 2.0 Large CE", 0.6023, 0.5195),
            ("Crab wav2vec 2.0 Large MLCS", 0.6123, 0.5440),
            ("Crab HuBERT Large CE", 0.5851, 0.5229),
            ("Crab HuBERT Large MLCS", 0.6230, 0.5453),
        ],
    )
    # Table VI: SSL versions on MELD (Large rows repeat Table V).
    + _rows(
        "VI",
        "meld",
        "test",
        [
            ("Crab wav2vec 2.0 Base", 0.6115, 0.5529),
            ("Crab wav2vec 2.0 Large LV-60k", 0.6092, 0.5292),
            ("Crab HuBERT Base", 0.6126, 0.5443),
            ("Crab WavLM Base", 0.6023, 0.5470),
            ("Crab WavLM Base Plus", 0.6123, 0.5509),
        ],
    )
    # Table VII: MSP-Podcast 2.0 Test1 (seen speakers) and Test2 (unseen speakers).
    + _rows(
        "VII",
        "msp-podcast",
        "test1",
        [
            ("WavLM Baseline", 0.5131, 0.4105),
            ("FocalSER", 0.2892, 0.3360),
            ("MemoCMT", 0.6239, 0.3285),
            ("Medusa", 0.4157, 0.3549),
            ("Crab", 0.5232, 0.4390),
        ],
    )
    + _rows(
        "VII",
        "msp-podcast",
        "test2",
        [
            ("WavLM Baseline", 0.4830, 0.3131),
            ("FocalSER", 0.1981, 0.2819),
            ("MemoCMT", 0.6058, 0.2621),
            ("Medusa", 0.4226, 0.2772),
            ("Crab", 0.4861, 0.3382),
        ],
    )
    # Table VIII: MSP-Podcast 2.0 Test3 (challenge platform): accuracy and macro-F1.
    + [
        PaperResult("VIII", m, "msp-podcast", "test3", w, None, f, note)
        for m, w, f, note in [
            ("WavLM Baseline", 0.3556, 0.3293, ""),
            ("FocalSER", 0.3272, 0.3148, ""),
            ("MemoCMT", 0.3184, 0.2691, ""),
            ("Medusa", 0.3391, 0.3210, ""),
            ("StackingSER", 0.4128, 0.4094, "ensemble; platform result"),
            ("MATER", 0.4101, 0.4097, "ensemble; platform result"),
            ("ABHINAYA", 0.4181, 0.4269, "ensemble; platform result"),
            ("Crab", 0.4212, 0.4313, ""),
        ]
    ]
)

_MAIN_TABLES = {"II", "VII", "VIII"}

# Each ablation of `crab_rt.train.config.ABLATIONS` -> its own row's model name in Tables III-V (MLCS rows for the
# backbones; Table V's CE rows combine a backbone with ce_only, which is not one ablation).
ABLATION_ROWS: dict[str, str] = {
    "speech_only": "Crab speech only",
    "text_only": "Crab text only",
    "ce_only": "Crab CE",
    "ce_mpcl_classifier": "Crab CE + MPCL",
    "mls_ce": "Crab MLS + CE",
    "scl": "Crab MLCS w/ SCL",
    "single_lr": "Crab MLCS w/o hierarchical lr",
    "hubert": "Crab HuBERT Large MLCS",
    "wav2vec2": "Crab wav2vec 2.0 Large MLCS",
}
_CORPUS_ALIASES = {"msp": "msp-podcast", "msp_podcast": "msp-podcast", "msppodcast": "msp-podcast"}


def _norm_corpus(corpus: str) -> str:
    c = corpus.strip().lower()
    c = _CORPUS_ALIASES.get(c, c)
    known = sorted({r.corpus for r in PAPER_RESULTS})
    if c not in known:
        raise ConfigError(f"corpus {corpus!r} has no paper results (expected one of: {', '.join(known)})")
    return c


def _norm_split(corpus: str, split: str) -> str:
    s = split.strip().lower()
    if corpus == "iemocap":
        # Our manifests name sessions; the paper reports one IEMOCAP number and states no partitions.
        return "test"
    known = sorted({r.split for r in PAPER_RESULTS if r.corpus == corpus})
    if s not in known:
        raise ConfigError(f"split {split!r} has no paper results for {corpus} (expected one of: {', '.join(known)})")
    return s


def paper_results(corpus: str, split: str, tables: Iterable[str] | None = None) -> list[PaperResult]:
    """The paper's rows for one corpus and split.

    Args:
        corpus: "iemocap", "meld" or "msp-podcast" (aliases "msp", "msp_podcast").
        split: "test" (IEMOCAP: any split name), "test1", "test2", "test3".
        tables: keep only these table numbers ("II", "VII", ...); all when None.

    Raises:
        ConfigError: unknown corpus or split.
    """
    c = _norm_corpus(corpus)
    s = _norm_split(c, split)
    keep = None if tables is None else set(tables)
    return [r for r in PAPER_RESULTS if r.corpus == c and r.split == s and (keep is None or r.table in keep)]


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def _delta(ours: float | None, ref: float | None) -> str:
    if ours is None or ref is None:
        return "—"
    return f"{ours - ref:+.4f}"


def compare_with_paper(
    corpus: str,
    split: str,
    ours: Mapping[str, float | None],
    name: str = "ours",
    ablation: str | None = None,
) -> str:
    """Our metrics beside the paper's main-table rows (Tables II, VII, VIII) as a Markdown table.

    Args:
        corpus: "iemocap", "meld" or "msp-podcast".
        split: the evaluated split ("test", "test1", "test2", "test3").
        ours: {"war": ..., "uar": ..., "macro_f1": ...}; absent keys show as "—".
        name: the label of our row.
        ablation: the ablation (a key of `ABLATION_ROWS`) that trained the model, if any: its own
            Table III-V row is added and our difference to it shown, beside the full Crab row.

    Returns:
        Markdown text: one row per paper model, our row, and our difference to Crab (and to the
        ablation's row).

    Raises:
        ConfigError: unknown corpus, split, metric key or ablation.
    """
    if ablation and ablation not in ABLATION_ROWS:
        raise ConfigError(f"unknown ablation {ablation!r} (known: {', '.join(ABLATION_ROWS)})")
    unknown = sorted(set(ours) - {"war", "uar", "macro_f1"})
    if unknown:
        raise ConfigError(f"ours has unknown metric(s) {', '.join(unknown)} (expected war, uar, macro_f1)")
    rows = paper_results(corpus, split, tables=_MAIN_TABLES)
    own = None
    if ablation:
        own = next((r for r in paper_results(corpus, split) if r.model == ABLATION_ROWS[ablation]), None)
    c = _norm_corpus(corpus)
    title = f"{c} {split}" + (" (the paper states no IEMOCAP partitions or protocol)" if c == "iemocap" else "")
    if ablation:
        title += f", ablation {ablation}"
    lines = [
        f"**{title}**",
        "",
        "| model | WAR | UAR | macro-F1 | source |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        src = f"paper Table {r.table}" + (f" ({r.note})" if r.note else "")
        lines.append(f"| {r.model} | {_fmt(r.war)} | {_fmt(r.uar)} | {_fmt(r.macro_f1)} | {src} |")
    if own is not None:
        lines.append(f"| {own.model} | {_fmt(own.war)} | {_fmt(own.uar)} | {_fmt(own.macro_f1)} | "
                     f"paper Table {own.table} (ablation {ablation}) |")
    w, u, f = ours.get("war"), ours.get("uar"), ours.get("macro_f1")
    lines.append(f"| {name} | {_fmt(w)} | {_fmt(u)} | {_fmt(f)} | this run |")
    if own is not None:
        lines.append(f"| {name} − {own.model} | {_delta(w, own.war)} | {_delta(u, own.uar)} | "
                     f"{_delta(f, own.macro_f1)} | |")
    crab = next((r for r in rows if r.model == "Crab"), None)
    if crab is not None:
        lines.append(
            f"| {name} − Crab | {_delta(w, crab.war)} | {_delta(u, crab.uar)} | {_delta(f, crab.macro_f1)} | |"
        )
    if ablation and own is None:
        lines += ["", f"(the paper has no row for ablation {ablation} on {c} {split})"]
    return "\n".join(lines)


def write_msp_submission(ids: Sequence[str], predicted_labels: Sequence[str], path: str | Path) -> Path:
    """Write the MSP-Podcast challenge CSV for Test3.

    Format (as the challenge's baseline writes it; the paper gives none):
    header `FileName,EmoClass`, one row per file, FileName with its `.wav`
    extension, EmoClass one of the letters A S H U F D C N, rows sorted by
    FileName.

    Args:
        ids: MSP file names ("MSP-PODCAST_test3_0001.wav") or manifest ids (the
            stem; ".wav" is added).
        predicted_labels: crab-rt label names ("angry", ...) or letters ("A", ...).
        path: output CSV.

    Returns:
        The written path.

    Raises:
        ManifestError: lengths differ, an id repeats, or a label is unknown.
    """
    from crab_rt.data.corpora.msp_podcast import MSP_LABEL_TO_LETTER, MSP_LETTER_TO_LABEL

    if len(ids) != len(predicted_labels):
        raise ManifestError(f"{len(ids)} ids but {len(predicted_labels)} predicted labels")
    rows: dict[str, str] = {}
    for fid, lab in zip(ids, predicted_labels):
        name = str(fid).strip()
        if not name.lower().endswith(".wav"):
            name += ".wav"
        if lab in MSP_LETTER_TO_LABEL:
            letter = lab
        elif lab in MSP_LABEL_TO_LETTER:
            letter = MSP_LABEL_TO_LETTER[lab]
        else:
            allowed = ", ".join([*MSP_LETTER_TO_LABEL, *MSP_LABEL_TO_LETTER])
            raise ManifestError(f"{name}: unknown predicted label {lab!r} (expected one of: {allowed})")
        if name in rows:
            raise ManifestError(f"{name}: appears twice in the submission")
        rows[name] = letter
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["FileName", "EmoClass"])
        for name in sorted(rows):
            writer.writerow([name, rows[name]])
    return path
