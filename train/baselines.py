"""The field's classical first rows for speech emotion recognition, on a crab-rt manifest.

- speech: openSMILE's eGeMAPSv02 functionals (88 acoustic parameters per clip: pitch, loudness,
  jitter, shimmer, spectral slopes, rates of voiced segments), standardised, and a class-balanced
  logistic regression;
- text: TF-IDF of word uni- and bigrams of the manifest's transcript, and a class-balanced logistic
  regression;
- fusion: the weighted mean of the two classifiers' probabilities (late fusion).

Each is trained on the train split; its regularisation C (and the fusion weight) is chosen by UAR on
the dev split; then it is reported on the dev and test splits with crab-rt's own metrics
(`crab_rt.train.metrics.classification_report`: WAR, UAR, macro-F1, confusion), so the rows sit beside
`crab-rt evaluate`'s. On a synthetic corpus (`crab-rt synth`: the manifest's `prosody_label` and
`text_label` columns) the report adds the corpus's ceilings on each split: the accuracy of a classifier
that knows exactly which class's prosody and cue words each clip carries (naive Bayes over the two cue
labels with the train split's statistics).

Needs the `[baselines]` extra (opensmile, scikit-learn); openSMILE runs offline from its wheel.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from crab_rt.audio import SAMPLE_RATE, load_audio
from crab_rt.data.manifest import ManifestRow, check_labels, read_manifest
from crab_rt.errors import ConfigError, ManifestError, requires_extra
from crab_rt.train.metrics import classification_report

__all__ = ["BaselineConfig", "BASELINE_NAMES", "egemaps_features", "run_baselines", "cue_ceilings",
           "format_baseline_table"]

log = logging.getLogger(__name__)

BASELINE_NAMES = ("egemaps", "tfidf", "fusion")
_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
_WEIGHT_GRID = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


@dataclass(frozen=True)
class BaselineConfig:
    """What the baselines train on and report.

    Attributes:
        labels: class names in order (every manifest label must be one of them).
        train_split / dev_split: the splits that fit and select the classifiers.
        report_splits: the splits reported.
        c_grid: the logistic regressions' inverse regularisation strengths tried on dev.
        max_audio_s: clips are cut to this length before openSMILE reads them (as training cuts them).
    """

    labels: tuple[str, ...] = ("neutral", "happy", "angry", "sad")
    train_split: str = "train"
    dev_split: str = "dev"
    report_splits: tuple[str, ...] = ("dev", "test")
    c_grid: tuple[float, ...] = _C_GRID
    max_audio_s: float = 12.0

    def validate(self) -> BaselineConfig:
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"baselines: labels must be 2 or more distinct names, got {list(self.labels)}")
        if not self.c_grid or any(c <= 0 for c in self.c_grid):
            raise ConfigError(f"baselines: c_grid must hold positive numbers, got {list(self.c_grid)}")
        if not self.report_splits:
            raise ConfigError("baselines: report_splits is empty")
        if not 0.5 <= self.max_audio_s <= 600:
            raise ConfigError(f"baselines: max_audio_s must be in [0.5, 600], got {self.max_audio_s}")
        return self


def egemaps_features(rows: Sequence[ManifestRow], max_audio_s: float = 12.0, progress: bool = False) -> np.ndarray:
    """openSMILE eGeMAPSv02 functionals of each row's audio: float64 [N, 88].

    Audio is read as crab-rt reads it (mono, 16 kHz, cut to `max_audio_s`).

    Raises:
        DependencyError: opensmile is not installed (the `[baselines]` extra).
        AudioError: a clip cannot be read.
    """
    with requires_extra("baselines", "opensmile"):
        import opensmile
    from tqdm import tqdm

    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals)
    out = []
    for row in tqdm(rows, desc="eGeMAPS", unit="clip", disable=not progress, leave=False):
        audio = load_audio(row.audio, max_seconds=max_audio_s)
        out.append(smile.process_signal(audio, SAMPLE_RATE).to_numpy(dtype=np.float64)[0])
    return np.stack(out) if out else np.zeros((0, 88))


def _fit_select(make, x_train, y_train, x_dev, y_dev, grid: Sequence[float], labels: Sequence[str]):
    """Fit one classifier per C on train; keep the best dev UAR (the smaller C on a tie)."""
    best = None
    for c in grid:
        model = make(c).fit(x_train, y_train)
        uar = classification_report(y_dev, model.predict(x_dev), labels)["uar"]
        if best is None or uar > best[0] + 1e-12:
            best = (uar, c, model)
    return best


def cue_ceilings(rows: Sequence[ManifestRow], labels: Sequence[str], train_split: str) -> dict | None:
    """The synthetic corpus's ceilings per split: reports of a classifier that knows each clip's cue classes.

    Naive Bayes over the manifest's `prosody_label` and `text_label` with the train split's class priors and
    cue confusions (add-one smoothed): "prosody" uses the prosody cue alone, "text" the cue words alone,
    "both" the two. None when the manifest has no cue columns (a real corpus).
    """
    if not rows or any("prosody_label" not in r.extra or "text_label" not in r.extra for r in rows):
        return None
    index = {lab: i for i, lab in enumerate(labels)}
    k = len(labels)
    try:
        ids = np.array([[index[r.label], index[r.extra["prosody_label"]], index[r.extra["text_label"]]]
                        for r in rows])
    except KeyError as e:
        raise ManifestError(f"cue label {e.args[0]!r} is not one of {list(labels)}") from None
    train = ids[[r.split == train_split for r in rows]]
    prior = np.bincount(train[:, 0], minlength=k) + 1.0
    log_prior = np.log(prior / prior.sum())

    def confusion(col: int) -> np.ndarray:
        m = np.ones((k, k))
        np.add.at(m, (train[:, 0], train[:, col]), 1.0)
        return np.log(m / m.sum(axis=1, keepdims=True))

    p, t = confusion(1), confusion(2)
    scores = {"prosody": log_prior + p[:, ids[:, 1]].T, "text": log_prior + t[:, ids[:, 2]].T}
    scores["both"] = scores["prosody"] + t[:, ids[:, 2]].T
    out: dict[str, dict] = {}
    for split in dict.fromkeys(r.split for r in rows):
        sel = np.array([r.split == split for r in rows])
        out[split] = {name: _short(classification_report(ids[sel, 0], s[sel].argmax(1), labels))
                      for name, s in scores.items()}
    return out


def _short(report: dict) -> dict:
    return {k: report[k] for k in ("war", "uar", "macro_f1", "confusion", "num_samples")}


def run_baselines(manifest: str | Path, config: BaselineConfig = BaselineConfig(), progress: bool = False) -> dict:
    """Train, select and report the three baselines on a manifest.

    Args:
        manifest: a crab-rt manifest with train, dev and the report splits (transcripts in `text`).
        config: labels and splits.
        progress: show a progress bar while openSMILE reads the clips.

    Returns:
        {"manifest", "config", "selected": {"egemaps": {"C"}, "tfidf": {"C"}, "fusion": {"speech_weight"}},
        "reports": {split: {name: classification report}}, "ceilings": {split: {"prosody", "text", "both"}}
        or None}.

    Raises:
        ManifestError: unknown labels, or a split with no labelled rows.
        DependencyError: the `[baselines]` extra is missing.
    """
    config = config.validate()
    with requires_extra("baselines", "sklearn"):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

    labels = list(config.labels)
    rows = [r for r in read_manifest(manifest) if r.label is not None]
    check_labels(rows, labels, str(manifest))
    splits = {s: [r for r in rows if r.split == s]
              for s in dict.fromkeys((config.train_split, config.dev_split, *config.report_splits))}
    empty = [s for s, rs in splits.items() if not rs]
    if empty:
        raise ManifestError(f"{manifest}: split(s) {', '.join(empty)} have no labelled rows")
    y = {s: np.array([labels.index(r.label) for r in rs]) for s, rs in splits.items()}
    tr, dv = config.train_split, config.dev_split

    used = [r for rs in splits.values() for r in rs]
    log.info("eGeMAPSv02 functionals of %d clips (openSMILE)...", len(used))
    features = egemaps_features(used, config.max_audio_s, progress)
    bounds = np.cumsum([0] + [len(rs) for rs in splits.values()])
    acoustic = {s: features[bounds[i]: bounds[i + 1]] for i, s in enumerate(splits)}
    texts = {s: [r.text or "" for r in rs] for s, rs in splits.items()}

    def speech_model(c: float):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))

    def text_model(c: float):
        return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                             LogisticRegression(C=c, class_weight="balanced", max_iter=5000))

    _, c_speech, speech = _fit_select(speech_model, acoustic[tr], y[tr], acoustic[dv], y[dv], config.c_grid, labels)
    _, c_text, text = _fit_select(text_model, texts[tr], y[tr], texts[dv], y[dv], config.c_grid, labels)

    def probabilities(model, x) -> np.ndarray:  # columns in label order, also when train lacks a class
        out = np.zeros((len(x), len(labels)))
        out[:, model.classes_] = model.predict_proba(x)
        return out

    probs = {s: {"egemaps": probabilities(speech, acoustic[s]), "tfidf": probabilities(text, texts[s])}
             for s in splits}
    best_w, best_uar = 0.5, -1.0
    for w in _WEIGHT_GRID:
        fused = w * probs[dv]["egemaps"] + (1 - w) * probs[dv]["tfidf"]
        uar = classification_report(y[dv], fused.argmax(1), labels)["uar"]
        if uar > best_uar + 1e-12:
            best_w, best_uar = float(w), uar
    reports: dict[str, dict] = {}
    for s in config.report_splits:
        p = probs[s]
        p["fusion"] = best_w * p["egemaps"] + (1 - best_w) * p["tfidf"]
        reports[s] = {name: classification_report(y[s], p[name].argmax(1), labels) for name in BASELINE_NAMES}
    ceilings = cue_ceilings(rows, labels, tr)
    return {
        "manifest": str(manifest),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
        "selected": {"egemaps": {"C": c_speech}, "tfidf": {"C": c_text}, "fusion": {"speech_weight": best_w}},
        "reports": reports,
        "ceilings": None if ceilings is None else {s: ceilings[s] for s in config.report_splits if s in ceilings},
    }


_TITLES = {"egemaps": "eGeMAPS + logistic regression (speech)", "tfidf": "TF-IDF + logistic regression (text)",
           "fusion": "late fusion (weighted mean)"}


def format_baseline_table(result: dict, extra_rows: dict[str, dict[str, dict]] | None = None) -> str:
    """The baselines (and any `extra_rows`: {split: {name: report}}) per split, with the ceilings if known."""
    lines = []
    for split, reports in result["reports"].items():
        rows = {_TITLES[n]: r for n, r in reports.items()}
        rows.update((extra_rows or {}).get(split, {}))
        ceilings = (result.get("ceilings") or {}).get(split)
        if ceilings:
            rows.update({f"ceiling: {n} cues known": r for n, r in ceilings.items()})
        width = max(len(n) for n in rows)
        n = next(iter(reports.values()))["num_samples"]
        head = f"{'split ' + split + f' ({n} clips)':<{width}}  {'WAR':>6}  {'UAR':>6}  {'macro-F1':>8}"
        lines += [head, "-" * len(head)]
        lines += [f"{name:<{width}}  {r['war']:>6.3f}  {r['uar']:>6.3f}  {r['macro_f1']:>8.3f}"
                  for name, r in rows.items()]
        lines.append("")
    sel = result["selected"]
    lines.append(f"selected on {result['config']['dev_split']}: eGeMAPS C={sel['egemaps']['C']:g}, "
                 f"TF-IDF C={sel['tfidf']['C']:g}, fusion speech weight {sel['fusion']['speech_weight']:.1f}")
    return "\n".join(lines) + "\n"
