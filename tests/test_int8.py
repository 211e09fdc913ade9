"""int8 encoders for the CPU: written at export with their parity, checked again when ONNX Runtime loads them."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from crab_rt.bundle import load_bundle  # noqa: E402
from crab_rt.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def int8_bundle(tiny_model_parts, tmp_path_factory) -> Path:
    """The tiny model with int8 encoders (the size floor lowered to 0: tiny graphs are skipped by default)."""
    from crab_rt.export.bundle_writer import ExportOptions, export_bundle
    from crab_rt.train.checkpoint import save_checkpoint

    model, tokenizer = tiny_model_parts
    root = tmp_path_factory.mktemp("int8")
    ckpt = save_checkpoint(root / "model.pt", model, tokenizer, {"max_audio_s": 12.0, "max_text_tokens": 32})
    return export_bundle(ckpt, root / "bundle", ExportOptions(parity=False, incremental_speech=False,
                                                              int8_min_weights=0))


def _copy_with_manifest(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    edit(manifest)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_int8_encoders_and_their_parity_are_recorded(int8_bundle):
    manifest = json.loads((int8_bundle / "manifest.json").read_text())
    entry = manifest["cpu_int8"]
    assert entry["graphs"] == ["speech_encoder", "text_encoder"] and entry["within_bound"] is True
    assert entry["bound"] == {"probabilities": 1e-2} and entry["skipped"] == {}
    parity = entry["parity"]
    assert 0 < parity["probabilities"] <= 1e-2 and parity["logits"] > 0
    assert parity["samples"] == 5 and 0 <= parity["label_agreement"] <= 1
    for name in ("speech_encoder", "text_encoder"):
        per_precision = manifest["graphs"][name]
        assert per_precision["int8"]["file"] == f"{name}.int8.onnx"
        assert per_precision["int8"]["inputs"] == per_precision["fp32"]["inputs"]
        assert per_precision["int8"]["outputs"] == per_precision["fp32"]["outputs"]
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= set(per_precision["int8"]["ops"])
        assert onnx.load(str(int8_bundle / f"{name}.int8.onnx")).opset_import[0].version == 17
    assert "int8" not in manifest["graphs"]["head"]  # GRU-bound: int8 products would not help


def test_onnxruntime_fuses_the_int8_products(int8_bundle, tmp_path):
    """At the backend's optimisation level each MatMulInteger becomes one DynamicQuantizeMatMul."""
    from crab_rt.backends.onnxruntime import SESSION_DEFAULTS

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, SESSION_DEFAULTS["graph_optimization_level"])
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(int8_bundle / "text_encoder.int8.onnx"), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert "DynamicQuantizeMatMul" in ops and "MatMulInteger" not in ops


def test_small_graphs_stay_fp32(tiny_bundle):
    entry = load_bundle(tiny_bundle).manifest["cpu_int8"]
    assert entry["graphs"] == [] and entry["parity"] is None and entry["within_bound"] is False
    assert set(entry["skipped"]) == {"speech_encoder", "text_encoder"}
    assert "too small to gain from int8" in entry["skipped"]["speech_encoder"]
    assert not list(tiny_bundle.glob("*.int8.onnx"))


def test_int8_beyond_its_bound_is_not_shipped(tiny_model_parts, tmp_path, caplog):
    from crab_rt.export.int8 import int8_entry
    from crab_rt.export.onnx_export import export_graphs

    model, _ = tiny_model_parts
    graphs = export_graphs(model, tmp_path)
    with caplog.at_level(logging.WARNING, logger="crab_rt"):
        entry, kept = int8_entry(graphs, tmp_path, "both", 300, 1, 32, model.normalize_waveform, tolerance=1e-9,
                                 min_weights=0)
    assert kept == {} and entry["graphs"] == [] and entry["within_bound"] is False
    assert entry["parity"]["probabilities"] > 1e-9
    assert not list(tmp_path.glob("*.int8.onnx"))
    assert any("miss the bound 1e-09: no int8 graphs" in r.getMessage() for r in caplog.records)


def test_export_options_check_the_int8_settings():
    from crab_rt.export.bundle_writer import ExportOptions

    with pytest.raises(ConfigError, match="int8_tolerance must be in"):
        ExportOptions(int8_tolerance=0).validate()
    with pytest.raises(ConfigError, match="int8_min_weights must be >= 0, got -1"):
        ExportOptions(int8_min_weights=-1).validate()


def test_the_cpu_runs_the_int8_encoders_by_default(int8_bundle):
    from crab_rt.backends.select import load_sessions
    from crab_rt.export.parity import parity_cases

    sessions, choice = load_sessions(load_bundle(int8_bundle), "auto", threads=2)
    assert choice.precision == "int8" and choice.device == "cpu"
    assert {n: s.precision for n, s in sessions.items()} == {
        "speech_encoder": "int8", "speech_classifier": "fp32", "text_encoder": "int8", "head": "fp32"}
    fp32, exact = load_sessions(load_bundle(int8_bundle), "onnxruntime", threads=2, cpu_int8=False)
    assert exact.precision == "fp32" and {s.precision for s in fp32.values()} == {"fp32"}
    # the recorded bound holds on inputs the export did not see
    case = parity_cases("both", 300, 1, 32, False, seed=7)[2]
    probs = []
    for s in (sessions, fp32):
        hidden = s["speech_encoder"].run({"input_values": case.input_values, "attention_mask": case.audio_mask})
        text = s["text_encoder"].run({"input_ids": case.input_ids, "attention_mask": case.text_mask})
        probs.append(s["head"].run({"speech_hidden": hidden["hidden_states"], "speech_mask": hidden["frame_mask"],
                                    "text_hidden": text["hidden_states"], "text_mask": case.text_mask})["probabilities"])
    assert np.abs(probs[0] - probs[1]).max() <= 1e-2


@pytest.mark.parametrize("edit, reason", [
    (lambda m: m["cpu_int8"]["parity"].update(probabilities=0.5), "differ from fp32 by 0.5, beyond the bound 0.01"),
    (lambda m: m["cpu_int8"].update(parity=None), "its parity (probabilities vs fp32) is not recorded"),
    (lambda m: m["graphs"]["text_encoder"].pop("int8"), "it lists int8 text_encoder without the graph"),
])
def test_int8_whose_recorded_parity_fails_runs_fp32(int8_bundle, tmp_path, caplog, edit, reason):
    from crab_rt.backends.select import load_sessions

    bundle = load_bundle(_copy_with_manifest(int8_bundle, tmp_path / "edited", edit))
    with caplog.at_level(logging.WARNING, logger="crab_rt"):
        sessions, choice = load_sessions(bundle, "onnxruntime", threads=1)
    assert choice.precision == "fp32" and {s.precision for s in sessions.values()} == {"fp32"}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and reason in warned[0] and "running fp32" in warned[0]


def test_session_options_are_what_the_backend_claims(int8_bundle):
    from crab_rt.backends.onnxruntime import SESSION_DEFAULTS
    from crab_rt.backends.select import load_sessions

    sessions, _ = load_sessions(load_bundle(int8_bundle), "onnxruntime", threads=2)
    threads = 2  # every graph as asked (the pipeline's core budget decides)
    for s in sessions.values():
        assert s.options == {**SESSION_DEFAULTS, "intra_op_num_threads": threads, "allow_spinning": False}
        real = s._session.get_session_options()
        assert real.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        assert real.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
        assert real.enable_cpu_mem_arena and real.enable_mem_pattern
        assert real.intra_op_num_threads == threads
        assert real.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_quantizing_leaks_no_onnxruntime_log_line(int8_bundle, tmp_path):
    """ONNX Runtime's quantizer warns on the root logger when a graph was not pre-processed (a `WARNING:root:`
    line in `crab-rt export`); `quantize_graph` pre-processes it first, so nothing reaches stderr. (Its
    `logging.info` calls still install basicConfig's handler on the root logger, at WARNING: not ours to undo.)"""
    import subprocess
    import sys

    src = int8_bundle / load_bundle(int8_bundle).manifest["graphs"]["speech_encoder"]["fp32"]["file"]
    script = ("import logging, sys\n"
              "from onnxruntime.quantization import QuantType, quantize_dynamic\n"
              "from crab_rt.export.int8 import quantize_graph\n"
              "if sys.argv[1] == 'direct':\n"
              "    quantize_dynamic(sys.argv[2], sys.argv[3], weight_type=QuantType.QInt8)\n"
              "else:\n"
              "    quantize_graph(sys.argv[2], sys.argv[3])\n"
              "logging.getLogger('later').warning('a later root warning')\n")

    def run(how: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", script, how, str(src), str(tmp_path / f"{how}.onnx")],
                              capture_output=True, text=True, timeout=120)

    direct, ours = run("direct"), run("ours")
    assert direct.returncode == 0 and "WARNING:root:Please consider to run pre-processing" in direct.stderr
    assert ours.returncode == 0, ours.stderr
    assert ours.stderr == "WARNING:later:a later root warning\n"  # only the script's own line
    assert onnx.load(str(tmp_path / "ours.onnx")).graph.node  # and the int8 graph was written
