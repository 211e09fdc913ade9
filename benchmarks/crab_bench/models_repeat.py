"""`python benchmarks/models_repeat.py --processes 3 ...`: the models bench in N separate processes, medians and spread.

One process's figure depends on where the machine's load, its clock and the
other tenants of a shared host happened to be during that run; a figure worth
quoting is the median of several. This runs `crab_bench.models` (same options)
in `--processes` fresh Python processes one after the other, each loading
every backend and alternating them point by point as usual, and reports for
every point and every ratio the median over the processes with its min-max,
plus each process's own value, the load average around it and the machine's
yardstick. The bundle is built (or its cache checked) once, before the first
process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from crab_bench.common import check_range, finish_run, resolve_threads, start_run
from crab_bench.machine import cpu_seconds, machine_busy_s
from crab_bench.models import ModelsBenchConfig, combined_p50
from crab_bench.models import add_arguments as add_models_arguments
from crab_bench.stats import spread
from crab_rt.cli._options import add_config_option
from crab_rt.errors import ConfigError

__all__ = ["CONFIG", "ModelsRepeatConfig", "add_arguments", "run", "aggregate", "BUSY_OTHER_CORES"]

# Other processes keeping more than this many cores busy while a process measured means the machine was not
# quiet: torch's OpenMP threads wait at every barrier for a descheduled sibling, and torch eager was 10-20x
# slower than on a quiet machine (ONNX Runtime 1.5-2x), so such a run's ratios are not a figure to quote.
# (Measured as the machine's busy CPU time minus the bench process's own, over the process's wall time: the
# load average cannot tell, since the bench's own previous process keeps it above 1 on 2 cores.)
BUSY_OTHER_CORES = 0.15


@dataclasses.dataclass(frozen=True)
class ModelsRepeatConfig(ModelsBenchConfig):
    """The models bench's options, and how many processes run it.

    Attributes:
        processes: separate processes, one after the other (>= 1; 3 or more for a quoted figure).
    """

    processes: int = 3

    def validate(self) -> None:
        super().validate()
        check_range("--processes", self.processes, 1, 50)


CONFIG = ModelsRepeatConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_models_arguments(p)
    add_config_option(p, "--processes", ModelsRepeatConfig, "processes",
                      "run the models bench in this many separate processes, one after the other")


def _child_config(config: ModelsRepeatConfig, out_dir: Path, index: int) -> dict:
    fields = {f.name for f in dataclasses.fields(ModelsBenchConfig)}
    values = {k: v for k, v in dataclasses.asdict(config).items() if k in fields}
    values.update(out_dir=str(out_dir), tag=f"process{index}", plots=False, quiet=True)
    return {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in values.items()}


_CHILD = """
import json, sys
from crab_bench.models import ModelsBenchConfig, run
values = json.loads(sys.argv[1])
tuples = {k for k, v in ModelsBenchConfig().__dict__.items() if isinstance(v, tuple)}
sys.exit(run(ModelsBenchConfig(**{k: tuple(v) if k in tuples else v for k, v in values.items()})))
"""


def _run_child(config: ModelsRepeatConfig, out_dir: Path, index: int) -> dict:
    """One models bench in a fresh process; returns its JSON payload plus the load average around it."""
    bench_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (bench_root, os.environ.get("PYTHONPATH")) if p)}
    load_before = os.getloadavg()
    start, busy0, own0 = time.perf_counter(), machine_busy_s(), cpu_seconds(children=True)
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(_child_config(config, out_dir, index))],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    busy1, own1 = machine_busy_s(), cpu_seconds(children=True)
    path = out_dir / f"models_{config.preset}_process{index}.json"
    if proc.returncode != 0 or not path.is_file():
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise ConfigError(f"models bench process {index} failed (exit {proc.returncode}): {tail}")
    payload = json.loads(path.read_text(encoding="utf-8"))
    payload["load_average"] = {"before": [round(x, 2) for x in load_before],
                               "after": [round(x, 2) for x in os.getloadavg()]}
    payload["wall_s"] = round(wall, 1)
    other = None if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
    payload["other_cores"] = None if other is None else round(other, 3)
    return payload


def _spread(values: list[float]) -> dict:
    """`crab_bench.stats.spread` plus every process's value."""
    return {**spread(values), "values": [round(float(v), 3) for v in values]}


def aggregate(runs: list[dict]) -> dict:
    """Per point (backend, graph, shape): the p50 of each process, their median and min-max; the same for
    each ratio and for speech + text + head. A point or ratio missing from a process is left out of it."""
    points: dict[tuple, list[float]] = {}
    for r in runs:
        for row in r["results"]:
            key = (row["backend"], row["graph"], row["batch"], row["audio_s"], row["text_tokens"])
            points.setdefault(key, []).append(row["ms"]["p50"])
    ratios: dict[tuple, dict[str, list[float]]] = {}
    for r in runs:
        for row in r["ratios"]:
            key = (row["what"], row["baseline"], row["backend"])
            d = ratios.setdefault(key, {"speedup": [], "baseline_ms": [], "backend_ms": []})
            for k in d:
                d[k].append(row[k])
    settings = runs[0]["settings"]
    combined = {}
    for r in runs:
        for be in r["backends"]:
            for b in settings["batch"]:
                value = combined_p50(r["results"], be["backend"], b, settings["ref_audio_s"],
                                     settings["head_text_tokens"])
                if value is not None:
                    combined.setdefault((be["backend"], b), []).append(value)
    return {
        "points": [{"backend": k[0], "graph": k[1], "batch": k[2], "audio_s": k[3], "text_tokens": k[4],
                    "p50_ms": _spread(v)} for k, v in points.items()],
        "combined_p50_ms": [{"backend": k[0], "batch": k[1], "audio_s": settings["ref_audio_s"],
                             "text_tokens": settings["head_text_tokens"], "p50_ms": _spread(v)}
                            for k, v in combined.items()],
        "ratios": [{"what": k[0], "baseline": k[1], "backend": k[2], **{n: _spread(v) for n, v in d.items()}}
                   for k, d in ratios.items()],
    }


def run(config: ModelsRepeatConfig) -> int:
    """Run the models bench in `config.processes` processes; writes models_<preset>_repeat[_tag].json and .md."""
    from crab_bench.bundles import ensure_bundle

    config.validate()
    say = print if not config.quiet else (lambda *a, **k: None)
    threads = resolve_threads(config.threads)
    ctx = start_run(config, threads)
    ensure_bundle(config.preset, config.cache_dir, say)  # once, so no process rebuilds it
    runs = []
    with tempfile.TemporaryDirectory(prefix="crab-models-repeat-") as tmp:
        for i in range(1, config.processes + 1):
            say(f"models bench, process {i} of {config.processes} (load average {os.getloadavg()[0]:.2f}) ...")
            runs.append(_run_child(config, Path(tmp), i))
            for r in runs[-1]["ratios"]:
                if r["what"].startswith("speech+text+head"):
                    say(f"  {r['what']}: {r['baseline']} {r['baseline_ms']:.1f} ms / {r['backend']} "
                        f"{r['backend_ms']:.1f} ms = {r['speedup']:.2f}x")
    summary = aggregate(runs)
    processes = [{"index": i + 1, "code": r.get("code"), "yardstick_gflops": r["machine"].get("matmul_gflops"),
                  "load_average": r["load_average"], "other_cores": r.get("other_cores"), "wall_s": r["wall_s"],
                  "backends": r["backends"],
                  "agreement_max_abs_diff": r["agreement_max_abs_diff"]} for i, r in enumerate(runs)]
    payload = {"kind": "models-repeat", "preset": config.preset, "processes": processes,
               "settings": runs[0]["settings"], "bundle": runs[0]["bundle"], **summary,
               "runs": [{"results": r["results"], "ratios": r["ratios"]} for r in runs]}
    for r in summary["ratios"]:
        s = r["speedup"]
        say(f"  ratio {r['what']}: {r['baseline']} / {r['backend']} = median {s['median']:.2f}x "
            f"(min {s['min']:.2f}, max {s['max']:.2f}, {len(s['values'])} processes)")
    finish_run(ctx, f"models_{config.preset}_repeat", payload, _markdown(payload), None, say)
    return 0


def _fmt(s: dict, unit: str = "") -> str:
    return f"{s['median']:.2f}{unit} ({s['min']:.2f}-{s['max']:.2f})"


def _markdown(payload: dict) -> tuple[str, list[tuple[str, str]], list[str]]:
    from crab_bench.report import markdown_table

    n = len(payload["processes"])
    ratio_rows = [[r["what"], r["baseline"], _fmt(r["baseline_ms"]), r["backend"], _fmt(r["backend_ms"]),
                   _fmt(r["speedup"], "x"), ", ".join(f"{v:.2f}" for v in r["speedup"]["values"])]
                  for r in payload["ratios"]]
    sections = [(f"Ratios to the baseline: median (min-max) over {n} processes",
                 markdown_table(["what", "baseline", "ms", "backend", "ms", "speedup", "per process"], ratio_rows))]
    combined_rows = [[c["backend"], c["batch"], _fmt(c["p50_ms"]), ", ".join(f"{v:.1f}" for v in c["p50_ms"]["values"])]
                     for c in payload["combined_p50_ms"]]
    sections.append((f"speech + text + head p50 ms ({payload['settings']['ref_audio_s']:g} s audio, "
                     f"{payload['settings']['head_text_tokens']} tokens): median (min-max)",
                     markdown_table(["backend", "batch", "ms", "per process"], combined_rows)))
    for graph in ("speech_encoder", "text_encoder", "head"):
        rows = [[p["backend"], p["batch"], p["audio_s"], p["text_tokens"], _fmt(p["p50_ms"]),
                 ", ".join(f"{v:.1f}" for v in p["p50_ms"]["values"])]
                for p in payload["points"] if p["graph"] == graph]
        sections.append((f"{graph}: p50 ms, median (min-max) over processes",
                         markdown_table(["backend", "batch", "audio s", "tokens", "p50 ms", "per process"], rows)))
    procs = "; ".join(
        f"process {p['index']}: other processes kept {_cores(p.get('other_cores'))} cores busy, "
        f"load average {p['load_average']['before'][0]:.2f} before, "
        f"{p['load_average']['after'][0]:.2f} after, yardstick {p['yardstick_gflops'].get('start')}-"
        f"{p['yardstick_gflops'].get('end')} GFLOP/s, {p['wall_s']:.0f} s" for p in payload["processes"])
    backends = "; ".join(f"{b['backend']} ({b.get('provider')}): "
                         + ", ".join(f"{g} {p}" for g, p in (b.get("precision") or {}).items())
                         for b in payload["processes"][0]["backends"])
    busy = [p["index"] for p in payload["processes"]
            if p.get("other_cores") is None or p["other_cores"] > BUSY_OTHER_CORES]
    notes = [
        *([f"**not a figure to quote**: while process(es) {', '.join(map(str, busy))} measured, other processes "
           f"kept more than {BUSY_OTHER_CORES:g} cores busy, or it could not be measured (torch eager suffers far "
           "more from other work than ONNX Runtime)"] if busy else []),
        f"preset **{payload['preset']}**, random weights; {n} separate processes one after the other, each "
        "loading every backend and alternating them point by point (`python benchmarks/models.py` per process)",
        f"backends: {backends}",
        procs,
        "max abs difference vs " + str(payload["processes"][0]["agreement_max_abs_diff"].get("reference")) + ": "
        + "; ".join(f"{name}: " + ", ".join(f"{g} {v['max_abs']:.1e}" for g, v in d.items())
                    for name, d in payload["processes"][0]["agreement_max_abs_diff"].items()
                    if name != "reference" and d),
    ]
    return f"Model latency, preset {payload['preset']}, {n} processes", sections, notes


def _cores(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"
