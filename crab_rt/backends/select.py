"""Backend choice: load a bundle's graphs on the best backend present, or the one asked for.

`auto` prefers native TensorRT engines (built for this GPU), then ONNX Runtime
with the TensorRT or CUDA execution provider, then ONNX Runtime on the CPU.
torch is the reference backend and only runs when asked for (`--backend
torch`), so an `auto` runtime never imports torch (nor picks it for a bundle
exported with `--no-torch-weights`, where asking for it is a one-line error).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from crab_rt.backends.base import BACKEND_NAMES, GraphSession
from crab_rt.bundle import NO_TORCH_WEIGHTS, PRECISIONS, Bundle
from crab_rt.errors import BackendError, BundleError, ConfigError, DependencyError

logger = logging.getLogger(__name__)

DOCTOR = "crab-rt doctor"  # the command that reports what this machine can run (cli/doctor.py)

__all__ = ["BackendChoice", "load_sessions", "cuda_device_count", "check_gpu_index"]


def cuda_device_count() -> int | None:
    """How many CUDA devices this machine has, or None when it cannot be told.

    Asks CTranslate2 (installed with faster-whisper, the runtime's ASR), else cuda-python; never torch.
    """
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count())
    except Exception:  # noqa: BLE001 - absent or broken: try the next way
        pass
    try:
        from crab_rt.backends.cuda_memory import device_count

        return device_count()
    except Exception:  # noqa: BLE001 - no way to tell: the backends report what they find
        return None


def check_gpu_index(gpu: int | None) -> None:
    """Refuse a GPU index that names no CUDA device, in one line, before anything loads.

    None (CPU) always passes, and so does 0 on a machine without CUDA (`--backend auto` then falls back to the
    CPU); 1 and above need that many devices.

    Raises:
        ConfigError: the index is negative or beyond the devices present.
    """
    if gpu is None:
        return
    if gpu < 0:
        raise ConfigError(f"--gpu {gpu}: a GPU index is >= 0")
    count = cuda_device_count()
    if count is None or gpu < count or (count == 0 and gpu == 0):
        return
    if count == 0:
        raise ConfigError(f"--gpu {gpu}: no CUDA device is available on this machine (leave out --gpu for the CPU)")
    raise ConfigError(f"--gpu {gpu}: GPU {gpu} does not exist; this machine has {count} CUDA device(s), "
                      f"index 0 to {count - 1}")


@dataclass(frozen=True)
class BackendChoice:
    """What was picked and why (printed by the CLI)."""

    backend: str
    device: str
    provider: str
    precision: str
    reason: str

    def summary(self) -> str:
        """What runs where, without the reasons: the CLI's status line."""
        return f"backend {self.backend} ({self.provider}, {self.precision}) on {self.device}"

    def describe(self) -> str:
        """What runs where and why (`-v`, `crab-rt doctor`, /healthz)."""
        return f"{self.summary()}: {self.reason}"


def _ort(bundle: Bundle, provider: str, gpu: int, precision: str, threads: int | Mapping[str, int],
         spinning: bool, cpu_int8: bool = True) -> dict[str, GraphSession]:
    """ONNX Runtime sessions; on the CPU at fp32, the bundle's int8 encoders when their parity holds."""
    from crab_rt.backends.onnxruntime import OrtSession, cpu_int8_graphs, ort_providers
    from crab_rt.runtime.cores import threads_for

    int8 = cpu_int8_graphs(bundle) if provider == "cpu" and precision == "fp32" and cpu_int8 else ()
    sessions = {}
    for name in bundle.graph_names:
        providers = None
        if provider == "tensorrt":
            cache = bundle.root / "engines" / "ort-trt-cache"
            providers = ort_providers("tensorrt", gpu, cache, precision == "fp16", None)
        graph_precision = "int8" if name in int8 else precision
        n_threads = threads_for(threads, name)
        sessions[name] = OrtSession(bundle.graph_path(name, graph_precision), name, provider, gpu,
                                    bundle.graph_io(name, graph_precision), n_threads, providers, spinning)
        sessions[name].precision = graph_precision
    return sessions


def _cpu_precision(sessions: dict[str, GraphSession]) -> str:
    """"int8" when any graph runs int8 (the encoders), else "fp32"."""
    return "int8" if any(getattr(s, "precision", "fp32") == "int8" for s in sessions.values()) else "fp32"


def load_sessions(
    bundle: Bundle,
    backend: str = "auto",
    gpu: int | None = None,
    precision: str = "fp32",
    threads: int | Mapping[str, int] = 0,
    spinning: bool = False,
    cpu_int8: bool = True,
) -> tuple[dict[str, GraphSession], BackendChoice]:
    """Load every graph of `bundle` on one backend.

    Args:
        bundle: a loaded bundle.
        backend: "auto", "tensorrt", "onnxruntime" or "torch".
        gpu: CUDA device index; None means CPU for explicit backends and "any GPU
            0 if present" for auto.
        precision: "fp32" or "fp16" (fp16 needs the bundle's fp16 graphs; on the
            CPU it is refused, since ONNX Runtime's CPU kernels gain nothing from it).
        threads: intra-op CPU threads of each ONNX Runtime session (0 = its default), or a number per graph
            name (`CoreBudget.graph_threads()`; a graph left out gets the default).
        spinning: let ONNX Runtime's idle CPU threads spin (see backends/onnxruntime.py).
        cpu_int8: on ONNX Runtime's CPU at fp32, run the bundle's int8 encoders when it has them and their
            recorded parity holds (`crab_rt.export.int8`); the choice's precision is then "int8".
            False runs every graph fp32.

    Raises:
        ConfigError: unknown backend or precision.
        BackendError / DependencyError: the backend cannot run here (the message ends by pointing to
            `crab-rt doctor` for this bundle and GPU).
        BundleError: the bundle lacks what the backend needs, or its TensorRT engines are stale (the
            message names the rebuild command).
    """
    try:
        return _load_sessions(bundle, backend, gpu, precision, threads, spinning, cpu_int8)
    except (BackendError, DependencyError) as e:
        if DOCTOR in str(e):
            raise
        where = f"--bundle {bundle.root}" + ("" if gpu is None else f" --gpu {gpu}")
        hint = f"`{DOCTOR} {where}` says what this machine can run"
        raise type(e)(f"{e}; {hint}") from e


def _load_sessions(bundle: Bundle, backend: str, gpu: int | None, precision: str, threads: int,
                   spinning: bool, cpu_int8: bool = True) -> tuple[dict[str, GraphSession], BackendChoice]:
    if backend not in BACKEND_NAMES:
        raise ConfigError(f"unknown backend {backend!r} (choose from {', '.join(BACKEND_NAMES)})")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if backend == "auto":
        return _auto(bundle, gpu, precision, threads, spinning, cpu_int8)
    if backend == "tensorrt":
        from crab_rt.backends.tensorrt import load_tensorrt_sessions

        index = 0 if gpu is None else gpu
        sessions = load_tensorrt_sessions(bundle, index, precision)
        return sessions, BackendChoice("tensorrt", f"cuda:{index}", "TensorRT engines", precision, "requested")
    if backend == "torch":
        if not bundle.has_torch_weights:
            raise BundleError(NO_TORCH_WEIGHTS.format(root=bundle.root))
        from crab_rt.backends.torch import load_torch_sessions

        device = "cpu" if gpu is None else f"cuda:{gpu}"
        if precision == "fp16" and gpu is None:
            raise ConfigError("the torch backend runs fp16 on a GPU only (--gpu N); on the CPU use --precision fp32")
        # fp16: the encoders cast at load, the head fp32 (its parity: crab_rt.backends.torch.precision_parity)
        sessions = load_torch_sessions(bundle, device, precision=precision)
        return sessions, BackendChoice("torch", device, "torch eager", precision, "requested")
    provider = "cpu"
    if gpu is not None:
        from crab_rt.backends.onnxruntime import available_providers

        provider = "cuda" if "CUDAExecutionProvider" in available_providers() else None
        if provider is None:
            raise BackendError(f"--gpu {gpu} with onnxruntime needs onnxruntime-gpu (CUDAExecutionProvider is absent): "
                               "pip install 'crab-rt[gpu]' (x86_64), or the jetson-ai-lab wheel on Jetson")
    if provider == "cpu" and precision == "fp16":
        raise ConfigError("fp16 graphs are for GPUs; on the CPU use --precision fp32")
    sessions = _ort(bundle, provider, gpu or 0, precision, threads, spinning, cpu_int8)
    first = next(iter(sessions.values()))
    if provider == "cpu":
        precision = _cpu_precision(sessions)
    return sessions, BackendChoice("onnxruntime", first.device, first.provider, precision, "requested")


def _auto(bundle: Bundle, gpu: int | None, precision: str, threads: int, spinning: bool, cpu_int8: bool = True):
    from crab_rt.backends.onnxruntime import available_providers

    index = 0 if gpu is None else gpu
    reasons = []
    try:
        from crab_rt.backends.tensorrt import load_tensorrt_sessions, tensorrt_available

        ok, why = tensorrt_available()
    except ImportError as e:  # pragma: no cover - the module itself is always present
        ok, why = False, str(e)
    if ok:
        try:
            sessions = load_tensorrt_sessions(bundle, index, precision)
            return sessions, BackendChoice("tensorrt", f"cuda:{index}", "TensorRT engines", precision,
                                           "auto: TensorRT engines for this GPU are built")
        except Exception as e:  # any failure falls through to the next backend, reported
            reasons.append(f"TensorRT: {str(e).splitlines()[0]}")
    else:
        reasons.append(f"TensorRT: {why}")
    have = available_providers()
    for provider, ep in (("tensorrt", "TensorrtExecutionProvider"), ("cuda", "CUDAExecutionProvider")):
        if ep in have:
            try:
                sessions = _ort(bundle, provider, index, precision, threads, spinning)
                return sessions, BackendChoice("onnxruntime", f"cuda:{index}", ep, precision,
                                               "auto: " + "; ".join(reasons + [f"using {ep}"]))
            except Exception as e:
                reasons.append(f"onnxruntime {ep}: {str(e).splitlines()[0]}")
    if gpu is not None:
        reasons.append("no GPU backend could start, running on the CPU")
    if precision == "fp16":
        logger.warning("fp16 needs a GPU backend; running fp32 on the CPU")
    sessions = _ort(bundle, "cpu", 0, "fp32", threads, spinning, cpu_int8)
    return sessions, BackendChoice("onnxruntime", "cpu", "CPUExecutionProvider", _cpu_precision(sessions),
                                   "auto: " + "; ".join(reasons + ["no GPU provider in onnxruntime, using the CPU"]))
