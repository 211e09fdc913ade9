"""Export stage: ONNX graphs, parity, fp16 variant, manifest and the `crab-rt export` CLI."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from crab_rt.bundle import BUNDLE_FORMAT_VERSION, load_bundle, sha256_file  # noqa: E402
from crab_rt.cli import main  # noqa: E402
from crab_rt.errors import BundleError, ConfigError  # noqa: E402
from crab_rt.features import pad_waveforms  # noqa: E402

MAX_TEXT_TOKENS = 32


def _save_checkpoint(path: Path, model, tokenizer) -> Path:
    from crab_rt.train.checkpoint import save_checkpoint

    return save_checkpoint(path, model, tokenizer, {"max_audio_s": 12.0, "max_text_tokens": MAX_TEXT_TOKENS})


@pytest.fixture(scope="module")
def checkpoint(tiny_model_parts, tmp_path_factory) -> Path:
    model, tokenizer = tiny_model_parts
    return _save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", model, tokenizer)


@pytest.fixture(scope="module")
def bundle_dir(checkpoint, tmp_path_factory) -> Path:
    """One fp16 export (fp32 graphs are always written too) shared by the module."""
    from crab_rt.export.bundle_writer import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    return export_bundle(checkpoint, out, ExportOptions(precision="fp16", asr_model="tiny.en"))


@pytest.fixture(scope="module")
def sessions(bundle_dir):
    bundle = load_bundle(bundle_dir)
    return {name: ort.InferenceSession(str(bundle.graph_path(name)), providers=["CPUExecutionProvider"])
            for name in bundle.graph_names}


def _probs(sessions, tokenizer, waves, texts) -> np.ndarray:
    from crab_rt.export.parity import ParityCase, run_pipeline

    values, amask = pad_waveforms(waves, normalize=True)
    ids, tmask = tokenizer.encode_batch(texts)
    return run_pipeline(sessions, ParityCase("t", values, amask, ids, tmask))["head.probabilities"]


def _wave(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def test_parity_recorded_for_every_graph(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    parity = manifest["provenance"]["parity"]
    assert set(parity) == {"speech_encoder", "speech_classifier", "text_encoder", "head", "end_to_end"}
    assert all(0.0 <= err <= 1e-4 for err in parity.values()), parity
    assert manifest["provenance"]["tolerance"] == 1e-4


def test_onnx_logits_match_torch_on_new_inputs(tiny_model_parts, sessions):
    import torch

    from crab_rt.export.parity import ParityCase, run_pipeline

    model, tokenizer = tiny_model_parts
    values, amask = pad_waveforms([_wave(0.8, 1), _wave(2.1, 2)], normalize=model.normalize_waveform)
    ids, tmask = tokenizer.encode_batch(["so sad today", "i love this so much and more"])
    got = run_pipeline(sessions, ParityCase("new", values, amask, ids, tmask))["head.logits"]
    with torch.no_grad():
        ref = model(*(torch.from_numpy(a) for a in (values, amask, ids, tmask))).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "other_seconds, other_text",
    [
        (2.5, "this is terrible and i do not like it at all no"),  # longer in both
        (2.5, "ok"),  # longer audio only
        (0.5, "this is terrible and i do not like it at all no"),  # longer text only
    ],
)
def test_padded_batch_invariance(tiny_model_parts, sessions, other_seconds, other_text):
    _, tokenizer = tiny_model_parts
    wave, text = _wave(1.1, 7), "okay fine then"
    alone = _probs(sessions, tokenizer, [wave], [text])
    batched = _probs(sessions, tokenizer, [wave, _wave(other_seconds, 8)], [text, other_text])
    np.testing.assert_allclose(batched[0], alone[0], atol=1e-5, rtol=0)


def test_dynamic_axes(tiny_model_parts, sessions):
    model, tokenizer = tiny_model_parts
    # export example was batch 2, 16000 samples, 12 tokens: use batch 5, other lengths
    waves = [_wave(s, i) for i, s in enumerate((2.2, 0.4, 1.0, 3.3, 0.7))]
    values, amask = pad_waveforms(waves, normalize=True)
    hidden, frame_mask = sessions["speech_encoder"].run(None, {"input_values": values, "attention_mask": amask})
    import torch

    frames = model.speech_encoder.frame_lengths(torch.tensor([w.size for w in waves])).numpy()
    assert hidden.shape[:2] == (5, frames.max())
    np.testing.assert_array_equal(frame_mask.sum(1), frames)
    ids, tmask = tokenizer.encode_batch(["a " * 25] * 5)
    assert ids.shape[1] > 12
    (text_hidden,) = sessions["text_encoder"].run(None, {"input_ids": ids, "attention_mask": tmask})
    assert text_hidden.shape[:2] == ids.shape
    probs = _probs(sessions, tokenizer, waves, ["hi"] * 5)
    assert probs.shape == (5, 4)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_no_legs_in_any_graph(bundle_dir):
    import onnx

    files = sorted(bundle_dir.glob("*.onnx"))
    assert len(files) == 8  # four graphs (the voice-only classifier too), fp32 and fp16
    for f in files:
        graph = onnx.load(str(f)).graph
        names = [n.name for n in graph.node] + [i.name for i in graph.initializer]
        names += [x for n in graph.node for x in list(n.input) + list(n.output)]
        assert not [n for n in names if "legs" in n.lower()], f.name


def test_speech_encoder_has_no_trt_unfriendly_ops(bundle_dir):
    from crab_rt.export.onnx_export import FORBIDDEN_OPS, graph_ops

    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    ops = graph_ops(bundle_dir / "speech_encoder.onnx")
    assert "Conv" in ops and "LayerNormalization" in ops
    assert not set(ops) & set(FORBIDDEN_OPS)
    assert manifest["graphs"]["speech_encoder"]["fp32"]["ops"] == ops
    assert "GRU" in manifest["graphs"]["head"]["fp32"]["ops"]


def test_forbidden_ops_are_refused():
    from crab_rt.export.onnx_export import check_graph_ops

    check_graph_ops("head", ["Add", "GRU"])
    with pytest.raises(BundleError, match=r"speech_encoder graph uses NonZero, ScatterND"):
        check_graph_ops("speech_encoder", ["NonZero", "ScatterND", "Add"])


def test_manifest_schema_and_hashes(bundle_dir, checkpoint):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    assert (m["format"], m["format_version"]) == ("crab-rt-bundle", BUNDLE_FORMAT_VERSION)
    assert m["labels"] == ["a", "b", "c", "d"]
    assert (m["sample_rate"], m["normalize_waveform"], m["modality"]) == (16000, True, "both")
    assert (m["max_audio_s"], m["max_text_tokens"]) == (12.0, MAX_TEXT_TOKENS)
    assert m["dims"] == {"speech_hidden": 32, "text_hidden": 32}
    assert m["asr"] == {"model": "tiny.en"}  # a name stays a name
    assert m["provenance"]["asr_source"] is None
    io = m["graphs"]["speech_encoder"]["fp32"]
    assert io["inputs"] == {
        "input_values": {"dtype": "float32", "shape": ["batch", "samples"]},
        "attention_mask": {"dtype": "int64", "shape": ["batch", "samples"]},
    }
    assert io["outputs"]["hidden_states"] == {"dtype": "float32", "shape": ["batch", "frames", 32]}
    assert io["outputs"]["frame_mask"] == {"dtype": "int64", "shape": ["batch", "frames"]}
    assert list(m["graphs"]["text_encoder"]["fp32"]["outputs"]) == ["hidden_states"]
    head = m["graphs"]["head"]["fp32"]
    assert list(head["inputs"]) == ["speech_hidden", "speech_mask", "text_hidden", "text_mask"]
    assert head["inputs"]["text_mask"] == {"dtype": "int64", "shape": ["batch", "tokens"]}
    assert head["outputs"]["probabilities"] == {"dtype": "float32", "shape": ["batch", 4]}
    for per_precision in m["graphs"].values():
        for entry in per_precision.values():
            assert sha256_file(bundle_dir / entry["file"]) == entry["sha256"]
    assert sha256_file(bundle_dir / "tokenizer.json") == m["tokenizer"]["sha256"]
    assert sha256_file(bundle_dir / "model.pt") == m["torch"]["sha256"]
    r = m["shape_ranges"]
    assert r["batch"] == {"min": 1, "opt": 1, "max": 8}
    assert r["audio_samples"] == {"min": 400, "opt": 64000, "max": 192000}
    assert r["text_tokens"] == {"min": 1, "opt": 32, "max": 32}
    assert r["speech_frames"] == {"min": 1, "opt": 199, "max": 599}  # 20 ms hop, 25 ms window
    p = m["provenance"]
    assert p["checkpoint_sha256"] == sha256_file(checkpoint) and p["onnx_opset"] == 17
    assert p["created"].endswith("+00:00") and p["crab_rt_version"] and p["torch_version"]
    assert not list(bundle_dir.parent.glob(".*tmp-*")), "temporary export folder left behind"


def test_bundle_torch_copy_is_model_only_and_loads(bundle_dir, tiny_model_parts):
    import torch

    from crab_rt.model.checkpoint import load_model

    model, _, payload = load_model(bundle_dir / "model.pt")
    assert set(payload) == {"format", "crab_rt_version", "architecture", "model_settings", "tokenizer_json", "model_state"}
    ref_state = tiny_model_parts[0].state_dict()
    assert all(torch.equal(v, ref_state[k]) for k, v in model.state_dict().items())


def test_fp16_graphs_and_parity(bundle_dir):
    import onnx

    m = json.loads((bundle_dir / "manifest.json").read_text())
    fp16 = m["provenance"]["fp16_parity"]
    assert 0.0 < fp16["probabilities"] <= 1e-2
    assert m["provenance"]["fp16_tolerance"] == 1e-2
    for name, per_precision in m["graphs"].items():
        entry = per_precision["fp16"]
        assert entry["file"] == f"{name}.fp16.onnx"
        # inputs and outputs stay fp32 (keep_io_types)
        assert entry["inputs"] == per_precision["fp32"]["inputs"]
        assert entry["outputs"] == per_precision["fp32"]["outputs"]
    graph = onnx.load(str(bundle_dir / "text_encoder.fp16.onnx")).graph
    types = {t.name: t.data_type for t in graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types.values()  # the weights really are fp16
    # LayerNorm kept fp32: each of its inputs is an fp32 initializer or the output of a Cast to fp32
    casts_to_fp32 = {
        out for n in graph.node if n.op_type == "Cast"
        for a in n.attribute if a.name == "to" and a.i == onnx.TensorProto.FLOAT for out in n.output
    }
    norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
    assert norms
    for n in norms:
        assert all(x in casts_to_fp32 or types.get(x) == onnx.TensorProto.FLOAT for x in n.input), n.name


def test_parity_failure_leaves_no_bundle(checkpoint, tmp_path):
    from crab_rt.export.bundle_writer import ExportOptions, export_bundle

    out = tmp_path / "strict"
    with pytest.raises(BundleError, match=r"parity failed: speech_encoder max abs error \S+ exceeds tolerance 1e-12"):
        export_bundle(checkpoint, out, ExportOptions(tolerance=1e-12))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_export_options_validate():
    from crab_rt.export.bundle_writer import ExportOptions

    with pytest.raises(ConfigError, match="precision must be one of fp32, fp16, got 'int8'"):
        ExportOptions(precision="int8").validate()
    with pytest.raises(ConfigError, match="opset must be in"):
        ExportOptions(opset=13).validate()
    with pytest.raises(ConfigError, match="tolerance must be in"):
        ExportOptions(tolerance=0).validate()


def test_refuses_to_overwrite_a_folder_that_is_not_a_bundle(checkpoint, tmp_path):
    from crab_rt.export.bundle_writer import export_bundle

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="exists and is not a crab-rt bundle"):
        export_bundle(checkpoint, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_cli_speech_only_export(tmp_path, capsys):
    import torch

    from crab_rt.model.config import HeadConfig, ModelConfig
    from crab_rt.model.crab import CrabModel

    torch.manual_seed(1)
    config = ModelConfig(speech_encoder="random:wavlm-tiny", head=HeadConfig(hidden_dim=16, classifier_dim=16, modality="speech"))
    model = CrabModel.build(config, ["x", "y"]).eval()
    ckpt = _save_checkpoint(tmp_path / "speech.pt", model, None)
    out = tmp_path / "speech_bundle"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    printed = capsys.readouterr().err  # the steps are logged (crab_rt.export.*), on stderr by the CLI
    assert "exporting speech encoder..." in printed and "max err" in printed and "modality speech" in printed
    assert sorted(p.name for p in out.glob("*.onnx")) == ["head.onnx", "speech_classifier.onnx", "speech_encoder.onnx"]
    bundle = load_bundle(out)
    assert bundle.modality == "speech" and bundle.tokenizer_path is None
    assert list(bundle.graph_io("head")["inputs"]) == ["speech_hidden", "speech_mask"]
    assert bundle.dims == {"speech_hidden": 32, "text_hidden": None}
    assert bundle.asr_model is None
    with pytest.raises(BundleError, match="modality speech.* has no text_encoder graph"):
        bundle.graph_path("text_encoder")


def test_cli_export_without_torch_weights_runs_on_onnxruntime_only(checkpoint, tmp_path, capsys):
    from crab_rt.backends.select import load_sessions
    from crab_rt.runtime.emotion_model import EmotionModel

    out = tmp_path / "no_torch"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--no-torch-weights"]) == 0
    capsys.readouterr()
    assert not (out / "model.pt").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert "torch" in manifest and manifest["torch"] is None  # recorded, not forgotten
    bundle = load_bundle(out)  # hashes verified; nothing else missing
    assert not bundle.has_torch_weights
    model = EmotionModel.load(bundle, "onnxruntime")
    audio = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    probs = model.predict([audio], ["i love this so much"])
    assert probs.shape == (1, 4) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    _, choice = load_sessions(bundle, "auto")
    assert choice.backend != "torch"
    message = "has no torch weights (exported with --no-torch-weights); use --backend onnxruntime or tensorrt"
    with pytest.raises(BundleError, match=re.escape(message)) as e:
        EmotionModel.load(bundle, "torch")
    assert "\n" not in str(e.value) and str(e.value).startswith(str(out))
    with pytest.raises(BundleError, match=re.escape(message)):
        _ = bundle.torch_checkpoint_path
    # A bundle that lists model.pt but lost it is still a broken bundle, not a torch-less one.
    (out / "manifest.json").write_text(json.dumps({**manifest, "torch": {"file": "model.pt", "sha256": "0" * 64}}))
    with pytest.raises(BundleError, match=r"model\.pt: file listed in manifest\.json is missing"):
        load_bundle(out)


def test_cli_missing_checkpoint(tmp_path, capsys):
    code = main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if not line.startswith("loading checkpoint")]  # INFO before it
    assert len(errors) == 1 and errors[0].startswith("crab-rt: error: ") and "nope.pt: checkpoint not found" in err
    assert not (tmp_path / "b").exists()


def test_cli_not_a_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"this is not a checkpoint")
    code = main(["export", "--checkpoint", str(bogus), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if not line.startswith("loading checkpoint")]  # INFO before it
    assert len(errors) == 1 and "bogus.pt: not a readable checkpoint" in errors[0]


# --- a local ASR model travels inside the bundle -----------------------------------


@pytest.fixture(scope="module")
def asr_export(checkpoint, tmp_path_factory) -> Path:
    """`crab-rt export --asr tiny-asr` run in a project folder with relative paths, as `make demo` does.

    Returns the project folder (holding tiny-asr/ and bundle/)."""
    pytest.importorskip("ctranslate2")
    from crab_rt.data.tiny_asr import build_tiny_whisper

    project = tmp_path_factory.mktemp("project")
    build_tiny_whisper(project / "tiny-asr")
    cwd, logger = Path.cwd(), logging.getLogger("crab_rt")
    saved = logger.level, logger.propagate, list(logger.handlers)  # main() sets them; module fixtures run outside
    os.chdir(project)                                              # conftest's per-test restore
    try:
        code = main(["export", "--checkpoint", str(checkpoint), "--out", "bundle", "--asr", "tiny-asr", "--no-parity",
                     "--quiet"])
    finally:
        os.chdir(cwd)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]
    assert code == 0
    return project


def test_local_asr_folder_is_copied_and_listed(asr_export):
    source, bundle = asr_export / "tiny-asr", asr_export / "bundle"
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["format_version"] == BUNDLE_FORMAT_VERSION == 2
    assert m["asr"]["folder"] == "asr" and "model" not in m["asr"]
    listed = {e["file"]: e["sha256"] for e in m["asr"]["files"]}
    expected = sorted(f"asr/{p.name}" for p in source.iterdir() if p.is_file())
    assert sorted(listed) == expected and {"asr/model.bin", "asr/config.json", "asr/tokenizer.json"} <= set(listed)
    for rel, digest in listed.items():
        assert sha256_file(bundle / rel) == digest == sha256_file(source / rel.removeprefix("asr/"))
    assert m["provenance"]["asr_source"] == str(source.resolve())  # provenance only
    assert load_bundle(bundle).asr_model == str((bundle / "asr").absolute())


def test_moved_bundle_listens_from_any_directory(asr_export, tmp_path):
    """A copy of the bundle, with the export's folder gone, runs `crab-rt listen` from / with its own ASR model."""
    speech = Path(__file__).resolve().parents[1] / "samples" / "jfk.flac"
    moved = Path(shutil.copytree(asr_export / "bundle", tmp_path / "elsewhere" / "moved-bundle"))
    gone = asr_export.with_name(asr_export.name + "-gone")
    asr_export.rename(gone)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "crab_rt.cli", "listen", "--bundle", str(moved), "--input", str(speech),
             "--backend", "onnxruntime", "-v"],
            cwd="/", capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    finally:
        gone.rename(asr_export)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(events) == 4  # the four speech regions of jfk.flac
    assert all(e["text"] for e in events)  # the micro Whisper's words: the ASR model was found
    assert f"asr model: folder {moved / 'asr'}" in proc.stderr


def test_tampered_asr_model_in_the_bundle_is_refused(asr_export, tmp_path):
    copy = Path(shutil.copytree(asr_export / "bundle", tmp_path / "copy"))
    model_bin = copy / "asr" / "model.bin"
    data = bytearray(model_bin.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_bin.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"asr/model\.bin: sha256 mismatch with manifest\.json"):
        load_bundle(copy)
    (copy / "asr" / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"asr/tokenizer\.json: file listed in manifest\.json is missing"):
        load_bundle(copy, verify=False)


@pytest.mark.parametrize(
    ("make", "asr", "message"),
    [
        (None, "./no-such-folder", r"asr model folder no-such-folder does not exist"),
        (None, "~/no-such-crab-asr", r"asr model folder .*no-such-crab-asr does not exist"),
        ("file", "{tmp}/model.bin", r"asr model .*model\.bin: is a file, not a CTranslate2 model folder"),
        ("partial", "{tmp}", r"asr model .*: not a complete CTranslate2 Whisper folder \(no tokenizer\.json\)"),
        (None, "bad name!", r"asr model 'bad name!': not a folder, a faster-whisper size name or a hub id"),
    ],
)
def test_bad_asr_values_fail_before_the_export(make, asr, message, tmp_path):
    from crab_rt.export.bundle_writer import ExportOptions, export_bundle

    if make == "file":
        (tmp_path / "model.bin").write_bytes(b"x")
    elif make == "partial":
        for name in ("model.bin", "config.json"):
            (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ConfigError, match=message):  # raised before the checkpoint is even read
        export_bundle(tmp_path / "missing.pt", tmp_path / "out", ExportOptions(asr_model=asr.format(tmp=tmp_path)))
    assert not (tmp_path / "out").exists()
