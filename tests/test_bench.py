"""The benchmark kinds on tiny settings: output files exist and parse (JSON schema, Markdown table, PNG), not speed."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crab_bench.cli import main

pytest.importorskip("torch")  # the benchmark bundle is built from a random model
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

COMMON_SCHEMA = {
    "type": "object",
    "required": ["name", "created", "command", "code", "machine", "process", "kind"],
    "properties": {
        "machine": {"type": "object", "required": ["cpu", "cores", "ram_gb", "gpus", "python", "versions", "threads"],
                    "properties": {"versions": {"type": "object", "required": ["numpy", "onnxruntime"]}}},
        "process": {"type": "object", "required": ["wall_s", "cpu_s", "peak_rss_mb"],
                    "properties": {"peak_rss_mb": {"type": "number", "exclusiveMinimum": 0}}},
    },
}
STATS = {"type": "object", "required": ["n", "mean", "p50"], "properties": {"n": {"type": "integer", "minimum": 1}}}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-cache")


def _load(path: Path, schema: dict) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.validate(data, COMMON_SCHEMA)
    jsonschema.validate(data, schema)
    return data


def _check_md(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# ")
    assert re.search(r"^\| .+ \|\n\|(---\|)+$", text, re.M), text[:400]
    return text


def _check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_models_tiny_same_inputs_across_backends(tmp_path, cache, capsys):
    rc = main(["models", "--preset", "tiny", "--backends", "torch-cpu,onnxruntime-cpu", "--audio-s", "1,2",
               "--text-tokens", "8,16", "--batch", "1,2", "--head-text-tokens", "8", "--ref-audio-s", "2",
               "--warmup", "1", "--repeat", "2", "--threads", "1", "--out-dir", str(tmp_path), "--cache-dir", str(cache),
               "--tag", "ci"])
    assert rc == 0
    data = _load(tmp_path / "models_tiny_ci.json", {
        "type": "object",
        "required": ["preset", "bundle", "settings", "backends", "skipped", "results", "ratios", "agreement_max_abs_diff"],
        "properties": {"results": {"type": "array", "items": {"type": "object",
                                                               "required": ["backend", "graph", "batch", "ms"],
                                                               "properties": {"ms": STATS}}}},
    })
    assert [b["backend"] for b in data["backends"]] == ["torch-cpu", "onnxruntime-cpu"]
    assert data["machine"]["threads"] == 1 and data["bundle"]["parity_checked"] is False
    yardstick = data["machine"]["matmul_gflops"]
    assert yardstick["start"] > 0 and yardstick["end"] > 0 and isinstance(data["machine"]["cpu_features"], list)
    # per backend: speech 2 lengths x 2 batches, text 2 x 2, head (2 audio + 1 extra text length) x 2
    assert len(data["results"]) == 2 * (4 + 4 + 6)
    assert all(r["ms"]["n"] == 2 for r in data["results"])
    # identical inputs: the ONNX graphs reproduce torch (the bundle skipped its own parity check)
    agree = data["agreement_max_abs_diff"]
    assert agree["reference"] == "torch-cpu"
    assert set(agree["onnxruntime-cpu"]) == {"speech_encoder", "text_encoder", "head"}
    assert all(v["max_abs"] < 1e-3 for v in agree["onnxruntime-cpu"].values())
    combined = [r for r in data["ratios"] if r["what"].startswith("speech+text+head")]
    assert len(combined) == 2
    for r in combined:  # the combined ratio is re-derived from the per-graph p50s of this run
        batch = int(r["what"].rsplit(" ", 1)[1])
        assert (r["baseline"], r["backend"]) == ("torch-cpu", "onnxruntime-cpu")
        for backend, total in ((r["baseline"], r["baseline_ms"]), (r["backend"], r["backend_ms"])):
            parts = [x["ms"]["p50"] for x in data["results"] if x["backend"] == backend and x["batch"] == batch
                     and (x["graph"], x["audio_s"], x["text_tokens"]) in
                     {("speech_encoder", 2.0, None), ("text_encoder", None, 8), ("head", 2.0, 8)}]
            assert len(parts) == 3 and total == pytest.approx(sum(parts), abs=2e-3)
        assert r["speedup"] == pytest.approx(r["baseline_ms"] / r["backend_ms"], rel=2e-3)
    text = _check_md(tmp_path / "models_tiny_ci.md")
    assert "parity check OFF" in text and "Ratios to the baseline (same run" in text
    assert f"yardstick (numpy fp32 matmul): {yardstick['start']:g} GFLOP/s at the start" in text
    for b in (1, 2):
        _check_png(tmp_path / f"models_tiny_ci_batch{b}.png")
    assert "ratio speech+text+head" in capsys.readouterr().out


def test_e2e_tiny(tmp_path, cache):
    rc = main(["e2e", "--preset", "tiny", "--duration-s", "8", "--no-realtime", "--threads", "1",
               "--out-dir", str(tmp_path), "--cache-dir", str(cache), "--quiet"])
    assert rc == 0
    stages = ["end_to_event", "critical_path", "overhead", "asr", "speech_encoder", "text_encoder", "head"]
    data = _load(tmp_path / "e2e_tiny.json", {
        "type": "object",
        "required": ["utterances", "audio_s", "real_time_factor", "cpu_s", "latency_ms", "per_utterance_ms", "target",
                     "asr"],
        "properties": {"utterances": {"type": "integer", "minimum": 1},
                       "latency_ms": {"type": "object", "required": stages,
                                      "properties": {k: STATS for k in stages}}},
    })
    assert "micro offline Whisper" in data["asr"] and data["ort_spinning"] is False
    for lat in data["per_utterance_ms"]:
        assert lat["critical_path"] == pytest.approx(
            max(lat["asr"], lat["speech_encoder"]) + lat["text_encoder"] + lat["head"])
        assert lat["overhead"] == pytest.approx(lat["end_to_event"] - lat["critical_path"])
    assert data["realtime"] is False and data["real_time_factor"] < 1.0
    _check_md(tmp_path / "e2e_tiny.md")
    _check_png(tmp_path / "e2e_tiny_stages.png")


def test_concurrency_tiny(tmp_path, cache):
    rc = main(["concurrency", "--preset", "tiny", "--streams", "1,2", "--duration-s", "6", "--no-realtime",
               "--asr", "none", "--threads", "1", "--out-dir", str(tmp_path), "--cache-dir", str(cache), "--quiet"])
    assert rc == 0
    data = _load(tmp_path / "concurrency_tiny.json", {
        "type": "object", "required": ["levels"],
        "properties": {"levels": {"type": "array", "minItems": 2, "items": {
            "type": "object", "required": ["streams", "utterances", "utterances_per_s", "audio_s_per_wall_s",
                                           "latency_ms"]}}},
    })
    one, two = data["levels"]
    assert (one["streams"], two["streams"]) == (1, 2)
    assert two["utterances"] >= one["utterances"] >= 1
    assert two["audio_s"] > one["audio_s"]
    _check_md(tmp_path / "concurrency_tiny.md")
    _check_png(tmp_path / "concurrency_tiny_vs_streams.png")
    _check_png(tmp_path / "concurrency_tiny_stages.png")


def test_asr_micro_whisper_both_compute_types(tmp_path, cache):
    rc = main(["asr", "--models", "random:whisper-micro", "--compute-types", "default,int8", "--device", "cpu",
               "--audio-s", "1,2", "--ref-audio-s", "2", "--warmup", "1", "--repeat", "2", "--threads", "1",
               "--out-dir", str(tmp_path), "--cache-dir", str(cache), "--quiet"])
    assert rc == 0
    data = _load(tmp_path / "asr.json", {
        "type": "object", "required": ["models", "results", "ratios", "settings"],
        "properties": {"results": {"type": "array", "minItems": 4, "maxItems": 4, "items": {
            "type": "object", "required": ["model", "compute_type", "device", "audio_s", "words", "ms"],
            "properties": {"ms": STATS}}}},
    })
    assert {(r["compute_type"], r["audio_s"]) for r in data["results"]} == {
        ("default", 1.0), ("default", 2.0), ("int8", 1.0), ("int8", 2.0)}
    assert all(r["device"] == "cpu" and r["words"] >= 1 and r["ms"]["n"] == 2 for r in data["results"])
    (ratio,) = data["ratios"]
    p50 = {r["compute_type"]: r["ms"]["p50"] for r in data["results"] if r["audio_s"] == 2.0}
    assert (ratio["baseline"], ratio["compute_type"]) == ("default", "int8")
    assert ratio["speedup"] == pytest.approx(p50["default"] / p50["int8"], rel=2e-3)
    assert "micro offline Whisper" in data["models"]["random:whisper-micro"]
    _check_md(tmp_path / "asr.md")
    _check_png(tmp_path / "asr.png")


def test_vad_script_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vad.py"), "--frames", "40", "--warmup", "4",
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = _load(tmp_path / "vad.json", {
        "type": "object", "required": ["results", "target"],
        "properties": {"results": {"type": "object", "required": ["vad_per_frame", "front_end_per_frame"],
                                   "properties": {"vad_per_frame": STATS}},
                       "target": {"type": "object", "required": ["target_ms", "measured_ms", "met"]}},
    })
    assert data["results"]["vad_per_frame"]["n"] == 40
    assert data["target"]["target_ms"] == 0.3
    _check_md(tmp_path / "vad.md")


def test_machine_slug_and_default_results_folder(tmp_path, monkeypatch):
    from crab_bench.machine import describe_machine, machine_slug, results_dir

    desc = describe_machine(2)
    slug = machine_slug(desc)
    assert re.fullmatch(r"[a-z0-9-]+", slug)
    if not desc["gpus"]:
        assert slug.startswith(f"cpu-{desc['cores']}core-")
    assert machine_slug({"gpus": ["NVIDIA H100 80GB HBM3"], "cores": 16, "cpu": "x"}) == "nvidia-h100-80gb-hbm3"
    monkeypatch.chdir(tmp_path)
    assert results_dir(None, desc) == Path("benchmarks") / "results" / slug
    assert (tmp_path / "benchmarks" / "results" / slug).is_dir()


@pytest.mark.parametrize("argv, match", [
    (["models", "--preset", "huge"], "--preset 'huge' is not one of tiny, base, large"),
    (["models", "--preset", "tiny", "--ort-variants", "int4"], "unknown variant 'int4'"),
    (["models", "--preset", "tiny", "--backends", "cuda-magic"], "unknown backend 'cuda-magic'"),
    (["vad", "--tag", "a/b"], "--tag 'a/b' must be"),
    (["vad", "--threads", "-1"], "--threads must be >= 0"),
    (["asr", "--compute-types", "int3"], "asr.compute_type: 'int3' is not one of"),
    (["asr", "--models", "random:whisper-huge"], "unknown random Whisper size 'huge'"),
    (["concurrency", "--streams", "0"], r"--streams must be in \[1, 256\]"),
])
def test_bad_options_are_one_line_errors(argv, match, tmp_path, capsys):
    rc = main([*argv, "--out-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: ") and re.search(match, err), err


def test_models_backend_names_map_to_torch_compile_modes(tmp_path, tiny_bundle):
    """Loading only (compiling happens on the first call): each torch bench backend gets its compile mode."""
    from crab_bench.models import load_backend
    from crab_rt.bundle import load_bundle
    from crab_rt.errors import CrabError

    bundle = load_bundle(tiny_bundle)
    sessions = load_backend("torch-cpu-compile", bundle, 1, "fp32", tmp_path)
    assert {s.provider for s in sessions.values()} == {"torch cpu compile=inductor"}
    assert {s.provider for s in load_backend("torch-cpu", bundle, 1, "fp32", tmp_path).values()} == {"torch cpu"}
    import torch

    if not torch.cuda.is_available():
        for name in ("torch-cuda", "torch-cuda-compile", "torch-cuda-graphs"):
            with pytest.raises(CrabError, match="torch sees no CUDA device"):
                load_backend(name, bundle, 1, "fp32", tmp_path)
