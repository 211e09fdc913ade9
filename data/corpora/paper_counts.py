"""The Crab paper's Table I: class counts per corpus, which the importers print
beside the counts they found.

Source: `papers/crab-paper.md`, Table I. Counts use crab-rt's label names (see
the corpus modules).
"""

from __future__ import annotations

__all__ = ["PAPER_CLASS_COUNTS"]

# Table I. IEMOCAP: the paper gives totals over all five sessions (no official
# split). MELD: the official train split. MSP-Podcast 2.0: "the training
# datasets"; the paper's table has no Sad row (its proportions sum to 0.87).
PAPER_CLASS_COUNTS: dict[str, dict[str, dict[str, int]]] = {
    "iemocap": {"all": {"neutral": 1708, "happy": 1636, "angry": 1103, "sad": 1084}},
    "meld": {
        "train": {
            "neutral": 4710,
            "surprise": 1205,
            "fear": 268,
            "sadness": 683,
            "joy": 1743,
            "disgust": 271,
            "anger": 1109,
        }
    },
    "msp-podcast": {
        "train": {
            "angry": 22609,
            "happy": 37048,
            "surprise": 3220,
            "fear": 794,
            "disgust": 1324,
            "contempt": 2765,
            "neutral": 51149,
        }
    },
}
