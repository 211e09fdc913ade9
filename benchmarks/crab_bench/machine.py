"""The machine a benchmark ran on: CPU, cores, RAM, GPU, library versions, a speed yardstick, and its results folder."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from importlib import metadata
from pathlib import Path

__all__ = ["describe_machine", "machine_slug", "results_dir", "peak_rss_mb", "cpu_seconds", "matmul_gflops"]

_ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "asimd", "sve")
_PACKAGES = ("numpy", "torch", "onnxruntime", "onnxruntime-gpu", "transformers", "faster-whisper", "ctranslate2",
             "tensorrt")


def _cpu_model_and_features() -> tuple[str, list[str]]:
    """The CPU model name, and the vector extensions from `_ISA` it reports (what int8 / bf16 kernels can use)."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    model, flags = None, set()
    for line in lines:
        key = line.lower()
        if model is None and key.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        elif not flags and key.startswith(("flags", "features")):
            flags.update(line.split(":", 1)[1].split())
    model = model or platform.processor() or platform.machine() or "unknown-cpu"
    return model, [f for f in _ISA if f in flags]


def _cpu_id() -> str | None:
    """Vendor, family and model numbers ("AuthenticAMD family 26 model 2"), or None where /proc/cpuinfo lacks them.

    The model name and the feature flags do not tell CPU generations apart: an AMD EPYC of family 25 (Zen 4)
    and one of family 26 (Zen 5) both say "AMD EPYC" with AVX-512, VNNI and BF16, but Zen 4 runs 512-bit
    instructions on 256-bit units, so ONNX Runtime's AVX-512 kernels gain nothing over AVX2 code there while
    Zen 5 runs them twice as wide; torch's MKL uses its AVX2 path on AMD either way. The CPU's ratio of
    ONNX Runtime to torch depends on it.
    """
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    found: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("vendor_id", "cpu family", "model") and key not in found:
            found[key] = value.strip()
        if len(found) == 3:
            break
    if "cpu family" not in found:
        return None
    return f"{found.get('vendor_id', '?')} family {found['cpu family']} model {found.get('model', '?')}"


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
    cpu, features = _cpu_model_and_features()
    desc = {
        "cpu": cpu,
        "cpu_features": features,
        "cpu_id": _cpu_id(),
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


def cpu_seconds(children: bool = False) -> float:
    """User + system CPU seconds of this process so far (all threads); with `children`, plus those of its
    child processes that have ended."""
    import resource

    usages = [resource.getrusage(resource.RUSAGE_SELF)]
    if children:
        usages.append(resource.getrusage(resource.RUSAGE_CHILDREN))
    return sum(r.ru_utime + r.ru_stime for r in usages)


def matmul_gflops(seconds: float = 0.2, rounds: int = 3, n: int = 512) -> float:
    """fp32 matrix-multiply throughput of numpy's BLAS (all its threads) right now, GFLOP/s.

    A yardstick taken at the start and end of every run: a shared or thermally
    limited machine drifts between days, and two runs are comparable only when
    their yardsticks agree. The best of `rounds` rounds of `seconds` each is
    kept, since interference only ever slows a round down.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    best = 0.0
    for _ in range(rounds):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds or calls < 3:
            a @ b
            calls += 1
        best = max(best, 2 * n**3 * calls / elapsed / 1e9)
    return round(best, 1)


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine spent busy so far (/proc/stat: all but idle and iowait); None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")
