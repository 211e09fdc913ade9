"""The benchmark kinds on tiny settings: output files exist and parse (JSON schema, Markdown table, PNG), not speed."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def test_soak_tiny_samples_memory_and_counts_events(tmp_path, cache):
    rc = main(["soak", "--duration-s", "60", "--loop-s", "12", "--sample-every-s", "15", "--threads", "1",
               "--out-dir", str(tmp_path), "--cache-dir", str(cache), "--quiet", "--no-plots"])
    assert rc == 0
    data = _load(tmp_path / "soak_tiny.json", {
        "type": "object",
        "required": ["audio_s", "events", "dropped_utterances", "rss_samples", "rss_mb", "target"],
    })
    assert data["audio_s"] == 60.0 and data["dropped_utterances"] == 0
    assert [s["audio_s"] for s in data["rss_samples"]] == [0.0, 15.0, 30.0, 45.0, 60.0]
    assert all(s["rss_mb"] > 0 for s in data["rss_samples"])
    assert data["events"] >= 10 and data["events"] == data["latency_records"]  # every utterance of 5 rounds
    assert data["rss_mb"]["max"] == max(s["rss_mb"] for s in data["rss_samples"])


def test_e2e_tiny(tmp_path, cache, capsys):
    rc = main(["e2e", "--preset", "tiny", "--duration-s", "8", "--no-realtime", "--threads", "1",
               "--out-dir", str(tmp_path), "--cache-dir", str(cache), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out.splitlines()  # --quiet: only the output paths
    assert out and all(line.startswith("wrote ") and Path(line[6:]).is_file() for line in out), out
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
    assert data["config"]["frames"] == 40 and data["config"]["warmup"] == 4 and data["config"]["tag"] is None
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
        for name in ("torch-cuda", "torch-cuda-compile", "torch-cuda-graphs", "torch-cuda-capture"):
            with pytest.raises(CrabError, match="torch sees no CUDA device"):
                load_backend(name, bundle, 1, "fp32", tmp_path)


def test_models_sweep_lists_a_failing_graph_and_measures_the_rest(tiny_bundle):
    """A graph whose call fails (a part that cannot be captured in a CUDA graph, say) is listed with its first
    point and error; its later points are skipped and every other graph is still timed."""
    from crab_bench.models import ModelsBenchConfig, sweep
    from crab_rt.backends.torch import load_torch_sessions
    from crab_rt.bundle import load_bundle
    from crab_rt.errors import BackendError

    sessions = load_torch_sessions(load_bundle(tiny_bundle), "cpu")
    calls = []

    class Refusing:
        def run(self, feed):
            calls.append(feed["input_values"].shape)
            raise BackendError("speech_encoder cannot be captured in a CUDA graph for inputs float32[1x16000]")

    config = ModelsBenchConfig(preset="tiny", audio_s=(1.0, 2.0), text_tokens=(8,), batch=(1,), head_text_tokens=8,
                               ref_audio_s=1.0, warmup=0, repeat=2, max_seconds=0, quiet=True)
    frames = {1.0: 49, 2.0: 99}
    dims = {"speech_hidden": 32, "text_hidden": 32}
    out = sweep(config, {"capture": {**sessions, "speech_encoder": Refusing()}}, dims, frames, say=lambda *a: None)
    assert out["failures"] == [{"backend": "capture", "graph": "speech_encoder", "point": "speech_encoder b1 1s",
                                "error": "speech_encoder cannot be captured in a CUDA graph for inputs "
                                         "float32[1x16000]"}]
    assert calls == [(1, 16000)]  # the 2 s point was not tried
    assert sorted((r["graph"], r["audio_s"], r["text_tokens"]) for r in out["results"]) == [
        ("head", 1.0, 8), ("head", 2.0, 8), ("text_encoder", None, 8)]


def test_models_bf16_is_for_the_torch_backends(tmp_path, tiny_bundle):
    """--precision bf16 reaches the torch GPU backends; the CPU ones stay fp32; ONNX graphs have no bf16."""
    from crab_bench.models import load_backend
    from crab_rt.bundle import load_bundle
    from crab_rt.errors import CrabError

    bundle = load_bundle(tiny_bundle)
    assert {s.provider for s in load_backend("torch-cpu", bundle, 1, "bf16", tmp_path).values()} == {"torch cpu"}
    for name in ("onnxruntime-cuda", "tensorrt"):
        with pytest.raises(CrabError, match=f"{name} runs fp32 or fp16 graphs; bf16 is for the torch backends"):
            load_backend(name, bundle, 1, "bf16", tmp_path)


def test_models_repeat_runs_separate_processes_and_reports_medians(tmp_path, cache, capsys):
    """Each process is a fresh interpreter; every point and ratio is the median of the processes' values."""
    rc = main(["models-repeat", "--processes", "2", "--preset", "tiny", "--backends", "torch-cpu,onnxruntime-cpu",
               "--ort-variants", "fp32", "--audio-s", "1", "--text-tokens", "8", "--batch", "1",
               "--head-text-tokens", "8", "--ref-audio-s", "1", "--warmup", "0", "--repeat", "2", "--threads", "1",
               "--out-dir", str(tmp_path), "--cache-dir", str(cache), "--tag", "ci"])
    assert rc == 0
    data = _load(tmp_path / "models_tiny_repeat_ci.json", {
        "type": "object", "required": ["processes", "points", "combined_p50_ms", "ratios", "runs", "settings"]})
    assert data["kind"] == "models-repeat" and len(data["processes"]) == 2 and len(data["runs"]) == 2
    assert all(len(p["load_average"]["before"]) == 3 and p["yardstick_gflops"]["start"] > 0 for p in data["processes"])
    assert [b["backend"] for b in data["processes"][0]["backends"]] == ["torch-cpu", "onnxruntime-cpu",
                                                                         "onnxruntime-cpu-fp32"]
    # tiny graphs are below int8's size floor: the default CPU path runs fp32 there
    assert set(data["processes"][0]["backends"][1]["precision"].values()) == {"fp32"}
    for point in data["points"]:
        values = [r["ms"]["p50"] for run in data["runs"] for r in run["results"]
                  if (r["backend"], r["graph"]) == (point["backend"], point["graph"])]
        assert point["p50_ms"]["values"] == pytest.approx(values, abs=1e-3)
        assert point["p50_ms"]["median"] == pytest.approx(float(np.median(values)), abs=1e-3)
        assert point["p50_ms"]["min"] == pytest.approx(min(values), abs=1e-3)
    combined = [r for r in data["ratios"] if r["what"].startswith("speech+text+head")]
    assert len(combined) == 2 and all(len(r["speedup"]["values"]) == 2 for r in combined)
    text = _check_md(tmp_path / "models_tiny_repeat_ci.md")
    assert "median (min-max) over 2 processes" in text and "load average" in text
    assert "median" in capsys.readouterr().out


def test_a_stale_cached_bundle_is_rebuilt(cache, capsys):
    """A benchmark bundle exported by other code (or by a crab-rt that recorded no signature) is rebuilt."""
    from crab_bench.bundles import bundle_info, ensure_bundle, export_signature

    out = ensure_bundle("tiny", cache)
    assert bundle_info(out)["export_signature"] == export_signature()
    marker = out / "bench_preset.json"
    info = json.loads(marker.read_text())
    info.pop("export_signature")
    marker.write_text(json.dumps(info))
    assert ensure_bundle("tiny", cache) == out
    assert "exported by other code or libraries (signature not recorded); rebuilding it" in capsys.readouterr().out
    assert bundle_info(out)["export_signature"] == export_signature()


def _kind_modules():
    import importlib

    from crab_bench.cli import KINDS

    return {kind: importlib.import_module(module) for kind, (module, _) in KINDS.items()}


@pytest.mark.parametrize("kind", ["models", "models-repeat", "e2e", "concurrency", "asr", "vad", "soak"])
def test_config_defaults_are_the_flags_defaults(kind):
    """One owner per default: the flags default to None and the parsed config is the config class's default."""
    import dataclasses

    from crab_bench.cli import build_config, build_parser
    from crab_rt.cli._options import OPTIONS_KEY

    config_cls = _kind_modules()[kind].CONFIG
    args = build_parser().parse_args([kind])
    assert build_config(args) == config_cls()
    config_cls().validate()
    options = getattr(args, OPTIONS_KEY)
    # every field has exactly one flag, and argparse holds no default of its own
    assert sorted(o.field for o in options.values()) == sorted(f.name for f in dataclasses.fields(config_cls))
    assert all(getattr(args, dest) is None for dest in options)


def test_flags_build_typed_configs():
    from crab_bench.cli import build_config, build_parser
    from crab_bench.concurrency import ConcurrencyBenchConfig
    from crab_bench.models import BACKENDS, ModelsBenchConfig

    parse = build_parser().parse_args
    models = build_config(parse(["models", "--audio-s", "1,2.5", "--batch", "2", "--backends", "torch-cpu, onnxruntime-cpu",
                                 "--ort-variants", "int8", "--no-plots", "--threads", "3"]))
    assert models == ModelsBenchConfig(audio_s=(1.0, 2.5), batch=(2,), backends=("torch-cpu", "onnxruntime-cpu"),
                                       ort_variants=("int8",), plots=False, threads=3)
    assert build_config(parse(["models", "--backends", "all"])).backends == BACKENDS
    concurrency = build_config(parse(["concurrency", "--streams", "1,3", "--no-realtime", "--asr", "none"]))
    assert concurrency == ConcurrencyBenchConfig(streams=(1, 3), realtime=False, asr="none")
    assert concurrency.duration_s == 30.0 and build_config(parse(["e2e"])).duration_s == 60.0


def test_vad_run_takes_a_config_object(tmp_path):
    """The library entry point: run(config), no argparse; the options used are recorded in the JSON."""
    import dataclasses

    from crab_bench.vad import VadBenchConfig, run
    from crab_rt.errors import ConfigError

    with pytest.raises(ConfigError, match="--frames must be >= 10, got 5"):
        run(VadBenchConfig(frames=5, out_dir=tmp_path))
    assert not any(tmp_path.iterdir())
    config = VadBenchConfig(frames=20, warmup=2, out_dir=tmp_path, tag="lib", threads=1, quiet=True)
    assert run(config) == 0
    data = _load(tmp_path / "vad_lib.json", {"type": "object", "required": ["results", "target", "config"]})
    assert data["results"]["vad_per_frame"]["n"] == 20 and data["frames"] == 20 and data["warmup"] == 2
    assert data["config"] == {**dataclasses.asdict(config), "out_dir": str(tmp_path)}
    _check_md(tmp_path / "vad_lib.md")


@pytest.mark.parametrize("kind, changes, match", [
    ("vad", {"frames": 5}, r"^--frames must be >= 10, got 5$"),
    ("vad", {"warmup": -1}, r"^--warmup must be >= 0, got -1$"),
    ("vad", {"threads": -2}, r"^--threads must be >= 0 \(0 = number of cores\), got -2$"),
    ("vad", {"tag": ""}, r"^--tag '' must be letters"),
    ("vad", {"seed": -1}, r"^--seed must be >= 0, got -1$"),
    ("models", {"audio_s": (1.0, 0.0)}, r"^--audio-s must be >= 0.1, got 1,0$"),
    ("models", {"batch": ()}, r"^--batch must be >= 1, got an empty list$"),
    ("models", {"precision": "fp8"}, r"^--precision 'fp8' is not one of fp32, fp16, bf16$"),
    ("models", {"backends": ("torch-cpu", "cuda-magic")}, r"^--backends: unknown backend 'cuda-magic'"),
    ("models", {"max_seconds": -1.0}, r"^--max-seconds must be >= 0 \(0 = never\), got -1$"),
    ("e2e", {"duration_s": 0.5}, r"^--duration-s must be in \[1, 3600\], got 0.5$"),
    ("e2e", {"chunk_ms": 2000.0}, r"^--chunk-ms must be in \[1, 1000\], got 2000$"),
    ("e2e", {"backend": "magic"}, r"^--backend 'magic' is not one of "),
    ("e2e", {"asr": "random:whisper-huge"}, r"^--asr: unknown random Whisper size 'huge'"),
    ("e2e", {"asr_compute_type": "int3"}, r"^--asr-compute-type: asr.compute_type: 'int3' is not one of"),
    ("concurrency", {"streams": (1, 300)}, r"^--streams must be in \[1, 256\], got 1,300$"),
    ("concurrency", {"preset": "huge"}, r"^--preset 'huge' is not one of tiny, base, large$"),
    ("asr", {"device": "tpu"}, r"^--device 'tpu' is not one of auto, cpu, cuda$"),
    ("asr", {"repeat": 0}, r"^--repeat must be >= 1, got 0$"),
    ("asr", {"models": ()}, r"^--models needs at least one entry$"),
    ("asr", {"compute_types": ("default", "int3")}, r"^--compute-types: asr.compute_type: 'int3' is not one of"),
])
def test_validate_names_the_option_value_and_range(kind, changes, match):
    from crab_rt.errors import ConfigError

    config = _kind_modules()[kind].CONFIG(**changes)
    with pytest.raises(ConfigError, match=match):
        config.validate()


def test_e2e_provisional_summary_medians_share_and_goal():
    from crab_bench.e2e_provisional import markdown, summarize

    def run(prov_p50, final_p50, provisional=True):
        lat = {"end_to_event": {"p50": final_p50, "p95": final_p50 * 2}}
        out = {"latency_ms": lat, "utterances": 10}
        if provisional:
            out["provisional"] = {"latency_ms": {"end_to_event": {"p50": prov_p50, "p95": prov_p50 * 2}},
                                  "p50_share_of_final": round(prov_p50 / final_p50, 4)}
        return out

    runs = {"provisional": [run(200, 500), run(220, 480), run(180, 520)],
            "final_only": [run(0, 490, False), run(0, 470, False), run(0, 510, False)]}
    s = summarize(runs)
    assert s["provisional_p50"] == {"median": 200.0, "min": 180.0, "max": 220.0}
    assert s["final_only_p50"]["median"] == 490.0 and s["share"]["median"] == 0.4 and s["goal_met"]
    text = markdown({"runs": 3, "asr": "tiny.en", "duration_s": 60.0, "machine": {"cpu": "x", "cores": 2},
                     "summary": s, "files": ["a.md"]})
    assert "| provisional event (voice only) | 200 (180-220) | 400 (360-440) |" in text and "**met**" in text
    runs["provisional"] = [run(300, 480), run(250, 500), run(180, 520)]  # shares 0.625, 0.5, 0.346: median 0.5
    assert summarize(runs)["share"]["median"] == 0.5 and not summarize(runs)["goal_met"]
