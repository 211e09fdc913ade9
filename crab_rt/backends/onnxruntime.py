"""ONNX Runtime backend: CPU, and the CUDA / TensorRT execution providers.

The CUDA and TensorRT providers come with `onnxruntime-gpu` (which replaces
the CPU `onnxruntime` package; never install both). crab-rt requires neither:
`crab-rt[cpu]` or `crab-rt[gpu]` picks one, or the user brings their own
(Jetson), and `import_onnxruntime` says so in one line when none is there. On
a GPU, inputs and outputs go through IOBinding so the session does the copies
on its own device; on the CPU plain `run` is already zero-copy.

Intra-op threads do not spin while idle unless asked (`spinning=True`).
Spinning buys one session alone about 4 % (speech encoder, 4 s, 2 cores),
but the pipeline runs three sessions, faster-whisper and the VAD in parallel
threads, and idle workers spinning on every core doubled the text encoder
and head times there (`benchmarks/results/`, e2e before/after).

On the CPU a session is opened with the options `SESSION_DEFAULTS` lists
(`OrtSession.options` records what was set), and:

- a bundle's int8 encoders (`crab_rt.export.int8`) run instead of the fp32
  ones when the parity recorded at export is within its bound
  (`cpu_int8_graphs` checks it on every load): 1.7-1.9x (speech) and 2.6-3x
  (text) faster on AVX-512 VNNI, probabilities within 1e-2 of fp32.
- each graph's intra-op threads come from the caller (the pipeline's core
  budget, `crab_rt.runtime.cores`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from crab_rt.backends.base import GraphSession, check_inputs
from crab_rt.errors import BackendError, BundleError, DependencyError

__all__ = ["ORT_MISSING", "SESSION_DEFAULTS", "OrtSession", "ort_providers",
           "available_providers", "import_onnxruntime", "cpu_int8_graphs"]

log = logging.getLogger(__name__)

PROVIDERS = ("cpu", "cuda", "tensorrt")

# What every session sets besides threads and spinning, so that a measurement can name its settings: all
# graph optimisations (ORT_ENABLE_ALL: the extended fusions such as BiasGelu, FusedMatMul and the int8
# DynamicQuantizeMatMul, and the layout ones), one graph node at a time (the parallelism is inside the
# nodes), and the CPU memory arena with memory patterns (buffers reused between calls of the same shape).
SESSION_DEFAULTS = {"graph_optimization_level": "ORT_ENABLE_ALL", "execution_mode": "ORT_SEQUENTIAL",
                    "enable_cpu_mem_arena": True, "enable_mem_pattern": True}

ORT_MISSING = (
    "ONNX Runtime is not installed (crab-rt leaves the build to you): pip install 'crab-rt[cpu]' for the CPU, "
    "or 'crab-rt[gpu]' for NVIDIA GPUs on x86_64; on Jetson install onnxruntime-gpu from the jetson-ai-lab index "
    "for your JetPack; `crab-rt doctor` says what this machine can run"
)


def import_onnxruntime() -> Any:
    """Import the `onnxruntime` module, whichever build provides it.

    Raises:
        DependencyError: no ONNX Runtime build is installed (names the extras), or the installed one fails to load.
    """
    try:
        import onnxruntime
    except ImportError as e:
        if e.name == "onnxruntime":
            raise DependencyError(ORT_MISSING) from e
        raise DependencyError(
            f"ONNX Runtime is installed but does not load ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            "`crab-rt doctor` checks the installation"
        ) from e
    return onnxruntime


def available_providers() -> list[str]:
    """Execution providers of the installed ONNX Runtime build, e.g. ["CPUExecutionProvider"].

    Raises:
        DependencyError: ONNX Runtime is not installed.
    """
    return list(import_onnxruntime().get_available_providers())


def ort_providers(provider: str, gpu: int, trt_cache_dir: Path | None, fp16: bool, profile: str | None) -> list:
    """The providers list for `InferenceSession`, best first, CPU last as fallback.

    Raises:
        BackendError: the provider is not in this onnxruntime build.
    """
    have = available_providers()
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if provider == "cuda":
        if "CUDAExecutionProvider" not in have:
            raise BackendError(
                "onnxruntime has no CUDA provider here (the CPU build?): pip uninstall -y onnxruntime && "
                "pip install 'crab-rt[gpu]'")
        return [("CUDAExecutionProvider", {"device_id": gpu}), "CPUExecutionProvider"]
    if provider == "tensorrt":
        if "TensorrtExecutionProvider" not in have:
            raise BackendError(
                "onnxruntime has no TensorRT provider here (needs onnxruntime-gpu and TensorRT libraries)")
        options: dict = {"device_id": gpu, "trt_fp16_enable": fp16}
        if trt_cache_dir is not None:
            trt_cache_dir.mkdir(parents=True, exist_ok=True)
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache_dir),
                           trt_timing_cache_enable=True)
        if profile:
            options.update(profile)
        return [("TensorrtExecutionProvider", options), ("CUDAExecutionProvider", {"device_id": gpu}),
                "CPUExecutionProvider"]
    raise BackendError(f"unknown onnxruntime provider {provider!r} (choose from {', '.join(PROVIDERS)})")


def cpu_int8_graphs(bundle: Any) -> tuple[str, ...]:
    """The graphs of `bundle` to run int8 on the CPU: those its `cpu_int8` entry lists, if its parity holds.

    The manifest entry is written by `crab_rt.export.int8.int8_entry`. Its recorded parity is checked
    here again: a listed graph without an int8 file, a parity that is missing, or probabilities beyond
    the recorded bound (a hand-edited manifest, or another exporter) leave every graph fp32, with a
    warning naming the reason.

    Returns:
        graph names, in the bundle's order; () when the bundle has no int8 graphs.
    """
    entry = bundle.manifest.get("cpu_int8")
    listed = entry.get("graphs") if isinstance(entry, dict) else None
    if not listed:
        return ()
    parity, bound = entry.get("parity") or {}, (entry.get("bound") or {}).get("probabilities")
    err = parity.get("probabilities")
    reason = None
    if not isinstance(err, (int, float)) or not isinstance(bound, (int, float)):
        reason = "its parity (probabilities vs fp32) is not recorded"
    elif not (err <= bound and entry.get("within_bound") is True):
        reason = f"its probabilities differ from fp32 by {err:.3g}, beyond the bound {bound:g}"
    else:
        missing = [g for g in listed if not bundle.has_graph(g, "int8")]
        if missing:
            reason = f"it lists int8 {', '.join(missing)} without the graph"
    if reason is not None:
        log.warning("%s: int8 graphs not used, %s; running fp32 (re-export to fix)", bundle.root, reason)
        return ()
    return tuple(g for g in bundle.graph_names if g in listed)


class OrtSession(GraphSession):
    """One ONNX graph in an `onnxruntime.InferenceSession`.

    Args:
        path: the .onnx file.
        name: graph name.
        provider: "cpu", "cuda" or "tensorrt".
        gpu: CUDA device index for the GPU providers.
        expected_io: the bundle's recorded I/O; names are checked on load.
        threads: intra-op threads on the CPU (0 = onnxruntime's default).
        providers: a ready providers list (overrides `provider`).
        spinning: let idle intra-op threads spin for the next call (see above).

    Attributes:
        options: what the session was opened with (`SESSION_DEFAULTS`, intra_op_num_threads (0 = ONNX
            Runtime's default), allow_spinning), for tests and benchmark records.
        precision: the graph file's precision ("fp32", "fp16" or "int8"), set by whoever picked the file.
    """

    backend = "onnxruntime"
    precision = "fp32"

    def __init__(
        self,
        path: Path,
        name: str,
        provider: str = "cpu",
        gpu: int = 0,
        expected_io: dict | None = None,
        threads: int = 0,
        providers: list | None = None,
        spinning: bool = False,
    ) -> None:
        ort = import_onnxruntime()
        self.name = name
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                   SESSION_DEFAULTS["graph_optimization_level"])
        options.execution_mode = getattr(ort.ExecutionMode, SESSION_DEFAULTS["execution_mode"])
        options.enable_cpu_mem_arena = SESSION_DEFAULTS["enable_cpu_mem_arena"]
        options.enable_mem_pattern = SESSION_DEFAULTS["enable_mem_pattern"]
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.log_severity_level = 3
        self.options = {**SESSION_DEFAULTS, "intra_op_num_threads": threads, "allow_spinning": spinning}
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=providers or ort_providers(provider, gpu, None, False, None)
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise BundleError(f"{path}: onnxruntime cannot load the graph ({str(e).splitlines()[0]})") from e
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())
        if expected_io is not None:
            want_in, want_out = tuple(expected_io["inputs"]), tuple(expected_io["outputs"])
            if set(want_in) != set(self.input_names) or set(want_out) != set(self.output_names):
                raise BundleError(
                    f"{path}: graph I/O {list(self.input_names)} -> {list(self.output_names)} does not match the "
                    f"bundle manifest {list(want_in)} -> {list(want_out)}"
                )
        active = self._session.get_providers()[0]
        self.provider = active
        self.device = "cpu" if active == "CPUExecutionProvider" else f"cuda:{gpu}"
        self._gpu = gpu
        self._use_binding = self.device != "cpu"

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(self, inputs)
        if not self._use_binding:
            feed = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
            outputs = self._session.run(list(self.output_names), feed)
            return dict(zip(self.output_names, outputs))
        binding = self._session.io_binding()
        for k, v in inputs.items():
            binding.bind_cpu_input(k, np.ascontiguousarray(v))
        for k in self.output_names:
            binding.bind_output(k, "cuda", self._gpu)
        self._session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))
