"""What every benchmark kind shares: options, thread pinning, and writing the results."""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from crab_rt.errors import ConfigError

__all__ = ["add_common_arguments", "add_spinning_argument", "resolve_threads", "start_run", "finish_run"]


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", default=None,
                   help="results folder (default benchmarks/results/<machine> under the current folder)")
    p.add_argument("--tag", default=None, help="suffix of the result files, e.g. before / after")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for ONNX Runtime intra-op and torch (default 0 = number of cores)")
    p.add_argument("--cache-dir", default=None,
                   help="where benchmark bundles and random Whispers are built once (default ~/.cache/crab-rt/bench)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated inputs (default 0)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="print only the output paths")


def add_spinning_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ort-spinning", action="store_true",
                   help="let idle ONNX Runtime CPU threads spin (the runtime's default is off; see "
                        "crab_rt/backends/onnxruntime.py)")


def resolve_threads(threads: int) -> int:
    """0 -> the number of cores; negative is refused."""
    if threads < 0:
        raise ConfigError(f"--threads must be >= 0 (0 = number of cores), got {threads}")
    return threads or os.cpu_count() or 1


def code_version() -> dict:
    """crab-rt's version and, in a git checkout, the commit (with "+dirty" for uncommitted changes)."""
    import subprocess

    import crab_rt

    out = {"crab_rt": crab_rt.__version__, "git": None}
    root = Path(crab_rt.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            out["git"] = commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


def start_run(args: argparse.Namespace, threads: int) -> dict:
    """Machine description, results folder and the CPU/wall clocks at the start."""
    from crab_bench.bundles import default_cache_dir
    from crab_bench.machine import cpu_seconds, describe_machine, matmul_gflops, results_dir

    if args.tag is not None and (not args.tag or not all(c.isalnum() or c in "-_." for c in args.tag)):
        raise ConfigError(f"--tag {args.tag!r} must be letters, digits, '-', '_' or '.'")
    machine = describe_machine(threads)
    machine["matmul_gflops"] = {"start": matmul_gflops()}
    return {"machine": machine, "out_dir": results_dir(args.out_dir, machine), "tag": args.tag,
            "cache_dir": Path(args.cache_dir) if args.cache_dir else default_cache_dir(),
            "code": code_version(), "cpu0": cpu_seconds(), "wall0": time.perf_counter(), "no_plots": args.no_plots,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""}


def finish_run(ctx: dict, name: str, payload: dict, markdown: tuple[str, list, list],
               plots: Callable[[Path], list[Path]] | None, say=print) -> dict[str, Path]:
    """Write `<name>[_tag].json`, `.md` and the plots; returns the paths written."""
    from crab_bench.machine import cpu_seconds, matmul_gflops, peak_rss_mb
    from crab_bench.report import output_paths, write_json, write_markdown

    paths = output_paths(ctx["out_dir"], name, ctx["tag"])
    ctx["machine"]["matmul_gflops"]["end"] = matmul_gflops()
    payload = {
        "name": name, "tag": ctx["tag"], "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": ctx["command"], "code": ctx["code"], "machine": ctx["machine"], **payload,
        "process": {"wall_s": round(time.perf_counter() - ctx["wall0"], 2),
                    "cpu_s": round(cpu_seconds() - ctx["cpu0"], 2), "peak_rss_mb": peak_rss_mb()},
    }
    written = {"json": write_json(paths["json"], payload)}
    title, sections, notes = markdown
    m = ctx["machine"]
    yardstick = m["matmul_gflops"]
    machine_note = (f"machine: {m['cpu']} ({' '.join(m['cpu_features']) or 'no listed vector extensions'}), "
                    f"{m['cores']} cores, {m['ram_gb']} GB RAM, GPU: {', '.join(m['gpus']) or 'none'}; "
                    f"threads {m.get('threads')}; python {m['python']}, "
                    + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
                    + f"; yardstick (numpy fp32 matmul): {yardstick['start']:g} GFLOP/s at the start, "
                      f"{yardstick['end']:g} at the end; crab-rt {ctx['code']['crab_rt']}"
                    + (f" (git {ctx['code']['git']})" if ctx["code"]["git"] else ""))
    written["md"] = write_markdown(paths["md"], title, sections, [machine_note, *notes,
                                                                   f"JSON: `{paths['json'].name}`"])
    if plots is not None and not ctx["no_plots"]:
        for i, p in enumerate(plots(paths["stem"])):
            written[f"png{i}"] = p
    for p in written.values():
        say(f"wrote {p}")
    return written
