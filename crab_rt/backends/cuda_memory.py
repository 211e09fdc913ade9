"""Small CUDA runtime helpers on cuda-python: devices, device memory, streams, copies.

One place for the `(error, value...)` tuple convention of cuda-python and its
error checking, so the TensorRT backend and builder never touch raw error
codes. Supports both import paths of cuda-python (`cuda.bindings.runtime` in
12.6+ / 13, `cuda.cudart` in older releases). Never imports torch or pycuda.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from crab_rt.errors import BackendError, DependencyError

__all__ = [
    "CUDA_PYTHON_HINT",
    "DeviceInfo",
    "DeviceBuffer",
    "Stream",
    "load_cudart",
    "device_count",
    "device_info",
    "require_device",
    "set_device",
    "copy_to_device",
    "copy_to_host",
]

CUDA_PYTHON_HINT = (
    "pip install 'crab-rt[tensorrt]' (cuda-python, NVIDIA's CUDA bindings; match your CUDA major version)"
)


def load_cudart() -> Any:
    """Import cuda-python's runtime module (new or old import path).

    Raises:
        DependencyError: cuda-python is not installed.
    """
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6

        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart  # type: ignore[no-redef]  # cuda-python < 12.6

        return cudart
    except ImportError as e:
        raise DependencyError(
            f"the TensorRT backend needs 'cuda-python', which is not installed: {CUDA_PYTHON_HINT}"
        ) from e


def _error_name(cudart: Any, err: Any) -> str:
    try:
        name = cudart.cudaGetErrorName(err)[1]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 (only used to format a message)
        return str(err)


def _check(cudart: Any, result: tuple, what: str) -> Any:
    """Unpack a cuda-python result tuple; raise BackendError unless it is cudaSuccess.

    Returns None, the single value, or a tuple of values.
    """
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"CUDA call {what} failed: {_error_name(cudart, err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class DeviceInfo:
    """One CUDA device.

    Attributes:
        index: CUDA device ordinal (as in --gpu).
        name: marketing name, e.g. "NVIDIA H100 80GB HBM3".
        compute_capability: (major, minor), e.g. (9, 0).
        total_memory_bytes: global memory.
    """

    index: int
    name: str
    compute_capability: tuple[int, int]
    total_memory_bytes: int

    @property
    def sm(self) -> str:
        """"sm90"-style architecture tag."""
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"


def device_count() -> int:
    """Number of CUDA devices; 0 when the driver sees none.

    Raises:
        DependencyError: cuda-python is missing.
        BackendError: the driver is missing or too old for this CUDA runtime.
    """
    cudart = load_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if err == cudart.cudaError_t.cudaErrorNoDevice:
        return 0
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"cannot query CUDA devices: {_error_name(cudart, err)} (is the NVIDIA driver installed?)")
    return int(count)


def device_info(index: int) -> DeviceInfo:
    """Name, compute capability and memory of device `index`.

    Raises:
        BackendError: no such device or a CUDA error.
    """
    cudart = load_cudart()
    props = _check(cudart, cudart.cudaGetDeviceProperties(index), f"cudaGetDeviceProperties({index})")
    name = props.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode("utf-8", "replace")
    return DeviceInfo(
        index=index,
        name=str(name).strip(),
        compute_capability=(int(props.major), int(props.minor)),
        total_memory_bytes=int(props.totalGlobalMem),
    )


def require_device(index: int) -> DeviceInfo:
    """Check that CUDA device `index` exists and return its info.

    Raises:
        DependencyError: cuda-python is missing.
        BackendError: no CUDA device, or `index` out of range (names the valid range).
    """
    if index < 0:
        raise BackendError(f"--gpu must be >= 0, got {index}")
    count = device_count()
    if count == 0:
        raise BackendError("no CUDA device found (the TensorRT backend needs an NVIDIA GPU and its driver)")
    if index >= count:
        raise BackendError(f"--gpu {index} does not exist: {count} CUDA device(s), valid --gpu 0..{count - 1}")
    return device_info(index)


def set_device(index: int) -> None:
    """Make device `index` current for this thread."""
    cudart = load_cudart()
    _check(cudart, cudart.cudaSetDevice(index), f"cudaSetDevice({index})")


class DeviceBuffer:
    """A block of device memory; `ptr` is its address as an int."""

    def __init__(self, nbytes: int) -> None:
        self._cudart = load_cudart()
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(_check(self._cudart, self._cudart.cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes})"))

    def free(self) -> None:
        """Release the memory (idempotent)."""
        if self.ptr:
            _check(self._cudart, self._cudart.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class Stream:
    """A CUDA stream; `handle` is the int that TensorRT's execute_async_v3 takes."""

    def __init__(self) -> None:
        self._cudart = load_cudart()
        self.stream = _check(self._cudart, self._cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.handle = int(self.stream)

    def synchronize(self) -> None:
        """Wait for everything queued on the stream."""
        _check(self._cudart, self._cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def destroy(self) -> None:
        """Destroy the stream (idempotent)."""
        if self.stream is not None:
            _check(self._cudart, self._cudart.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None
            self.handle = 0


def copy_to_device(dst: DeviceBuffer, src: np.ndarray, stream: Stream) -> None:
    """Queue a host -> device copy of a C-contiguous array.

    `src` must stay alive until the stream is synchronized.
    """
    if not src.flags.c_contiguous:
        raise BackendError("copy_to_device needs a C-contiguous array")
    if src.nbytes > dst.nbytes:
        raise BackendError(f"copy_to_device: {src.nbytes} bytes do not fit a {dst.nbytes}-byte buffer")
    if src.nbytes == 0:
        return
    cudart = stream._cudart
    kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    result = cudart.cudaMemcpyAsync(dst.ptr, src.ctypes.data, src.nbytes, kind, stream.stream)
    _check(cudart, result, "cudaMemcpyAsync(H2D)")


def copy_to_host(dst: np.ndarray, src: DeviceBuffer, stream: Stream) -> None:
    """Queue a device -> host copy into a C-contiguous array (valid after synchronize)."""
    if not dst.flags.c_contiguous:
        raise BackendError("copy_to_host needs a C-contiguous array")
    if dst.nbytes > src.nbytes:
        raise BackendError(f"copy_to_host: {dst.nbytes} bytes exceed the {src.nbytes}-byte buffer")
    if dst.nbytes == 0:
        return
    cudart = stream._cudart
    kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    result = cudart.cudaMemcpyAsync(dst.ctypes.data, src.ptr, dst.nbytes, kind, stream.stream)
    _check(cudart, result, "cudaMemcpyAsync(D2H)")
