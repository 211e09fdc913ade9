"""TensorRT path: cache key and staleness, profiles, I/O checks, build orchestration, sessions, CLI errors.

TensorRT and CUDA are absent on most machines, so the pure parts are tested
directly, and the builder and `TensorRTSession` run against small in-process
fakes of `tensorrt` and cuda-python (host memory stands in for device memory).
The tests at the end need real TensorRT and a GPU and skip without them.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import json
import re
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from crab_rt.backends import cuda_memory
from crab_rt.backends.engine_cache import (
    ENGINE_RECORD,
    check_shape_in_profile,
    engine_key,
    expected_record,
    gpu_slug,
    graph_profiles,
    read_engine_record,
    select_engines,
    stale_reasons,
)
from crab_rt.backends.tensorrt import (
    TensorRTSession,
    check_engine_io,
    find_engines,
    load_tensorrt_sessions,
    numpy_dtype_name,
    tensorrt_available,
)
from crab_rt.bundle import load_bundle
from crab_rt.cli import main
from crab_rt.errors import BackendError, BundleError, DependencyError

H100 = "NVIDIA H100 80GB HBM3"
TRT_VERSION = "10.9.0.34"
RANGES = {
    "batch": {"min": 1, "opt": 1, "max": 8},
    "audio_samples": {"min": 400, "opt": 64000, "max": 192000},
    "text_tokens": {"min": 1, "opt": 32, "max": 32},
    "speech_frames": {"min": 1, "opt": 199, "max": 599},
}


def _io(inputs: dict, outputs: dict) -> dict:
    spec = lambda d: {n: {"dtype": t, "shape": s} for n, (t, s) in d.items()}  # noqa: E731
    return {"inputs": spec(inputs), "outputs": spec(outputs)}


GRAPH_IO = {
    "speech_encoder": _io(
        {"input_values": ("float32", ["batch", "samples"]), "attention_mask": ("int64", ["batch", "samples"])},
        {"hidden_states": ("float32", ["batch", "frames", 32]), "frame_mask": ("int64", ["batch", "frames"])},
    ),
    "text_encoder": _io(
        {"input_ids": ("int64", ["batch", "tokens"]), "attention_mask": ("int64", ["batch", "tokens"])},
        {"hidden_states": ("float32", ["batch", "tokens", 32])},
    ),
    "head": _io(
        {
            "speech_hidden": ("float32", ["batch", "frames", 32]),
            "speech_mask": ("int64", ["batch", "frames"]),
            "text_hidden": ("float32", ["batch", "tokens", 32]),
            "text_mask": ("int64", ["batch", "tokens"]),
        },
        {"logits": ("float32", ["batch", 4]), "probabilities": ("float32", ["batch", 4])},
    ),
}


def _manifest() -> dict:
    """A manifest dict laid out as `crab-rt export` writes it (fp32 and fp16 graphs)."""
    graphs = {}
    for name, io in GRAPH_IO.items():
        graphs[name] = {
            p: {"file": f"{name}{suffix}.onnx", "sha256": hashlib.sha256(f"{name}{p}".encode()).hexdigest(), **copy.deepcopy(io)}
            for p, suffix in (("fp32", ""), ("fp16", ".fp16"))
        }
    return {
        "format": "crab-rt-bundle",
        "format_version": 1,
        "labels": ["a", "b", "c", "d"],
        "sample_rate": 16000,
        "normalize_waveform": True,
        "max_audio_s": 12.0,
        "max_text_tokens": 32,
        "modality": "both",
        "dims": {"speech_hidden": 32, "text_hidden": 32},
        "graphs": graphs,
        "shape_ranges": copy.deepcopy(RANGES),
        "tokenizer": None,
        "torch": {"file": "model.pt", "sha256": ""},
    }


def _write_bundle(root: Path, manifest: dict | None = None) -> Path:
    """A bundle folder on disk with placeholder files whose sha256 the manifest lists."""
    manifest = manifest or _manifest()
    root.mkdir(parents=True)
    entries = [e for per in manifest["graphs"].values() for e in per.values()] + [manifest["torch"]]
    for entry in entries:
        data = f"placeholder {entry['file']}".encode()
        (root / entry["file"]).write_bytes(data)
        entry["sha256"] = hashlib.sha256(data).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root


def _record(expected: dict, folder: Path) -> dict:
    """An engine.json for `expected`, with engine files written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    graphs = {}
    for graph, entry in expected["graphs"].items():
        blob = f"fake-engine {graph}".encode()
        (folder / f"{graph}.engine").write_bytes(blob)
        graphs[graph] = {"file": f"{graph}.engine", "sha256": hashlib.sha256(blob).hexdigest(), **entry}
    record = {"format": "crab-rt-engines", "format_version": 1, **{k: v for k, v in expected.items() if k != "graphs"},
              "graphs": graphs}
    (folder / ENGINE_RECORD).write_text(json.dumps(record), encoding="utf-8")
    return record


# --------------------------------------------------------------------------- fakes of tensorrt and cuda-python


class FakeCudart(types.ModuleType):
    """cuda-python's runtime API on host memory: enough for cuda_memory and the session."""

    def __init__(self, devices=((H100, 9, 0),)) -> None:
        super().__init__("cuda.bindings.runtime")
        self.devices = list(devices)
        self.cudaError_t = SimpleNamespace(cudaSuccess=0, cudaErrorNoDevice=100, cudaErrorInvalidDevice=101)
        self.cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
        self.memory: dict[int, ctypes.Array] = {}
        self.mallocs = 0
        self.streams = 0

    def cudaGetErrorName(self, err):
        return 0, {100: b"cudaErrorNoDevice", 101: b"cudaErrorInvalidDevice"}.get(err, b"cudaErrorUnknown")

    def cudaGetDeviceCount(self):
        return (100, 0) if not self.devices else (0, len(self.devices))

    def cudaGetDeviceProperties(self, index):
        if index >= len(self.devices):
            return 101, None
        name, major, minor = self.devices[index]
        return 0, SimpleNamespace(name=name.encode() + b"\0\0\0", major=major, minor=minor, totalGlobalMem=80 << 30)

    def cudaSetDevice(self, index):
        return (0,) if index < len(self.devices) else (101,)

    def cudaMalloc(self, nbytes):
        buf = ctypes.create_string_buffer(nbytes)
        self.memory[ctypes.addressof(buf)] = buf
        self.mallocs += 1
        return 0, ctypes.addressof(buf)

    def cudaFree(self, ptr):
        del self.memory[ptr]
        return (0,)

    def cudaStreamCreate(self):
        self.streams += 1
        return 0, 12345

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamDestroy(self, stream):
        self.streams -= 1
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        ctypes.memmove(dst, src, nbytes)
        return (0,)


def _install_cudart(monkeypatch, cudart: FakeCudart | None) -> None:
    """Make `from cuda.bindings import runtime` return `cudart` (None: cuda-python absent)."""
    if cudart is None:
        monkeypatch.setitem(sys.modules, "cuda", None)
        return
    package, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    package.__path__, bindings.__path__ = [], []
    package.bindings, bindings.runtime = bindings, cudart
    for name, module in (("cuda", package), ("cuda.bindings", bindings), ("cuda.bindings.runtime", cudart)):
        monkeypatch.setitem(sys.modules, name, module)


def _array(ptr: int, shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


class FakeEngine:
    """A fake engine with int32 integer I/O (as an older parser narrows int64).

    text_encoder: hidden[b, t, :] = id * mask. speech_encoder: one frame per 320
    samples, hidden = mean sample of the frame, frame_mask = mask of its first sample.
    """

    TENSORS = {
        "text_encoder": {
            "input_ids": ("input", "int32", [-1, -1]),
            "attention_mask": ("input", "int32", [-1, -1]),
            "hidden_states": ("output", "float32", [-1, -1, 32]),
        },
        "speech_encoder": {
            "input_values": ("input", "float32", [-1, -1]),
            "attention_mask": ("input", "int32", [-1, -1]),
            "hidden_states": ("output", "float32", [-1, -1, 32]),
            "frame_mask": ("output", "int32", [-1, -1]),
        },
    }

    def __init__(self, graph: str) -> None:
        self.graph = graph
        self.tensors = self.TENSORS[graph]
        self.num_io_tensors = len(self.tensors)

    def get_tensor_name(self, i):
        return list(self.tensors)[i]

    def get_tensor_mode(self, name):
        return 1 if self.tensors[name][0] == "input" else 2

    def get_tensor_dtype(self, name):
        return self.tensors[name][1]

    def get_tensor_shape(self, name):
        return self.tensors[name][2]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        b, t = self.shapes["attention_mask"]
        frames = t if self.engine.graph == "text_encoder" else t // 320
        return (b, frames, 32) if name == "hidden_states" else (b, frames)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def _view(self, name):
        shape = self.shapes.get(name) or self.get_tensor_shape(name)
        return _array(self.addresses[name], shape, self.engine.tensors[name][1])

    def execute_async_v3(self, stream_handle):
        mask, hidden = self._view("attention_mask"), self._view("hidden_states")
        if self.engine.graph == "text_encoder":
            hidden[:] = (self._view("input_ids") * mask)[..., None]
        else:
            frames = hidden.shape[1]
            values = self._view("input_values")[:, : frames * 320].reshape(len(mask), frames, 320)
            hidden[:] = values.mean(axis=2)[..., None]
            self._view("frame_mask")[:] = mask[:, : frames * 320 : 320]
        return True


def _deserialize(blob: bytes):
    graph = blob.decode(errors="replace").removeprefix("fake-engine ")
    return FakeEngine(graph) if blob.startswith(b"fake-engine") and graph in FakeEngine.TENSORS else None


class FakeBuilder:
    """Records what build_engine asks of TensorRT."""

    def __init__(self, trt, logger) -> None:
        self.trt = trt

    def create_network(self, flags):
        self.trt.calls.append(("create_network", flags))
        return SimpleNamespace(inputs=[], num_inputs=0, get_input=None)

    def create_builder_config(self):
        return FakeConfig(self.trt)

    def create_optimization_profile(self):
        profile = SimpleNamespace(shapes={})
        profile.set_shape = lambda name, lo, opt, hi: profile.shapes.__setitem__(name, (lo, opt, hi))
        return profile

    def build_serialized_network(self, network, config):
        self.trt.calls.append(("profile", network.graph, config.profiles[0].shapes))
        return f"fake-engine {network.graph}".encode()


class FakeParser:
    def __init__(self, network, logger) -> None:
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path):
        graph = Path(path).name.split(".")[0]
        names = list(GRAPH_IO[graph]["inputs"])
        self.network.graph = graph
        self.network.num_inputs = len(names)
        self.network.get_input = lambda i: SimpleNamespace(name=names[i])
        return True


class FakeConfig:
    def __init__(self, trt) -> None:
        self.trt, self.profiles, self.cache = trt, [], b""

    def set_memory_pool_limit(self, pool, size):
        self.trt.calls.append(("workspace", size))

    def clear_flag(self, flag):
        self.trt.calls.append(("clear_flag", flag))

    def create_timing_cache(self, data):
        self.trt.calls.append(("timing_cache_in", bytes(data)))
        return SimpleNamespace(data=bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache.data
        return True

    def get_timing_cache(self):
        return SimpleNamespace(serialize=lambda: self.cache + b"+")

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)


def _fake_trt(version: str = TRT_VERSION) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None})
    trt.TensorIOMode = SimpleNamespace(INPUT=1, OUTPUT=2)
    trt.nptype = lambda dtype: np.dtype(dtype).type
    trt.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = SimpleNamespace(TF32="tf32")
    trt.Builder = lambda logger: FakeBuilder(trt, logger)
    trt.OnnxParser = FakeParser
    trt.Runtime = lambda logger: SimpleNamespace(deserialize_cuda_engine=_deserialize)
    return trt


@pytest.fixture
def fake_gpu(monkeypatch):
    """Fake tensorrt 10.9 and a fake H100 (cuda-python); returns (trt, cudart)."""
    trt, cudart = _fake_trt(), FakeCudart()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    _install_cudart(monkeypatch, cudart)
    return trt, cudart


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)


# --------------------------------------------------------------------------- cache key and slug


@pytest.mark.parametrize(
    "name, slug",
    [
        (H100, "h100"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("NVIDIA RTX A6000", "rtx-a6000"),
        ("Tesla T4", "t4"),
        ("Orin (nvgpu)", "orin-nvgpu"),
        ("NVIDIA H100 NVL", "h100"),
        ("???", "gpu"),
    ],
)
def test_gpu_slug(name, slug):
    assert gpu_slug(name) == slug


def test_engine_key_is_readable_slug():
    assert engine_key(H100, "9.0", TRT_VERSION, "fp16") == "h100-sm90-trt10.9-fp16"
    assert engine_key("Orin", "8.7", "10.3.0", "fp32") == "orin-sm87-trt10.3-fp32"


def test_expected_record_holds_the_cache_key():
    manifest = _manifest()
    rec = expected_record(manifest, "fp16", H100, "9.0", TRT_VERSION)
    assert rec["key"] == "h100-sm90-trt10.9-fp16"
    assert (rec["gpu_name"], rec["compute_capability"], rec["tensorrt_version"], rec["precision"]) == (
        H100, "9.0", TRT_VERSION, "fp16")
    head = rec["graphs"]["head"]
    assert head["onnx_file"] == "head.fp16.onnx"
    assert head["onnx_sha256"] == manifest["graphs"]["head"]["fp16"]["sha256"]
    assert head["profile"]["speech_hidden"] == {"min": [1, 1, 32], "opt": [1, 199, 32], "max": [8, 599, 32]}
    assert head["io"] == GRAPH_IO["head"]


# --------------------------------------------------------------------------- profiles


def test_graph_profiles_from_shape_ranges():
    profiles = graph_profiles(_manifest(), "fp32")
    assert set(profiles) == {"speech_encoder", "text_encoder", "head"}
    assert profiles["speech_encoder"]["input_values"] == ((1, 400), (1, 64000), (8, 192000))
    assert profiles["speech_encoder"]["attention_mask"] == ((1, 400), (1, 64000), (8, 192000))
    assert profiles["text_encoder"]["input_ids"] == ((1, 1), (1, 32), (8, 32))
    assert profiles["head"]["speech_hidden"] == ((1, 1, 32), (1, 199, 32), (8, 599, 32))
    assert profiles["head"]["text_mask"] == ((1, 1), (1, 32), (8, 32))


def test_graph_profiles_errors():
    manifest = _manifest()
    del manifest["shape_ranges"]["speech_frames"]
    with pytest.raises(BundleError, match=r"head input speech_hidden: manifest shape_ranges lacks 'speech_frames'"):
        graph_profiles(manifest)
    manifest = _manifest()
    manifest["graphs"]["text_encoder"]["fp32"]["inputs"]["input_ids"]["shape"] = ["batch", "sequence"]
    with pytest.raises(BundleError, match=r"text_encoder input input_ids: unknown symbolic dim 'sequence'"):
        graph_profiles(manifest)
    manifest = _manifest()
    del manifest["graphs"]["head"]["fp16"]
    with pytest.raises(BundleError, match=r"no fp16 head graph; re-export with --precision fp16"):
        graph_profiles(manifest, "fp16")


# --------------------------------------------------------------------------- staleness


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("gpu_name", "NVIDIA A100-SXM4-80GB", r"GPU: built for 'NVIDIA A100-SXM4-80GB', this is 'NVIDIA H100 80GB HBM3'"),
        ("compute_capability", "8.0", r"compute capability: built for '8.0', this is '9.0'"),
        ("tensorrt_version", "10.3.0.26", r"TensorRT version: built for '10.3.0.26', this is '10.9.0.34'"),
        ("precision", "fp32", r"precision: built for 'fp32', this is 'fp16'"),
    ],
)
def test_stale_reasons_device_fields(field, value, message):
    expected = expected_record(_manifest(), "fp16", H100, "9.0", TRT_VERSION)
    recorded = copy.deepcopy(expected)
    recorded[field] = value
    reasons = stale_reasons(expected, recorded)
    assert len(reasons) == 1
    assert re.search(message, reasons[0]), reasons


def test_stale_reasons_graph_fields():
    expected = expected_record(_manifest(), "fp16", H100, "9.0", TRT_VERSION)
    assert stale_reasons(expected, copy.deepcopy(expected)) == []

    recorded = copy.deepcopy(expected)
    recorded["graphs"]["speech_encoder"]["onnx_sha256"] = "0" * 64
    (reason,) = stale_reasons(expected, recorded)
    assert reason.startswith("speech_encoder: ONNX changed since the build (sha256 000000000000...")

    recorded = copy.deepcopy(expected)
    recorded["graphs"]["head"]["profile"]["speech_hidden"]["max"] = [8, 299, 32]
    (reason,) = stale_reasons(expected, recorded)
    assert reason.startswith("head: shape profile")

    recorded = copy.deepcopy(expected)
    del recorded["graphs"]["text_encoder"]
    (reason,) = stale_reasons(expected, recorded)
    assert reason == "graphs: engines have ['head', 'speech_encoder'], bundle has ['head', 'speech_encoder', 'text_encoder']"


def test_select_engines_fresh_stale_and_missing(tmp_path):
    manifest = _manifest()
    fp16 = expected_record(manifest, "fp16", H100, "9.0", TRT_VERSION)
    fp32 = expected_record(manifest, "fp32", H100, "9.0", TRT_VERSION)
    root = tmp_path / "engines"
    hint = "run: crab-rt build-engines --bundle B --gpu 0"

    with pytest.raises(BundleError, match=r"no TensorRT engines for this GPU \(h100-sm90-trt10.9-fp16\); run: crab-rt"):
        select_engines(root, [fp16], hint)

    # Engines built on a Jetson Orin with TensorRT 10.3 are refused, naming every difference.
    orin = expected_record(manifest, "fp16", "Orin", "8.7", "10.3.0")
    _record(orin, root / orin["key"])
    with pytest.raises(BundleError) as err:
        select_engines(root, [fp16], hint)
    msg = str(err.value)
    assert "orin-sm87-trt10.3-fp16: stale TensorRT engines (" in msg
    assert "GPU: built for 'Orin', this is 'NVIDIA H100 80GB HBM3'" in msg
    assert "compute capability: built for '8.7', this is '9.0'" in msg
    assert "TensorRT version: built for '10.3.0', this is '10.9.0.34'" in msg
    assert msg.endswith(hint)

    # fp32 engines for this GPU exist: with fp16 preferred, fp32 is the fallback.
    _record(fp32, root / fp32["key"])
    assert select_engines(root, [fp16, fp32], hint) == root / "h100-sm90-trt10.9-fp32"
    _record(fp16, root / fp16["key"])
    assert select_engines(root, [fp16, fp32], hint) == root / "h100-sm90-trt10.9-fp16"

    (root / fp16["key"] / "head.engine").unlink()
    with pytest.raises(BundleError, match=r"engine file\(s\) missing: head"):
        select_engines(root, [fp16], hint)


def test_read_engine_record_errors(tmp_path):
    with pytest.raises(BundleError, match=r"engine.json: not found"):
        read_engine_record(tmp_path)
    (tmp_path / ENGINE_RECORD).write_text("{nope")
    with pytest.raises(BundleError, match=r"not valid JSON"):
        read_engine_record(tmp_path)
    (tmp_path / ENGINE_RECORD).write_text(json.dumps({"format": "crab-rt-engines", "format_version": 9, "graphs": {}}))
    with pytest.raises(BundleError, match=r"unsupported format_version 9"):
        read_engine_record(tmp_path)


# --------------------------------------------------------------------------- shape and I/O checks


def test_check_shape_in_profile():
    profile = ((1, 400), (1, 64000), (8, 192000))
    check_shape_in_profile("speech_encoder", "input_values", (8, 192000), profile)
    check_shape_in_profile("speech_encoder", "input_values", (1, 400), profile)
    with pytest.raises(BackendError, match=r"speech_encoder: input input_values shape \(1, 200000\) is outside the "
                                           r"engine's profile \(min \(1, 400\), max \(8, 192000\)\): dim 1 = 200000 "
                                           r"not in \[400, 192000\]; input longer"):
        check_shape_in_profile("speech_encoder", "input_values", (1, 200000), profile)
    with pytest.raises(BackendError, match=r"dim 0 = 9 not in \[1, 8\]"):
        check_shape_in_profile("speech_encoder", "input_values", (9, 16000), profile)
    with pytest.raises(BackendError, match=r"dim 1 = 100 not in \[400, 192000\]$"):
        check_shape_in_profile("speech_encoder", "input_values", (1, 100), profile)
    with pytest.raises(BackendError, match=r"rank 1 \(shape \(16000,\)\), the engine expects rank 2"):
        check_shape_in_profile("speech_encoder", "input_values", (16000,), profile)


def test_numpy_dtype_name():
    trt = SimpleNamespace(nptype=lambda d: np.dtype(d).type)
    assert numpy_dtype_name(trt, "float16") == "float16"

    def no_int64(dtype):  # an nptype without INT64, as in older bindings
        raise TypeError(dtype)

    trt = SimpleNamespace(nptype=no_int64)
    assert numpy_dtype_name(trt, "DataType.INT64") == "int64"
    assert numpy_dtype_name(trt, "DataType.HALF") == "float16"
    assert numpy_dtype_name(trt, "DataType.BOOL") == "bool"
    with pytest.raises(BackendError, match=r"DataType.BF16 has no numpy equivalent"):
        numpy_dtype_name(trt, "DataType.BF16")


def _engine_io(graph: str, **dtype_override) -> dict:
    io = GRAPH_IO[graph]
    out = {}
    for mode, key in (("input", "inputs"), ("output", "outputs")):
        for name, spec in io[key].items():
            shape = [d if isinstance(d, int) else -1 for d in spec["shape"]]
            out[name] = {"mode": mode, "dtype": dtype_override.get(name, spec["dtype"]), "shape": shape}
    return out


def test_check_engine_io():
    io = GRAPH_IO["speech_encoder"]
    assert check_engine_io("speech_encoder", _engine_io("speech_encoder"), io)["attention_mask"] == "int64"
    narrowed = check_engine_io("speech_encoder", _engine_io("speech_encoder", attention_mask="int32", frame_mask="int32"), io)
    assert narrowed == {"input_values": "float32", "attention_mask": "int32", "hidden_states": "float32", "frame_mask": "int32"}

    with pytest.raises(BundleError, match=r"speech_encoder engine tensor input_values is float16, the bundle graph's is float32"):
        check_engine_io("speech_encoder", _engine_io("speech_encoder", input_values="float16"), io)
    renamed = _engine_io("speech_encoder")
    renamed["waveform"] = renamed.pop("input_values")
    with pytest.raises(BundleError, match=r"engine inputs \['attention_mask', 'waveform'\] do not match the bundle graph's "
                                          r"\['attention_mask', 'input_values'\]"):
        check_engine_io("speech_encoder", renamed, io)
    wide = _engine_io("speech_encoder")
    wide["hidden_states"]["shape"] = [-1, -1, 768]
    with pytest.raises(BundleError, match=r"hidden_states has shape \[-1, -1, 768\], the bundle graph's is \['batch', 'frames', 32\]"):
        check_engine_io("speech_encoder", wide, io)


# --------------------------------------------------------------------------- cuda_memory on a fake runtime


def test_cuda_memory_devices(monkeypatch):
    cudart = FakeCudart(devices=[(H100, 9, 0), ("Orin", 8, 7)])
    _install_cudart(monkeypatch, cudart)
    assert cuda_memory.device_count() == 2
    info = cuda_memory.require_device(1)
    assert (info.name, info.compute_capability, info.sm) == ("Orin", (8, 7), "sm87")
    with pytest.raises(BackendError, match=r"--gpu 2 does not exist: 2 CUDA device\(s\), valid --gpu 0..1"):
        cuda_memory.require_device(2)
    with pytest.raises(BackendError, match=r"CUDA call cudaSetDevice\(5\) failed: cudaErrorInvalidDevice"):
        cuda_memory.set_device(5)
    cudart.devices = []
    assert cuda_memory.device_count() == 0
    with pytest.raises(BackendError, match=r"no CUDA device found"):
        cuda_memory.require_device(0)


def test_cuda_memory_copies_round_trip(monkeypatch):
    _install_cudart(monkeypatch, FakeCudart())
    stream = cuda_memory.Stream()
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    buf = cuda_memory.DeviceBuffer(data.nbytes)
    cuda_memory.copy_to_device(buf, data, stream)
    back = np.empty_like(data)
    cuda_memory.copy_to_host(back, buf, stream)
    stream.synchronize()
    np.testing.assert_array_equal(back, data)
    with pytest.raises(BackendError, match=r"96 bytes do not fit a 48-byte buffer"):
        cuda_memory.copy_to_device(buf, np.zeros(24, np.float32), stream)
    buf.free()
    buf.free()  # idempotent
    stream.destroy()


def test_missing_cuda_python_is_a_dependency_error(monkeypatch):
    _install_cudart(monkeypatch, None)
    with pytest.raises(DependencyError, match=r"needs 'cuda-python'.*pip install 'crab-rt\[tensorrt\]' \(cuda-python"):
        cuda_memory.device_count()


# --------------------------------------------------------------------------- availability and CLI errors


def test_tensorrt_available_reasons(monkeypatch, no_tensorrt):
    ok, reason = tensorrt_available()
    assert not ok and "needs 'tensorrt', which is not installed" in reason and "JetPack" in reason
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt("8.6.1"))
    ok, reason = tensorrt_available()
    assert not ok and reason.startswith("TensorRT 8.6.1 is too old: crab-rt needs TensorRT 10 or newer")
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt())
    _install_cudart(monkeypatch, FakeCudart(devices=[]))
    assert tensorrt_available() == (False, "no CUDA device found (the TensorRT backend needs an NVIDIA GPU and its driver)")
    _install_cudart(monkeypatch, FakeCudart())
    assert tensorrt_available() == (True, f"TensorRT {TRT_VERSION} on {H100} (sm90)")


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line
    return err


def test_cli_without_tensorrt_exits_2(tmp_path, capsys, no_tensorrt):
    bundle = _write_bundle(tmp_path / "b")
    err = _cli_error(capsys, ["build-engines", "--bundle", str(bundle)])
    assert err.startswith("crab-rt: error: the TensorRT backend needs 'tensorrt', which is not installed")


def test_cli_without_cuda_python_or_gpu_exits_2(tmp_path, capsys, monkeypatch):
    bundle = _write_bundle(tmp_path / "b")
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt())
    _install_cudart(monkeypatch, None)
    assert "needs 'cuda-python'" in _cli_error(capsys, ["build-engines", "--bundle", str(bundle)])
    _install_cudart(monkeypatch, FakeCudart(devices=[]))
    assert "no CUDA device found" in _cli_error(capsys, ["build-engines", "--bundle", str(bundle)])
    _install_cudart(monkeypatch, FakeCudart())
    assert "--gpu 3 does not exist: 1 CUDA device(s)" in _cli_error(capsys, ["build-engines", "--bundle", str(bundle), "--gpu", "3"])


def test_cli_bad_bundle_and_options_exit_2(tmp_path, capsys, no_tensorrt):
    assert "bundle folder not found" in _cli_error(capsys, ["build-engines", "--bundle", str(tmp_path / "none")])
    manifest = _manifest()
    for per in manifest["graphs"].values():
        del per["fp16"]
    bundle = _write_bundle(tmp_path / "fp32only", manifest)
    err = _cli_error(capsys, ["build-engines", "--bundle", str(bundle), "--precision", "fp16"])
    assert "has no fp16 speech_encoder graph; re-export with: crab-rt export" in err
    err = _cli_error(capsys, ["build-engines", "--bundle", str(bundle), "--workspace-gb", "-1"])
    assert "workspace_gb must be in (0, 1024], got -1.0" in err


# --------------------------------------------------------------------------- build and run on fakes


def test_build_engines_orchestration(tmp_path, capsys, monkeypatch, fake_gpu):
    trt, _ = fake_gpu
    bundle_dir = _write_bundle(tmp_path / "b")
    assert main(["build-engines", "--bundle", str(bundle_dir), "--workspace-gb", "2"]) == 0
    out = capsys.readouterr().err  # progress is logged (crab_rt.export.tensorrt_build), on stderr by the CLI
    folder = bundle_dir / "engines" / "h100-sm90-trt10.9-fp16"
    assert "[1/3] speech_encoder: building from speech_encoder.fp16.onnx" in out
    assert "[3/3] head: done in" in out

    record = json.loads((folder / ENGINE_RECORD).read_text())
    assert record["key"] == "h100-sm90-trt10.9-fp16" and record["gpu_name"] == H100
    assert (record["compute_capability"], record["tensorrt_version"], record["precision"]) == ("9.0", TRT_VERSION, "fp16")
    assert record["crab_rt_version"] and record["built"] and record["build_s"] >= 0
    head = record["graphs"]["head"]
    assert (folder / "head.engine").read_bytes() == b"fake-engine head"
    assert head["sha256"] == hashlib.sha256(b"fake-engine head").hexdigest()
    assert head["onnx_sha256"] == load_bundle(bundle_dir).manifest["graphs"]["head"]["fp16"]["sha256"]
    assert head["profile"]["speech_hidden"] == {"min": [1, 1, 32], "opt": [1, 199, 32], "max": [8, 599, 32]}

    # What TensorRT was asked: strongly typed network, 2 GiB workspace, the profile per input, the timing cache chained.
    assert ("create_network", 1 << 1) in trt.calls and ("workspace", 2 << 30) in trt.calls
    assert ("clear_flag", "tf32") not in trt.calls  # only fp32 builds turn TF32 off
    profiles = {c[1]: c[2] for c in trt.calls if c[0] == "profile"}
    assert profiles["speech_encoder"]["input_values"] == ((1, 400), (1, 64000), (8, 192000))
    assert [c[1] for c in trt.calls if c[0] == "timing_cache_in"] == [b"", b"+", b"++"]
    assert (bundle_dir / "engines" / "h100-sm90-trt10.9.timing-cache").read_bytes() == b"+++"

    # Current engines are kept; --force rebuilds and reuses the timing cache.
    trt.calls.clear()
    assert main(["build-engines", "--bundle", str(bundle_dir)]) == 0
    assert "are current" in capsys.readouterr().err and not trt.calls
    assert main(["build-engines", "--bundle", str(bundle_dir), "--force", "--precision", "fp32"]) == 0
    assert ("clear_flag", "tf32") in trt.calls
    assert [c[1] for c in trt.calls if c[0] == "timing_cache_in"][0] == b"+++"
    assert (bundle_dir / "engines" / "h100-sm90-trt10.9-fp32" / ENGINE_RECORD).is_file()

    # The runtime finds them (fp16 preferred) and refuses them on another GPU.
    bundle = load_bundle(bundle_dir)
    assert find_engines(bundle, 0) == folder
    assert find_engines(bundle, 0, "fp32").name == "h100-sm90-trt10.9-fp32"
    _install_cudart(monkeypatch, FakeCudart(devices=[("NVIDIA A100-SXM4-80GB", 8, 0)]))
    with pytest.raises(BundleError, match=r"stale TensorRT engines \(GPU: built for 'NVIDIA H100 80GB HBM3', this is "
                                          r"'NVIDIA A100-SXM4-80GB'; compute capability: built for '9.0', this is '8.0'\); "
                                          r"run: crab-rt build-engines --bundle .* --gpu 0"):
        find_engines(bundle, 0)


def _text_engine_folder(tmp_path: Path) -> Path:
    expected = expected_record(_manifest(), "fp32", H100, "9.0", TRT_VERSION)
    folder = tmp_path / "engines" / expected["key"]
    _record(expected, folder)
    return folder


def test_session_runs_grows_buffers_and_casts(tmp_path, fake_gpu):
    _, cudart = fake_gpu
    folder = _text_engine_folder(tmp_path)
    with TensorRTSession(folder / "text_encoder.engine", "text_encoder", 0) as session:
        assert (session.backend, session.device) == ("tensorrt", "cuda:0")
        assert session.input_names == ("input_ids", "attention_mask")
        assert session.output_names == ("hidden_states",)
        assert "TensorRT 10.9.0.34 fp32" in session.provider
        ids = np.array([[5, 6, 7], [8, 9, 0]], dtype=np.int64)
        mask = np.array([[1, 1, 1], [1, 1, 0]], dtype=np.int64)
        out = session.run({"input_ids": ids, "attention_mask": mask})["hidden_states"]
        assert out.shape == (2, 3, 32) and out.dtype == np.float32
        np.testing.assert_array_equal(out[..., 0], ids * mask)
        first = cudart.mallocs

        session.run({"input_ids": ids[:1, :2], "attention_mask": mask[:1, :2]})  # smaller: buffers reused
        assert cudart.mallocs == first
        big = np.ones((4, 20), dtype=np.int64)
        out = session.run({"input_ids": 3 * big, "attention_mask": big})["hidden_states"]
        assert out.shape == (4, 20, 32) and float(out.max()) == 3.0
        assert cudart.mallocs == first + 3  # every tensor outgrew its buffer once

        with pytest.raises(BackendError, match=r"text_encoder: input input_ids shape \(1, 33\) is outside the engine's "
                                               r"profile \(min \(1, 1\), max \(8, 32\)\): dim 1 = 33"):
            session.run({"input_ids": np.ones((1, 33), np.int64), "attention_mask": np.ones((1, 33), np.int64)})
        with pytest.raises(BackendError, match=r"missing \['attention_mask'\]"):
            session.run({"input_ids": ids})
    assert not cudart.memory  # close() freed every buffer
    with pytest.raises(BackendError, match=r"session is closed"):
        session.run({"input_ids": ids, "attention_mask": mask})


def test_session_refuses_tampered_or_foreign_engines(tmp_path, fake_gpu):
    folder = _text_engine_folder(tmp_path)
    (folder / "text_encoder.engine").write_bytes(b"fake-engine tampered")
    with pytest.raises(BundleError, match=r"text_encoder.engine: sha256 differs from engine.json"):
        TensorRTSession(folder / "text_encoder.engine", "text_encoder", 0)

    record = json.loads((folder / ENGINE_RECORD).read_text())
    blob = b"not an engine for this TensorRT"
    (folder / "text_encoder.engine").write_bytes(blob)
    record["graphs"]["text_encoder"]["sha256"] = hashlib.sha256(blob).hexdigest()
    (folder / ENGINE_RECORD).write_text(json.dumps(record))
    with pytest.raises(BundleError, match=r"TensorRT 10.9.0.34 cannot deserialize this engine"):
        TensorRTSession(folder / "text_encoder.engine", "text_encoder", 0)

    # A text encoder engine filed as the head: its I/O does not match the head graph's.
    blob = b"fake-engine text_encoder"
    (folder / "head.engine").write_bytes(blob)
    record["graphs"]["head"]["sha256"] = hashlib.sha256(blob).hexdigest()
    (folder / ENGINE_RECORD).write_text(json.dumps(record))
    with pytest.raises(BundleError, match=r"head engine inputs \['attention_mask', 'input_ids'\] do not match"):
        TensorRTSession(folder / "head.engine", "head", 0)


def test_stale_engines_are_refused_in_one_line_and_rebuilt_in_place(tmp_path, capsys, fake_gpu, monkeypatch):
    """Another bundle's ONNX, another TensorRT: refused with the command to run, which rebuilds the same folder."""
    trt, _ = fake_gpu
    bundle_dir = _write_bundle(tmp_path / "b")
    assert main(["build-engines", "--bundle", str(bundle_dir), "--precision", "fp32"]) == 0
    folder = bundle_dir / "engines" / "h100-sm90-trt10.9-fp32"
    capsys.readouterr()
    hint = f"; run: crab-rt build-engines --bundle {bundle_dir} --gpu 0 --precision fp32"

    # The bundle was re-exported: its head graph changed since the engines were built.
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    entry = manifest["graphs"]["head"]["fp32"]
    (bundle_dir / entry["file"]).write_bytes(b"another export of the head")
    entry["sha256"] = hashlib.sha256(b"another export of the head").hexdigest()
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as err:
        find_engines(load_bundle(bundle_dir), 0, "fp32")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{folder}: stale TensorRT engines (head: ONNX changed")
    assert message.endswith(hint)
    # The command in the message rebuilds that folder in place, without --force or a manual cleanup.
    assert main(["build-engines", "--bundle", str(bundle_dir), "--gpu", "0", "--precision", "fp32"]) == 0
    assert f"rebuilding {folder} in place (head: ONNX changed since the build" in capsys.readouterr().err
    assert find_engines(load_bundle(bundle_dir), 0, "fp32") == folder
    assert sorted(p.name for p in (bundle_dir / "engines").iterdir()) == ["h100-sm90-trt10.9-fp32",
                                                                          "h100-sm90-trt10.9.timing-cache"]

    # A TensorRT patch update (same folder key): refused, then rebuilt in place.
    monkeypatch.setattr(trt, "__version__", "10.9.1.2")
    with pytest.raises(BundleError, match=r"TensorRT version: built for '10.9.0.34', this is '10.9.1.2'\); run: "
                                          r"crab-rt build-engines --bundle .* --gpu 0 --precision fp32$"):
        find_engines(load_bundle(bundle_dir), 0, "fp32")
    assert main(["build-engines", "--bundle", str(bundle_dir), "--precision", "fp32"]) == 0
    assert "TensorRT version: built for '10.9.0.34', this is '10.9.1.2'" in capsys.readouterr().err
    assert json.loads((folder / ENGINE_RECORD).read_text())["tensorrt_version"] == "10.9.1.2"
    assert find_engines(load_bundle(bundle_dir), 0, "fp32") == folder

    # Through backend selection the refusal stays one line and names the rebuild command, not the doctor.
    from crab_rt.backends.select import load_sessions

    monkeypatch.setattr(trt, "__version__", "10.10.0.31")
    with pytest.raises(BundleError) as err:
        load_sessions(load_bundle(bundle_dir), "tensorrt", gpu=0, precision="fp32")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{folder}: stale TensorRT engines (TensorRT version: built for "
                                                       "'10.9.1.2', this is '10.10.0.31')")
    assert message.endswith(hint) and "crab-rt doctor" not in message
    # A new TensorRT minor version (a JetPack update) keys a new folder; the runtime then takes that one.
    assert main(["build-engines", "--bundle", str(bundle_dir), "--precision", "fp32"]) == 0
    assert find_engines(load_bundle(bundle_dir), 0, "fp32").name == "h100-sm90-trt10.10-fp32"


def test_session_errors_name_the_forced_rebuild(tmp_path, fake_gpu):
    """An engine whose engine.json still matches but that TensorRT refuses needs --force, and the message says so."""
    bundle_dir = _write_bundle(tmp_path / "b")
    expected = expected_record(load_bundle(bundle_dir).manifest, "fp32", H100, "9.0", TRT_VERSION)
    folder = bundle_dir / "engines" / expected["key"]
    _record(expected, folder)
    force = f"; run: crab-rt build-engines --bundle {bundle_dir} --gpu 0 --precision fp32 --force"
    (folder / "text_encoder.engine").write_bytes(b"fake-engine tampered")
    with pytest.raises(BundleError) as err:
        TensorRTSession(folder / "text_encoder.engine", "text_encoder", 0)
    assert str(err.value).endswith("sha256 differs from engine.json (file modified or corrupt)" + force)
    (folder / "text_encoder.engine").write_bytes(b"fake-engine text_encoder")
    with pytest.raises(BundleError) as err:
        load_tensorrt_sessions(load_bundle(bundle_dir), 0, "fp32")  # the head's fake engine does not deserialize
    assert "head.engine: TensorRT 10.9.0.34 cannot deserialize this engine" in str(err.value)
    assert str(err.value).endswith(force) and "\n" not in str(err.value)


def test_session_casts_int32_engine_outputs_to_bundle_int64(tmp_path, fake_gpu):
    folder = _text_engine_folder(tmp_path)
    with TensorRTSession(folder / "speech_encoder.engine", "speech_encoder", 0) as session:
        values = np.zeros((2, 1600), np.float32)
        values[0, :320] = 0.5
        mask = np.ones((2, 1600), np.int64)
        mask[1, 960:] = 0
        out = session.run({"input_values": values, "attention_mask": mask})
        assert out["frame_mask"].dtype == np.int64 and out["hidden_states"].dtype == np.float32
        np.testing.assert_array_equal(out["frame_mask"], [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
        np.testing.assert_allclose(out["hidden_states"][0, :2, 0], [0.5, 0.0])


def test_load_tensorrt_sessions_closes_on_failure(tmp_path, fake_gpu):
    _, cudart = fake_gpu
    bundle_dir = _write_bundle(tmp_path / "b")
    bundle = load_bundle(bundle_dir)
    expected = expected_record(bundle.manifest, "fp32", H100, "9.0", TRT_VERSION)
    _record(expected, bundle_dir / "engines" / expected["key"])
    # Both encoders load; the head's engine does not deserialize, and the opened sessions are closed.
    with pytest.raises(BundleError, match=r"head.engine: TensorRT 10.9.0.34 cannot deserialize this engine"):
        load_tensorrt_sessions(bundle, 0, "fp32")
    assert cudart.streams == 0 and not cudart.memory


# --------------------------------------------------------------------------- real TensorRT on a GPU


@pytest.fixture(scope="module")
def exported_bundle(tiny_model_parts, tmp_path_factory) -> Path:
    """A tiny real bundle (fp32 + fp16 graphs) from `crab-rt export`'s code."""
    pytest.importorskip("onnx")
    from crab_rt.export.bundle_writer import ExportOptions, export_bundle
    from crab_rt.train.checkpoint import save_checkpoint

    model, tokenizer = tiny_model_parts
    root = tmp_path_factory.mktemp("trt")
    ckpt = save_checkpoint(root / "best.pt", model, tokenizer, {"max_audio_s": 12.0, "max_text_tokens": 32})
    return export_bundle(ckpt, root / "bundle", ExportOptions(precision="fp16", parity=False))


def test_graph_profiles_on_exported_manifest(exported_bundle):
    bundle = load_bundle(exported_bundle)
    for precision in ("fp32", "fp16"):
        profiles = graph_profiles(bundle.manifest, precision)
        assert set(profiles) == set(bundle.graph_names)
        ranges = bundle.shape_ranges
        lo, opt, hi = profiles["speech_encoder"]["input_values"]
        assert lo == (1, ranges["audio_samples"]["min"]) and hi == (ranges["batch"]["max"], bundle.max_audio_samples)
        d = bundle.dims["speech_hidden"]
        frames = ranges["speech_frames"]
        assert profiles["head"]["speech_hidden"] == ((1, frames["min"], d), (1, frames["opt"], d), (8, frames["max"], d))
        assert profiles["text_encoder"]["input_ids"][2] == (8, bundle.max_text_tokens)


def _require_tensorrt_gpu() -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pytest.skip("TensorRT not installed")
    ok, reason = tensorrt_available()
    if not ok:
        pytest.skip(f"no CUDA device ({reason})")


@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-3), ("fp16", 2e-2)])
def test_tensorrt_matches_onnxruntime(exported_bundle, tmp_path, precision, tolerance):
    _require_tensorrt_gpu()
    import shutil

    import onnxruntime as ort

    from crab_rt.export.tensorrt_build import BuildOptions, build_engines

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(exported_bundle, bundle_dir)
    folder = build_engines(bundle_dir, BuildOptions(precision=precision))
    bundle = load_bundle(bundle_dir)
    assert find_engines(bundle, 0, precision) == folder
    sessions = load_tensorrt_sessions(bundle, 0, precision)
    rng = np.random.default_rng(0)
    try:
        lengths = (16000, 9000)
        values = np.zeros((2, max(lengths)), np.float32)
        amask = np.zeros((2, max(lengths)), np.int64)
        for i, n in enumerate(lengths):
            values[i, :n] = 0.1 * rng.standard_normal(n)
            amask[i, :n] = 1
        ids = rng.integers(5, 250, size=(2, 12)).astype(np.int64)
        tmask = np.ones((2, 12), np.int64)
        tmask[1, 7:] = 0
        feeds = {
            "speech_encoder": {"input_values": values, "attention_mask": amask},
            "text_encoder": {"input_ids": ids, "attention_mask": tmask},
        }
        reference = {name: ort.InferenceSession(str(bundle.graph_path(name, "fp32")), providers=["CPUExecutionProvider"])
                     for name in bundle.graph_names}
        got, want = {}, {}
        for name, feed in feeds.items():
            got[name] = sessions[name].run(feed)
            want[name] = dict(zip([o.name for o in reference[name].get_outputs()], reference[name].run(None, feed)))
        head_feed = {
            "speech_hidden": want["speech_encoder"]["hidden_states"],
            "speech_mask": want["speech_encoder"]["frame_mask"],
            "text_hidden": want["text_encoder"]["hidden_states"],
            "text_mask": tmask,
        }
        got["head"] = sessions["head"].run(head_feed)
        want["head"] = dict(zip([o.name for o in reference["head"].get_outputs()], reference["head"].run(None, head_feed)))
        np.testing.assert_array_equal(got["speech_encoder"]["frame_mask"], want["speech_encoder"]["frame_mask"])
        assert got["speech_encoder"]["frame_mask"].dtype == np.int64
        valid = want["speech_encoder"]["frame_mask"].astype(bool)
        err = np.abs(got["speech_encoder"]["hidden_states"] - want["speech_encoder"]["hidden_states"])[valid].max()
        assert err < tolerance * 10, err
        assert np.abs(got["head"]["probabilities"] - want["head"]["probabilities"]).max() < tolerance
        # Audio longer than the profile is refused, naming the input and the range.
        too_long = bundle.max_audio_samples + 1
        with pytest.raises(BackendError, match=rf"input input_values shape \(1, {too_long}\) is outside"):
            sessions["speech_encoder"].run({"input_values": np.zeros((1, too_long), np.float32),
                                            "attention_mask": np.ones((1, too_long), np.int64)})
    finally:
        for session in sessions.values():
            session.close()
