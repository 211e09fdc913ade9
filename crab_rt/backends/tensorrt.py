"""The native TensorRT backend: finding this GPU's engines, and `TensorRTSession`.

The engine cache (keys, profiles, staleness) is `crab_rt.backends.engine_cache`.
`tensorrt` and `cuda-python` are imported only inside the functions that need
them. Uses TensorRT 10/11's name-based tensor
API (`set_input_shape`, `set_tensor_address`, `execute_async_v3`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from crab_rt.backends.base import GraphSession, check_inputs
from crab_rt.backends.engine_cache import (
    ENGINE_RECORD,
    ENGINES_DIR,
    check_shape_in_profile,
    expected_record,
    profile_from_json,
    read_engine_record,
    rebuild_hint,
    select_engines,
)
from crab_rt.bundle import PRECISIONS, Bundle
from crab_rt.errors import BackendError, BundleError, CrabError, DependencyError

__all__ = [
    "TENSORRT_HINT",
    "import_tensorrt",
    "tensorrt_available",
    "find_engines",
    "numpy_dtype_name",
    "check_engine_io",
    "TensorRTSession",
    "load_tensorrt_sessions",
]

MIN_TENSORRT_MAJOR = 10

TENSORRT_HINT = (
    "on Jetson it ships with JetPack (python3-libnvinfer); on x86 install it from NVIDIA's index "
    "(pip install tensorrt --extra-index-url https://pypi.nvidia.com) or the TensorRT tarball's python wheel"
)


# Engine dtype allowed for a bundle dtype, with a cast on the way in and out
# (engines whose integer I/O was narrowed to int32 by an older parser).
_COMPATIBLE_DTYPES = {("int64", "int32")}


# --------------------------------------------------------------------------- imports


def import_tensorrt() -> Any:
    """Import the `tensorrt` module, version 10 or newer.

    Raises:
        DependencyError: TensorRT is missing (says how to install it) or too old.
    """
    try:
        import tensorrt as trt
    except ImportError as e:
        raise DependencyError(f"the TensorRT backend needs 'tensorrt', which is not installed: {TENSORRT_HINT}") from e
    version = str(getattr(trt, "__version__", "0"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major < MIN_TENSORRT_MAJOR:
        raise DependencyError(
            f"TensorRT {version} is too old: crab-rt needs TensorRT {MIN_TENSORRT_MAJOR} or newer "
            f"(name-based tensor API); {TENSORRT_HINT}"
        )
    return trt


def tensorrt_available(gpu_index: int = 0) -> tuple[bool, str]:
    """Whether the TensorRT backend can run here (for backend auto-selection).

    Args:
        gpu_index: CUDA device that would be used.

    Returns:
        (True, "TensorRT 10.9.0 on NVIDIA H100 ... (sm90)") or (False, the one-line reason).
    """
    try:
        trt = import_tensorrt()
        from crab_rt.backends.cuda_memory import require_device

        info = require_device(gpu_index)
    except CrabError as e:
        return False, str(e)
    return True, f"TensorRT {trt.__version__} on {info.name} ({info.sm})"


# --------------------------------------------------------------------------- cache key


def find_engines(bundle: Bundle, gpu_index: int = 0, precision: str | None = None) -> Path:
    """Locate the engine folder built for this GPU and TensorRT version.

    Args:
        bundle: the loaded bundle.
        gpu_index: CUDA device the engines will run on.
        precision: "fp32" or "fp16"; None takes fp16 engines when present, else fp32.

    Returns:
        `<bundle>/engines/<key>`.

    Raises:
        DependencyError: TensorRT or cuda-python missing.
        BackendError: no such GPU.
        BundleError: no engines, or stale ones (different GPU, compute capability,
            TensorRT version, ONNX sha256 or shape profile), with the rebuild command.
    """
    from crab_rt.backends.cuda_memory import require_device

    trt = import_tensorrt()
    info = require_device(gpu_index)
    cc = f"{info.compute_capability[0]}.{info.compute_capability[1]}"
    if precision is not None and precision not in PRECISIONS:
        raise BackendError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision:
        wanted = [precision]
    else:
        wanted = [p for p in ("fp16", "fp32") if all(bundle.has_graph(g, p) for g in bundle.graph_names)]
    expected = [expected_record(bundle.manifest, p, info.name, cc, str(trt.__version__)) for p in wanted]
    return select_engines(bundle.root / ENGINES_DIR, expected, rebuild_hint(bundle.root, gpu_index, precision))


# --------------------------------------------------------------------------- I/O checks


def numpy_dtype_name(trt: Any, dtype: Any) -> str:
    """numpy dtype name ("float32", "int64", ...) of a TensorRT DataType."""
    try:
        return np.dtype(trt.nptype(dtype)).name
    except (TypeError, KeyError, ValueError):
        pass
    by_name = {"FLOAT": "float32", "HALF": "float16", "INT32": "int32", "INT64": "int64",
               "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}
    key = str(dtype).rsplit(".", 1)[-1].upper()
    if key not in by_name:
        raise BackendError(f"TensorRT dtype {dtype} has no numpy equivalent (bf16/fp8 I/O is not supported)")
    return by_name[key]


def check_engine_io(
    graph: str,
    engine_io: Mapping[str, Mapping],
    expected_io: Mapping[str, Mapping],
    hint: str = "rebuild the engines (crab-rt build-engines --force)",
) -> dict[str, str]:
    """Check an engine's I/O tensors against the graph's recorded I/O.

    Args:
        graph: graph name (for messages).
        engine_io: {tensor: {"mode": "input"|"output", "dtype": numpy name, "shape": [dims, -1 dynamic]}}.
        expected_io: {"inputs": {name: {"dtype", "shape"}}, "outputs": {...}} (bundle graph_io).
        hint: the rebuild command appended to errors.

    Returns:
        {tensor: engine dtype name} (differs from the bundle's only for allowed casts, e.g. int64 -> int32).

    Raises:
        BundleError: names, directions, dtypes or fixed dims differ.
    """
    for mode, key in (("input", "inputs"), ("output", "outputs")):
        got = sorted(n for n, t in engine_io.items() if t["mode"] == mode)
        want = sorted(expected_io[key])
        if got != want:
            raise BundleError(f"{graph} engine {key} {got} do not match the bundle graph's {want}; {hint}")
    dtypes = {}
    for name, spec in {**expected_io["inputs"], **expected_io["outputs"]}.items():
        tensor = engine_io[name]
        if tensor["dtype"] != spec["dtype"] and (spec["dtype"], tensor["dtype"]) not in _COMPATIBLE_DTYPES:
            raise BundleError(
                f"{graph} engine tensor {name} is {tensor['dtype']}, the bundle graph's is {spec['dtype']}; {hint}"
            )
        shape, want_shape = list(tensor["shape"]), list(spec["shape"])
        fixed_mismatch = any(
            isinstance(w, int) and d >= 0 and d != w for d, w in zip(shape, want_shape)
        )
        if len(shape) != len(want_shape) or fixed_mismatch:
            raise BundleError(
                f"{graph} engine tensor {name} has shape {shape}, the bundle graph's is {want_shape}; {hint}"
            )
        dtypes[name] = tensor["dtype"]
    return dtypes


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _force_rebuild_hint(engine_folder: Path, gpu_index: int, precision: object) -> str:
    """The command that rebuilds `<bundle>/engines/<key>` in place even though its engine.json still matches."""
    bundle_root = engine_folder.parent.parent if engine_folder.parent.name == ENGINES_DIR else engine_folder
    precision = precision if precision in PRECISIONS else None
    return rebuild_hint(bundle_root, gpu_index, precision) + " --force"


# --------------------------------------------------------------------------- session


class TensorRTSession(GraphSession):
    """One TensorRT engine as a `GraphSession`: host numpy in, host numpy out.

    Device buffers are kept between calls and grown only when a larger shape
    arrives; each call sets the input shapes, checks them against the
    profile, copies in, runs `execute_async_v3` on the session's own stream,
    copies out and synchronizes. One thread at a time per session.
    """

    backend = "tensorrt"

    def __init__(self, engine_path: str | Path, name: str, gpu_index: int = 0) -> None:
        """Deserialize and check an engine.

        Args:
            engine_path: `<bundle>/engines/<key>/<graph>.engine`; its engine.json must sit beside it.
            name: graph name (speech_encoder, text_encoder or head).
            gpu_index: CUDA device to run on.

        Raises:
            DependencyError: TensorRT or cuda-python missing.
            BackendError: no such GPU, or TensorRT cannot create an execution context.
            BundleError: engine file missing or modified, not deserializable (built by
                another TensorRT version or GPU), or its I/O differs from the graph's.
        """
        from crab_rt.backends import cuda_memory as cm

        trt = import_tensorrt()
        path = Path(engine_path)
        record = read_engine_record(path.parent)
        hint = _force_rebuild_hint(path.parent, gpu_index, record.get("precision"))
        entry = record["graphs"].get(name)
        if entry is None:
            raise BundleError(
                f"{path.parent / ENGINE_RECORD}: has no {name} engine (graphs: {', '.join(record['graphs'])})"
            )
        try:
            blob = path.read_bytes()
        except OSError as e:
            raise BundleError(f"{path}: cannot read engine ({e.strerror or e})") from e
        if _sha256_bytes(blob) != entry.get("sha256"):
            raise BundleError(f"{path}: sha256 differs from {ENGINE_RECORD} (file modified or corrupt); {hint}")

        info = cm.require_device(gpu_index)
        cm.set_device(gpu_index)
        self.name = name
        self.gpu_index = gpu_index
        self.device = f"cuda:{gpu_index}"
        self.provider = f"TensorRT {trt.__version__} {record.get('precision')} on {info.name}"
        self._trt = trt
        self._cm = cm
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(blob)
        if self._engine is None:
            raise BundleError(
                f"{path}: TensorRT {trt.__version__} cannot deserialize this engine (built with TensorRT "
                f"{record.get('tensorrt_version')} on {record.get('gpu_name')}); {hint}"
            )
        io = entry["io"]
        self._engine_dtypes = check_engine_io(name, self._describe_io(), io, hint)
        self._bundle_dtypes = {n: s["dtype"] for n, s in {**io["inputs"], **io["outputs"]}.items()}
        self.input_names = tuple(io["inputs"])
        self.output_names = tuple(io["outputs"])
        self._profile = profile_from_json(entry["profile"])
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendError(
                f"{name}: TensorRT could not create an execution context on {self.device} (out of GPU memory?)"
            )
        self._stream = cm.Stream()
        self._buffers: dict[str, Any] = {}

    def _describe_io(self) -> dict[str, dict]:
        trt, engine = self._trt, self._engine
        out = {}
        for i in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(i)
            mode = "input" if engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT else "output"
            out[tensor] = {
                "mode": mode,
                "dtype": numpy_dtype_name(trt, engine.get_tensor_dtype(tensor)),
                "shape": [int(d) for d in engine.get_tensor_shape(tensor)],
            }
        return out

    def _buffer(self, tensor: str, nbytes: int) -> Any:
        """The device buffer of `tensor`, reallocated only when `nbytes` outgrows it."""
        buf = self._buffers.get(tensor)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                buf.free()
            buf = self._cm.DeviceBuffer(nbytes)
            self._buffers[tensor] = buf
        return buf

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the engine on host arrays; returns host arrays in the bundle graph's dtypes.

        Raises:
            BackendError: wrong input names, a shape outside the profile, or a TensorRT/CUDA failure.
        """
        if self._context is None:
            raise BackendError(f"{self.name} (tensorrt): session is closed")
        check_inputs(self, inputs)
        cm, ctx = self._cm, self._context
        host: dict[str, np.ndarray] = {}
        for tensor in self.input_names:
            array = np.ascontiguousarray(inputs[tensor], dtype=self._engine_dtypes[tensor])
            check_shape_in_profile(self.name, tensor, array.shape, self._profile[tensor])
            host[tensor] = array
        cm.set_device(self.gpu_index)
        for tensor, array in host.items():
            if not ctx.set_input_shape(tensor, tuple(array.shape)):
                raise BackendError(f"{self.name}: TensorRT rejected shape {array.shape} for input {tensor}")
        outputs: dict[str, np.ndarray] = {}
        for tensor in self.output_names:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(tensor))
            if any(d < 0 for d in shape):
                raise BackendError(f"{self.name}: TensorRT could not infer the shape of output {tensor} ({shape})")
            outputs[tensor] = np.empty(shape, dtype=self._engine_dtypes[tensor])
        for tensor, array in {**host, **outputs}.items():
            buf = self._buffer(tensor, array.nbytes)
            ctx.set_tensor_address(tensor, buf.ptr)
        for tensor, array in host.items():
            cm.copy_to_device(self._buffers[tensor], array, self._stream)
        if not ctx.execute_async_v3(self._stream.handle):
            self._stream.synchronize()
            raise BackendError(f"{self.name}: TensorRT execution failed on {self.device} (see the TensorRT log)")
        for tensor, array in outputs.items():
            cm.copy_to_host(array, self._buffers[tensor], self._stream)
        self._stream.synchronize()  # host arrays stay alive until here
        # An engine with int32 integer outputs still returns the graph's documented dtype (int64).
        return {t: a.astype(self._bundle_dtypes[t], copy=False) for t, a in outputs.items()}

    def close(self) -> None:
        """Free device buffers, the stream, the context and the engine (idempotent)."""
        for buf in self._buffers.values():
            buf.free()
        self._buffers = {}
        if getattr(self, "_stream", None) is not None:
            self._stream.destroy()
            self._stream = None
        # Release order matters: context, then engine, then runtime.
        self._context = None
        self._engine = None
        self._runtime = None

    def __enter__(self) -> TensorRTSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_tensorrt_sessions(
    bundle: Bundle, gpu_index: int = 0, precision: str | None = None
) -> dict[str, TensorRTSession]:
    """Open every graph of `bundle` as a TensorRT session.

    Args:
        bundle: the loaded bundle.
        gpu_index: CUDA device.
        precision: "fp32", "fp16", or None for fp16 engines when built, else fp32.

    Returns:
        {graph name: session} in run order.

    Raises:
        as `find_engines` and `TensorRTSession`.
    """
    folder = find_engines(bundle, gpu_index, precision)
    record = read_engine_record(folder)
    sessions: dict[str, TensorRTSession] = {}
    try:
        for name in bundle.graph_names:
            sessions[name] = TensorRTSession(folder / record["graphs"][name]["file"], name, gpu_index)
    except BaseException:
        for session in sessions.values():
            session.close()
        raise
    return sessions
