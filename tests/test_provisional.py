"""Emotion before the words: the voice-only classifier (trained beside Crab, exported, run by every backend), the
provisional events of the pipeline and of `crab-rt listen`, and calibrated confidence (temperature scaling, ECE)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from crab_rt.cli import main  # noqa: E402
from crab_rt.errors import ConfigError  # noqa: E402
from crab_rt.train.calibration import (  # noqa: E402
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    reliability_diagram,
    softmax,
)

JFK_UTTERANCES = 4  # samples/jfk.flac as the default segmenter cuts it


# ---- calibration ----------------------------------------------------------------------------------------------
def test_ece_of_four_predictions_by_hand():
    # Confidences 0.9 (right), 0.8 (wrong), 0.6 (right), 0.7 (right), each alone in one of 15 bins:
    # ECE = (|1 - 0.9| + |0 - 0.8| + |1 - 0.6| + |1 - 0.7|) / 4 = 0.4.
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)
    filled = [b for b in reliability_bins(probs, labels) if b["count"]]
    assert [(b["count"], b["accuracy"]) for b in filled] == [(1, 1.0), (1, 1.0), (1, 0.0), (1, 1.0)]
    # Unlabelled rows (-1) are left out; two in one bin (0.8, 1.0] of 5 average: |1/2 - 0.9| = 0.4.
    assert expected_calibration_error(np.array([[0.85, 0.15], [0.95, 0.05], [0.5, 0.5]]), np.array([0, 1, -1]),
                                      bins=5) == pytest.approx(0.4)
    assert expected_calibration_error(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 0.0


def test_fitted_temperature_recovers_the_one_that_made_the_labels():
    """Labels drawn from softmax(z / 2.5): logits z are over-confident by 2.5x, and the fit finds T near 2.5,
    which makes the probabilities calibrated (ECE down) without changing a single argmax."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 4.0, size=(20000, 4))
    truth = softmax(logits, 2.5)
    labels = np.array([rng.choice(4, p=p / p.sum()) for p in truth.astype(np.float64)])
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(2.5, rel=0.05)
    summary = calibration_summary(logits, labels, temperature)
    assert summary["ece_after"] < 0.02 < 0.1 < summary["ece_before"]
    assert summary["nll_after"] < summary["nll_before"]
    assert (softmax(logits, temperature).argmax(1) == logits.argmax(1)).all()
    with pytest.raises(ValueError, match="no labelled rows"):
        fit_temperature(logits[:3], np.array([-1, -1, -1]))


def test_reliability_diagram_is_a_png(tmp_path):
    probs = softmax(np.random.default_rng(1).normal(size=(200, 4)) * 3)
    labels = np.random.default_rng(2).integers(0, 4, 200)
    path = reliability_diagram({"before": (probs, labels), "after": (softmax(np.log(probs), 3.0), labels)},
                               tmp_path / "r.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


# ---- training -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_voice_classifier_leaves_crab_training_unchanged(tiny_recipe, tmp_path):
    """The same recipe with and without the voice-only classifier: Crab's weights, losses and dev metrics are
    bit for bit the same (its input is detached, its optimizer its own, its initialisation from its own seed);
    the classifier itself trained, and best.pt carries both temperatures fitted on dev."""
    from crab_rt.train.config import load_recipe
    from crab_rt.train.distributed import World
    from crab_rt.train.trainer import Trainer

    runs = {}
    for voice in (True, False):
        config = load_recipe(str(tiny_recipe), [f"run.out_dir='{tmp_path / str(voice)}'", "optim.epochs=1",
                                                f"model.speech_classifier={'true' if voice else 'false'}"])
        trainer = Trainer(config, world=World())
        initial = None if not voice else {k: v.clone() for k, v in trainer.model.speech_classifier.state_dict().items()}
        trainer.fit()
        runs[voice] = (trainer, initial)
    on, off = runs[True][0], runs[False][0]
    crab = off.model.state_dict()
    with_voice = on.model.state_dict()
    assert set(with_voice) - set(crab) == {k for k in with_voice if k.startswith("speech_classifier.")} != set()
    for key, value in crab.items():
        assert torch.equal(value, with_voice[key]), key
    for key in ("train_loss", "train_ce", "train_legs", "dev_war", "dev_uar", "dev_macro_f1"):
        assert on.history[0][key] == off.history[0][key], key
    assert on.history[0]["train_voice_ce"] > 0 and 0 <= on.history[0]["dev_voice_uar"] <= 1
    trained = on.model.speech_classifier.state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in runs[True][1].items())
    best = torch.load(tmp_path / "True" / "best.pt", weights_only=False)
    assert set(best["calibration"]) == {"split", "head", "speech_classifier"}
    assert "voice_best" not in best  # the speech encoder trains: the classifier stays that of Crab's best epoch
    for entry in (best["calibration"]["head"], best["calibration"]["speech_classifier"]):
        assert 0.05 <= entry["temperature"] <= 20 and entry["num_samples"] == 10
        assert entry["nll_after"] <= entry["nll_before"] + 1e-9  # the fit minimises it
    assert set(torch.load(tmp_path / "False" / "best.pt", weights_only=False)["calibration"]) == {"split", "head"}


# ---- export and backends --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calibrated_bundle(tiny_model_parts, tmp_path_factory):
    """The tiny model exported with parity checks, its checkpoint carrying temperatures 0.5 (head) and 2.0 (voice)."""
    from crab_rt.export.bundle_writer import ExportOptions, export_bundle
    from crab_rt.train.checkpoint import save_checkpoint

    model, tokenizer = tiny_model_parts
    root = tmp_path_factory.mktemp("calibrated")
    calibration = {"split": "dev", "head": {"temperature": 0.5, "ece_before": 0.2, "ece_after": 0.1},
                   "speech_classifier": {"temperature": 2.0}}
    ckpt = save_checkpoint(root / "model.pt", model, tokenizer, {"max_audio_s": 12.0, "max_text_tokens": 32},
                           calibration=calibration)
    return export_bundle(ckpt, root / "bundle", ExportOptions(incremental_speech=False, cpu_int8=False))


def test_export_writes_the_voice_graph_checks_its_parity_and_records_the_temperatures(calibrated_bundle):
    manifest = json.loads((calibrated_bundle / "manifest.json").read_text())
    assert list(manifest["graphs"]) == ["speech_encoder", "speech_classifier", "text_encoder", "head"]
    assert manifest["graphs"]["speech_classifier"]["fp32"]["outputs"]["probabilities"]["shape"] == ["batch", 4]
    assert manifest["provenance"]["parity"]["speech_classifier"] < 1e-4
    assert manifest["calibration"] == {"split": "dev", "head": {"temperature": 0.5, "ece_before": 0.2,
                                                                 "ece_after": 0.1},
                                       "speech_classifier": {"temperature": 2.0}}


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_every_backend_applies_the_temperatures(calibrated_bundle, jfk, backend):
    from crab_rt.runtime.emotion_model import EmotionModel

    model = EmotionModel.load(calibrated_bundle, backend)
    assert model.has_voice and model.temperatures == {"head": 0.5, "speech_classifier": 2.0}
    audios = [jfk[:32000], jfk[40000:72000]]
    speech = model.encode_speech(audios)
    text = model.encode_text(["and so my fellow americans", "ask not"])
    probs = model.classify(speech, text)
    assert speech[0].length == speech[1].length  # two 2 s clips: no padding to build below
    raw = model.sessions["speech_classifier"].run({"speech_hidden": np.stack([f.hidden for f in speech]),
                                                   "speech_mask": np.ones((2, speech[0].length), dtype=np.int64)})
    voice = model.classify_voice(speech)
    np.testing.assert_allclose(voice, softmax(raw["logits"], 2.0), atol=1e-6)
    assert not np.allclose(voice, raw["probabilities"], atol=1e-3)  # the temperature changed them
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    if backend == "onnxruntime":  # the same numbers from the torch backend (parity of the whole chain)
        reference = EmotionModel.load(calibrated_bundle, "torch")
        np.testing.assert_allclose(probs, reference.classify(reference.encode_speech(audios),
                                                             reference.encode_text(["and so my fellow americans",
                                                                                    "ask not"])), atol=1e-4)
        np.testing.assert_allclose(voice, reference.classify_voice(reference.encode_speech(audios)), atol=1e-4)


def test_a_bad_temperature_is_one_line(calibrated_bundle, tmp_path):
    from crab_rt.bundle import load_bundle
    from crab_rt.errors import BundleError

    broken = shutil.copytree(calibrated_bundle, tmp_path / "b")
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["calibration"]["head"]["temperature"] = -1
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="calibration temperature of head must be a positive number, got -1"):
        load_bundle(broken)


# ---- provisional events ---------------------------------------------------------------------------------------
def _events(bundle, audio, **config):
    from crab_rt.runtime.pipeline import Pipeline, PipelineConfig

    with Pipeline(bundle, PipelineConfig(asr=None, backend="onnxruntime", **config)) as pipeline:
        got = []
        stream = pipeline.create_stream("s", on_event=got.append)
        stream.accept(audio)
        stream.flush()
        stream.wait()
        return got, stream


def test_pipeline_sends_each_utterances_provisional_event_before_its_final_one(calibrated_bundle, jfk):
    events, stream = _events(calibrated_bundle, jfk, provisional=True)
    provisional = [e for e in events if e.stage == "provisional"]
    final = [e for e in events if e.stage == "final"]
    assert [e.utterance_id for e in final] == [e.utterance_id for e in provisional] == list(range(JFK_UTTERANCES))
    for p in provisional:
        f = final[p.utterance_id]
        assert events.index(p) < events.index(f)
        assert (p.start_s, p.end_s, p.text, p.text_flagged) == (f.start_s, f.end_s, "", False)
        assert set(p.latency_ms) == {"end_to_event", "queue_wait", "speech_encoder", "speech_classifier"}
        assert p.latency_ms["end_to_event"] <= f.latency_ms["end_to_event"]
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert stream.emitted == JFK_UTTERANCES  # final events; provisional ones are counted apart
    # Off by default: final events only, the same ones.
    plain, _ = _events(calibrated_bundle, jfk)
    assert [e.stage for e in plain] == ["final"] * JFK_UTTERANCES
    for a, b in zip(plain, final):  # the same (batches may differ: float rounding)
        assert a.label == b.label and a.probabilities == pytest.approx(b.probabilities, abs=1e-5)


def test_min_confidence_marks_events_abstained_and_keeps_their_labels(calibrated_bundle, jfk):
    sure, _ = _events(calibrated_bundle, jfk, provisional=True)
    unsure, _ = _events(calibrated_bundle, jfk, provisional=True, min_confidence=0.99)
    assert not any(e.abstained for e in sure)
    def labels(events):  # by utterance and stage: how provisional and final events interleave depends on timing
        return sorted((e.utterance_id, e.stage, e.label) for e in events)

    assert all(e.abstained for e in unsure) and labels(unsure) == labels(sure)
    with pytest.raises(ConfigError, match="min_confidence must be a probability in"):
        _events(calibrated_bundle, jfk, min_confidence=1.5)


def test_provisional_needs_the_voice_classifier(calibrated_bundle, tmp_path, capsys, jfk):
    voiceless = shutil.copytree(calibrated_bundle, tmp_path / "voiceless")
    manifest = json.loads((voiceless / "manifest.json").read_text())
    del manifest["graphs"]["speech_classifier"]
    (voiceless / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="provisional events need the bundle's voice-only classifier"):
        _events(voiceless, jfk, provisional=True)
    events, _ = _events(voiceless, jfk)  # final events as before
    assert len(events) == JFK_UTTERANCES
    code = main(["listen", "--bundle", str(voiceless), "--input", "samples/jfk.flac", "--no-asr", "--provisional"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("crab-rt: error: ") and "voice-only classifier" in err[-1]


def test_listen_provisional_prints_both_stages_provisional_first(calibrated_bundle, capsys):
    code = main(["listen", "--bundle", str(calibrated_bundle), "--input", "samples/jfk.flac", "--no-asr",
                 "--provisional", "--backend", "onnxruntime"])
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(lines) == 2 * JFK_UTTERANCES
    for n in range(JFK_UTTERANCES):
        stages = [line["stage"] for line in lines if line["utterance_id"] == n]
        assert stages == ["provisional", "final"]
    assert "(provisional events)" in err  # the summary has their end-to-event line
    main(["listen", "--bundle", str(calibrated_bundle), "--input", "samples/jfk.flac", "--no-asr", "--provisional",
          "--format", "pretty", "-q"])
    pretty = capsys.readouterr().out.splitlines()
    assert sum("(provisional: voice only)" in line for line in pretty) == JFK_UTTERANCES


@pytest.mark.slow
def test_best_pt_holds_the_voice_classifier_of_its_own_best_dev_epoch(tiny_recipe, tmp_path):
    """With a frozen speech encoder, Crab's weights in best.pt are from Crab's best dev epoch and the voice-only
    classifier's from its own (a training encoder keeps Crab's epoch: the first test): evaluated
    again on dev, best.pt's voice classifier scores the UAR of the epoch it names, and its temperature is fitted
    on that epoch's dev logits."""
    from crab_rt.data.manifest import read_manifest
    from crab_rt.model.checkpoint import load_model
    from crab_rt.train.calibration import calibration_summary, fit_temperature
    from crab_rt.train.config import load_recipe
    from crab_rt.train.distributed import World
    from crab_rt.train.evaluate import predict_logits
    from crab_rt.train.metrics import classification_report
    from crab_rt.train.trainer import Trainer

    config = load_recipe(str(tiny_recipe), [f"run.out_dir='{tmp_path}'", "optim.epochs=4",
                                            "model.freeze_speech_encoder=true"])
    trainer = Trainer(config, world=World())
    trainer.fit()
    history = [h["dev_voice_uar"] for h in trainer.history]
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    assert best["voice_best"]["epoch"] == 1 + history.index(max(history))
    assert best["voice_best"]["value"] == max(history)
    model, tokenizer, payload = load_model(tmp_path / "best.pt")
    rows = [r for r in read_manifest(config.data.manifest, ["dev"]) if r.label is not None]
    labels, logits, voice = predict_logits(model, tokenizer, rows, payload["model_settings"]["max_audio_s"])
    assert classification_report(labels.tolist(), voice.argmax(1).tolist(), model.labels)["uar"] == max(history)
    uars = [h["dev_uar"] for h in trainer.history]
    assert best["best"]["epoch"] == 1 + uars.index(max(uars))
    assert classification_report(labels.tolist(), logits.argmax(1).tolist(), model.labels)["uar"] == max(uars)
    fitted = best["calibration"]["speech_classifier"]
    expected = calibration_summary(voice, labels, fit_temperature(voice, labels))
    assert fitted["temperature"] == pytest.approx(expected["temperature"], rel=1e-4)
