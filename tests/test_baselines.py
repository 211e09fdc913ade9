"""The classical baselines (`crab-rt baseline`) and the regression that the speech branch hears emotion."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crab_rt.cli import main
from crab_rt.data.manifest import read_manifest

pytest.importorskip("sklearn")
pytest.importorskip("opensmile")


@pytest.fixture(scope="module")
def baseline_result(synthetic_corpus):
    from crab_rt.train.baselines import BaselineConfig, run_baselines

    return run_baselines(synthetic_corpus, BaselineConfig(report_splits=("train", "dev", "test")))


def test_egemaps_features_are_88_functionals_that_follow_the_voice(synthetic_corpus):
    from crab_rt.train.baselines import egemaps_features

    rows = [r for r in read_manifest(synthetic_corpus) if r.split == "train"]
    sad = [r for r in rows if r.extra["prosody_label"] == "sad"][:6]
    happy = [r for r in rows if r.extra["prosody_label"] == "happy"][:6]
    features = egemaps_features(sad + happy)
    assert features.shape == (12, 88) and np.isfinite(features).all()
    # Column 0 is F0semitoneFrom27.5Hz_sma3nz_amean: the corpus speaks "happy" well above "sad" (pitch 70 vs 22).
    assert features[6:, 0].mean() > features[:6, 0].mean() + 2.0


def test_report_fields_and_selection(baseline_result, synthetic_corpus):
    result = baseline_result
    assert set(result["reports"]) == {"train", "dev", "test"}
    for split, reports in result["reports"].items():
        assert set(reports) == {"egemaps", "tfidf", "fusion"}
        n = sum(r.split == split for r in read_manifest(synthetic_corpus))
        for report in reports.values():
            assert report["num_samples"] == n
            assert 0.0 <= report["uar"] <= 1.0 and np.array(report["confusion"]).sum() == n
    assert result["selected"]["egemaps"]["C"] in result["config"]["c_grid"]
    assert 0.0 <= result["selected"]["fusion"]["speech_weight"] <= 1.0
    # The classifiers are fitted: the training sentences' words and voices separate the classes. (On this
    # 140-clip train split the test sentences' cue words are often unseen: TF-IDF's test UAR is near chance.)
    assert result["reports"]["train"]["tfidf"]["uar"] > 0.8
    assert result["reports"]["train"]["egemaps"]["uar"] > 0.6
    # Chance is 0.25; eGeMAPS hears the held-out speakers' prosody (0.70 here, 0.67-0.69 on the demo's corpora).
    assert result["reports"]["test"]["egemaps"]["uar"] > 0.45


def test_ceilings_from_the_cue_labels(baseline_result, synthetic_corpus):
    from crab_rt.train.baselines import cue_ceilings

    ceilings = baseline_result["ceilings"]
    assert set(ceilings) == {"train", "dev", "test"} and set(ceilings["test"]) == {"prosody", "text", "both"}
    rows = read_manifest(synthetic_corpus)
    test = [r for r in rows if r.split == "test"]
    # Knowing the prosody class and guessing it is (nearly) the accuracy of the prosody cue itself.
    agree = np.mean([r.extra["prosody_label"] == r.label for r in test])
    assert ceilings["test"]["prosody"]["war"] == pytest.approx(agree, abs=0.1)
    # A real corpus has no cue columns: no ceilings.
    plain = [type(r)(r.id, r.audio, r.text, r.label, r.split, r.speaker, {}) for r in rows]
    assert cue_ceilings(plain, ["neutral", "happy", "angry", "sad"], "train") is None


def test_cli_table_json_and_errors(synthetic_corpus, tmp_path, capsys):
    code = main(["baseline", "--manifest", str(synthetic_corpus), "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    for text in ("eGeMAPS + logistic regression (speech)", "TF-IDF + logistic regression (text)",
                 "late fusion", "ceiling: both cues known", "split test", "selected on dev"):
        assert text in out, text
    saved = json.loads((tmp_path / "baselines.json").read_text())
    assert saved["reports"]["test"]["egemaps"]["num_samples"] > 0 and saved["crab"] == {"dev": {}, "test": {}}
    assert main(["baseline", "--manifest", str(synthetic_corpus), "--labels", "happy,sad"]) == 2
    assert "unknown label" in capsys.readouterr().err
    assert main(["baseline", "--manifest", str(tmp_path / "absent.csv")]) == 2
    assert "manifest not found" in capsys.readouterr().err


@pytest.mark.slow
def test_speech_only_ablation_leaves_chance(synthetic_corpus, tmp_path):
    """The regression of issue 24: the synthetic recipe's speech-only Crab predicted one class (UAR 0.25).

    With Whisper tiny.en's frozen encoder it hears the corpus's prosody. Chance UAR is 0.25; on these
    30-clip dev and test splits a guesser's UAR has a standard deviation near 0.08, so 0.40 on both is
    about 2 of those above chance (p < 0.05 for a guesser on each). The recipe's 20 epochs take about 10 s
    here (the frozen encoder runs once per clip) and reach dev 0.60, test 0.51 on the 2-core EPYC.
    """
    pytest.importorskip("torch")
    from crab_rt.errors import BackendError
    from crab_rt.runtime.asr import resolve_model
    from crab_rt.train.config import load_recipe
    from crab_rt.train.evaluate import evaluate_checkpoint
    from crab_rt.train.trainer import Trainer

    try:
        resolve_model("tiny.en")
    except BackendError as e:
        pytest.skip(f"Whisper tiny.en is not available offline: {e}")
    config = load_recipe("synthetic", [f"data.manifest='{synthetic_corpus}'", f"run.out_dir='{tmp_path}'",
                                       "run.progress=false"], ablation="speech_only")
    trainer = Trainer(config)
    best = trainer.fit()
    assert trainer.train_states is not None  # the frozen encoder ran once per clip
    assert best["value"] >= 0.40, best
    test = evaluate_checkpoint(tmp_path / "best.pt", synthetic_corpus, ["test"], tmp_path / "eval")
    print(f"speech-only UAR: dev {best['value']:.3f}, test {test['uar']:.3f}")
    assert test["uar"] >= 0.40, test["uar"]
    assert (np.array(test["confusion"]).sum(axis=0) > 0).sum() >= 3  # it predicts most classes, not one
