"""What every benchmark kind shares: the common options, thread pinning, and writing the results.

Each kind's options are a frozen dataclass extending `CommonBenchConfig`; its
flags take their defaults from the dataclass fields (`add_config_option` from
crab_rt's CLI: argparse default None, given flags replace fields), and
`validate()` checks every field, naming the flag, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import math
import os
import sys
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from crab_rt.cli._options import add_config_option, field_default
from crab_rt.data.synth import VOICES
from crab_rt.errors import ConfigError

__all__ = ["CommonBenchConfig", "add_common_arguments", "add_spinning_argument", "add_list_option", "add_bool_option",
           "parse_names", "check_range", "check_choice", "check_names", "check_compute_type", "resolve_threads",
           "start_run", "finish_run"]


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_range(option: str, value: Any, low: float, high: float = math.inf, note: str = "") -> None:
    """Raise ConfigError unless `low <= value <= high`; a sequence must be non-empty with every item in range."""
    many = isinstance(value, (tuple, list))
    items = list(value) if many else [value]
    if not items or any(not low <= v <= high for v in items):
        allowed = f">= {_show(low)}" if high == math.inf else f"in [{_show(low)}, {_show(high)}]"
        shown = (",".join(_show(v) for v in items) or "an empty list") if many else _show(value)
        raise ConfigError(f"{option} must be {allowed}{note}, got {shown}")


def check_choice(option: str, value: Any, choices: Collection[str]) -> None:
    """Raise ConfigError unless `value` is one of `choices`."""
    if value not in choices:
        raise ConfigError(f"{option} {value!r} is not one of {', '.join(choices)}")


def check_names(option: str, values: Sequence[str], choices: Collection[str], what: str) -> None:
    """Raise ConfigError for the first of `values` (a list option) not in `choices`."""
    for v in values:
        if v not in choices:
            raise ConfigError(f"{option}: unknown {what} {v!r} (choose from {', '.join(choices)})")


def check_compute_type(option: str, value: str) -> None:
    """Raise ConfigError unless `value` is a CTranslate2 compute type (the runtime's AsrConfig check)."""
    from crab_rt.runtime.asr import AsrConfig

    try:
        AsrConfig(model="x", compute_type=value).validate()
    except ConfigError as e:
        raise ConfigError(f"{option}: {e}") from None


@dataclasses.dataclass(frozen=True)
class CommonBenchConfig:
    """Options of every benchmark kind; each kind's config extends it.

    Attributes:
        out_dir: results folder; None = benchmarks/results/<machine> under the current folder.
        tag: suffix of the result files (`<name>_<tag>.json`): letters, digits, '-', '_', '.'; None = none.
        threads: CPU threads for ONNX Runtime intra-op and torch; 0 = the number of cores.
        cache_dir: where benchmark bundles and random Whispers are built once; None = ~/.cache/crab-rt/bench.
        seed: seed of the generated inputs (>= 0).
        voice: voice of the generated conversations: "harmonic" (the home-made voice, not speech: the
            committed results use it) or "espeak" (speech by espeak-ng, for a real Whisper, which would
            invent text on the home-made voice).
        plots: write the PNG plots.
        quiet: no progress lines (and logging at WARNING).
    """

    out_dir: str | Path | None = None
    tag: str | None = None
    threads: int = 0
    cache_dir: str | Path | None = None
    seed: int = 0
    voice: str = "harmonic"
    plots: bool = True
    quiet: bool = False

    def validate(self) -> None:
        """Raise ConfigError naming the first bad option, its value and the allowed range."""
        check_range("--threads", self.threads, 0, note=" (0 = number of cores)")
        if self.tag is not None and (not self.tag or not all(c.isalnum() or c in "-_." for c in self.tag)):
            raise ConfigError(f"--tag {self.tag!r} must be letters, digits, '-', '_' or '.'")
        check_range("--seed", self.seed, 0)
        check_choice("--voice", self.voice, VOICES)

    def record(self) -> dict:
        """The options as JSON values, for the result files."""
        return {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in dataclasses.asdict(self).items()}


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    cls = CommonBenchConfig
    add_config_option(p, "--out-dir", cls, "out_dir", "results folder", type=str,
                      default_text="benchmarks/results/<machine> under the current folder")
    add_config_option(p, "--tag", cls, "tag", "suffix of the result files, e.g. before / after", type=str)
    add_config_option(p, "--threads", cls, "threads", "CPU threads for ONNX Runtime intra-op and torch, 0 = number "
                      "of cores")
    add_config_option(p, "--cache-dir", cls, "cache_dir", "where benchmark bundles and random Whispers are built once",
                      type=str, default_text="~/.cache/crab-rt/bench")
    add_config_option(p, "--seed", cls, "seed", "seed of the generated inputs")
    add_config_option(p, "--voice", cls, "voice", "voice of the generated conversations (espeak: speech, for a "
                      "real Whisper)", choices=VOICES)
    add_config_option(p, "--no-plots", cls, "plots", "skip the PNG plots")
    add_config_option(p, "--quiet", cls, "quiet", "print only the output paths")


def add_spinning_argument(p: argparse.ArgumentParser, cls: type) -> None:
    add_config_option(p, "--ort-spinning", cls, "ort_spinning", "let idle ONNX Runtime CPU threads spin (the "
                      "runtime's default is off; see crab_rt/backends/onnxruntime.py)")


def parse_names(text: str) -> tuple[str, ...]:
    """"a, b," -> ("a", "b")."""
    return tuple(s.strip() for s in text.split(",") if s.strip())


def add_list_option(p: argparse.ArgumentParser, flag: str, cls: type, field: str, help: str,
                    item: type = str, **kwargs: Any) -> argparse.Action:
    """A comma-separated flag for the tuple field `cls.field` (`--audio-s 1,2,4` -> (1.0, 2.0, 4.0)).

    Numbers (`item` int or float) are parsed when the config is built: a bad list is a
    ConfigError, as in `crab_bench.stats.parse_list`.
    """
    from crab_bench.stats import parse_list

    default = field_default(cls, field)
    kwargs.setdefault("default_text", ",".join(_show(v) for v in default) or "none")
    convert = parse_names if item is str else (lambda text: tuple(parse_list(text, item)))
    kwargs.setdefault("convert", convert)
    return add_config_option(p, flag, cls, field, help, type=str, **kwargs)


def add_bool_option(p: argparse.ArgumentParser, flag: str, cls: type, field: str, help: str) -> argparse.Action:
    """`--x` / `--no-x` for the bool field `cls.field` (add_config_option's switch only flips the default)."""
    shown = flag if field_default(cls, field) else "--no-" + flag.removeprefix("--")
    return add_config_option(p, flag, cls, field, help, action=argparse.BooleanOptionalAction, default_text=shown)


def resolve_threads(threads: int) -> int:
    """0 -> the number of cores (`threads` >= 0: CommonBenchConfig.validate checks it)."""
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


def start_run(config: CommonBenchConfig, threads: int) -> dict:
    """Machine description, results folder and the CPU/wall clocks at the start."""
    from crab_bench.bundles import default_cache_dir
    from crab_bench.machine import cpu_seconds, describe_machine, matmul_gflops, results_dir

    machine = describe_machine(threads)
    machine["matmul_gflops"] = {"start": matmul_gflops()}
    return {"machine": machine, "out_dir": results_dir(config.out_dir, machine), "tag": config.tag,
            "cache_dir": Path(config.cache_dir) if config.cache_dir else default_cache_dir(),
            "code": code_version(), "cpu0": cpu_seconds(), "wall0": time.perf_counter(), "plots": config.plots,
            "config": config.record(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""}


def finish_run(ctx: dict, name: str, payload: dict, markdown: tuple[str, list, list],
               plots: Callable[[Path], list[Path]] | None, say=print) -> dict[str, Path]:
    """Write `<name>[_tag].json`, `.md` and the plots; returns the paths written."""
    from crab_bench.machine import cpu_seconds, matmul_gflops, peak_rss_mb
    from crab_bench.report import output_paths, write_json, write_markdown

    paths = output_paths(ctx["out_dir"], name, ctx["tag"])
    ctx["machine"]["matmul_gflops"]["end"] = matmul_gflops()
    payload = {
        "name": name, "tag": ctx["tag"], "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": ctx["command"], "config": ctx["config"], "code": ctx["code"], "machine": ctx["machine"],
        **payload,
        "process": {"wall_s": round(time.perf_counter() - ctx["wall0"], 2),
                    "cpu_s": round(cpu_seconds() - ctx["cpu0"], 2), "peak_rss_mb": peak_rss_mb()},
    }
    written = {"json": write_json(paths["json"], payload)}
    title, sections, notes = markdown
    m = ctx["machine"]
    yardstick = m["matmul_gflops"]
    machine_note = (f"machine: {m['cpu']}" + (f" [{m['cpu_id']}]" if m.get("cpu_id") else "")
                    + f" ({' '.join(m['cpu_features']) or 'no listed vector extensions'}), "
                    f"{m['cores']} cores, {m['ram_gb']} GB RAM, GPU: {', '.join(m['gpus']) or 'none'}; "
                    f"threads {m.get('threads')}; python {m['python']}, "
                    + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
                    + f"; yardstick (numpy fp32 matmul): {yardstick['start']:g} GFLOP/s at the start, "
                      f"{yardstick['end']:g} at the end; crab-rt {ctx['code']['crab_rt']}"
                    + (f" (git {ctx['code']['git']})" if ctx["code"]["git"] else ""))
    written["md"] = write_markdown(paths["md"], title, sections, [machine_note, *notes,
                                                                   f"JSON: `{paths['json'].name}`"])
    if plots is not None and ctx["plots"]:
        for i, p in enumerate(plots(paths["stem"])):
            written[f"png{i}"] = p
    for p in written.values():  # also under --quiet: the output paths are what it promises to print
        print(f"wrote {p}")
    return written
