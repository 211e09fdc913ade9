"""Corpus importers: IEMOCAP, MELD and MSP-Podcast 2.0 into crab-rt manifests.

Each `prepare_*` function reads the corpus in its official layout, writes one
manifest and returns a `PrepareSummary` (class counts per split beside the
paper's Table I, dropped classes, missing or unreadable files). Nothing here
downloads anything.
"""

from __future__ import annotations

from crab_rt.data.corpora.common import CorpusLayoutError, PrepareSummary
from crab_rt.data.corpora.iemocap import IEMOCAP_LABELS, iemocap_fold_splits, prepare_iemocap
from crab_rt.data.corpora.meld import MELD_LABELS, prepare_meld
from crab_rt.data.corpora.msp_podcast import (
    MSP_LABEL_TO_LETTER,
    MSP_LETTER_TO_LABEL,
    MSP_PODCAST_LABELS,
    prepare_msp_podcast,
)
from crab_rt.data.corpora.paper_counts import PAPER_CLASS_COUNTS

__all__ = [
    "CorpusLayoutError",
    "PrepareSummary",
    "IEMOCAP_LABELS",
    "MELD_LABELS",
    "MSP_PODCAST_LABELS",
    "MSP_LETTER_TO_LABEL",
    "MSP_LABEL_TO_LETTER",
    "prepare_iemocap",
    "prepare_meld",
    "prepare_msp_podcast",
    "iemocap_fold_splits",
    "PAPER_CLASS_COUNTS",
    "CORPUS_LABELS",
]

CORPUS_LABELS: dict[str, tuple[str, ...]] = {
    "iemocap": IEMOCAP_LABELS,
    "meld": MELD_LABELS,
    "msp-podcast": MSP_PODCAST_LABELS,
}
