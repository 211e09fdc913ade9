"""The machine a benchmark ran on: CPU, cores, RAM, GPU, library versions, and its results folder."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

__all__ = ["describe_machine", "machine_slug", "results_dir", "peak_rss_mb", "cpu_seconds"]

_PACKAGES = ("numpy", "torch", "onnxruntime", "onnxruntime-gpu", "transformers", "faster-whisper", "ctranslate2",
             "tensorrt")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gpus() -> list[str]:
    """GPU names from nvidia-smi (no torch import); empty without an NVIDIA driver."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe_machine(threads: int | None = None) -> dict:
    """CPU model, cores, RAM, GPUs, OS, Python and package versions (and the thread setting, if given)."""
    desc = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": _ram_gb(),
        "gpus": _gpus(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {p: v for p in _PACKAGES if (v := _version(p)) is not None},
    }
    if threads is not None:
        desc["threads"] = threads
    return desc


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def machine_slug(desc: dict | None = None) -> str:
    """`<gpu name>` when a GPU is present, else `cpu-<N>core-<cpu model>`, lower-case with dashes."""
    desc = desc or describe_machine()
    if desc["gpus"]:
        return _slug(desc["gpus"][0])
    return f"cpu-{desc['cores']}core-{_slug(desc['cpu'])}"


def results_dir(out_dir: str | Path | None, desc: dict) -> Path:
    """`out_dir`, or `benchmarks/results/<machine>` under the current folder."""
    path = Path(out_dir) if out_dir else Path("benchmarks") / "results" / machine_slug(desc)
    path.mkdir(parents=True, exist_ok=True)
    return path


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (getrusage)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
