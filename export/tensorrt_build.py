"""Bundle ONNX graphs -> TensorRT engines, with a persistent timing cache and a verified cache key.

`build_engines` writes `<bundle>/engines/<key>/<graph>.engine` and, last,
`engine.json` (the cache key `crab_rt.backends.tensorrt` checks on load), so an
interrupted build leaves a folder the runtime refuses instead of a half-valid
one. Precision comes from the ONNX itself (fp32 graphs or the bundle's fp16
graphs): networks are strongly typed (TensorRT 11 removed the FP16/BF16
builder flags). Needs TensorRT >= 10, cuda-python and an NVIDIA GPU; never
imports torch.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from crab_rt.backends.engine_cache import (
    ENGINE_FORMAT,
    ENGINE_FORMAT_VERSION,
    ENGINE_RECORD,
    ENGINES_DIR,
    Profile,
    expected_record,
    graph_profiles,
    read_engine_record,
    stale_reasons,
)
from crab_rt.backends.tensorrt import import_tensorrt
from crab_rt.bundle import PRECISIONS, Bundle, load_bundle, sha256_file
from crab_rt.errors import BackendError, BundleError, ConfigError

__all__ = ["BuildOptions", "resolve_precision", "timing_cache_name", "build_engine", "build_engines"]

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0  # how often a long build reports that it is still running


@dataclass(frozen=True)
class BuildOptions:
    """How to build engines.

    Attributes:
        gpu_index: CUDA device to build on (engines run only on that architecture).
        precision: "fp32", "fp16", or None for fp16 when the bundle has fp16 graphs, else fp32.
        force: rebuild even when current engines exist.
        workspace_gb: TensorRT workspace memory limit in GiB; None leaves TensorRT's default (device memory).
        heartbeat_s: seconds between "still building" lines during a long build.
    """

    gpu_index: int = 0
    precision: str | None = None
    force: bool = False
    workspace_gb: float | None = None
    heartbeat_s: float = HEARTBEAT_S

    def validate(self) -> BuildOptions:
        if self.gpu_index < 0:
            raise ConfigError(f"gpu_index must be >= 0, got {self.gpu_index}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.workspace_gb is not None and not 0 < self.workspace_gb <= 1024:
            raise ConfigError(f"workspace_gb must be in (0, 1024], got {self.workspace_gb}")
        if not 0 < self.heartbeat_s <= 3600:
            raise ConfigError(f"heartbeat_s must be in (0, 3600], got {self.heartbeat_s}")
        return self


def resolve_precision(bundle: Bundle, requested: str | None) -> str:
    """The precision to build: `requested`, or fp16 when every graph has an fp16 variant, else fp32.

    Raises:
        BundleError: `requested` graphs are missing (the message says how to re-export).
    """
    if requested is None:
        return "fp16" if all(bundle.has_graph(g, "fp16") for g in bundle.graph_names) else "fp32"
    for graph in bundle.graph_names:
        bundle.graph_path(graph, requested)  # raises with the re-export command
    return requested


def timing_cache_name(expected: dict) -> str:
    """File name of the timing cache shared by both precisions on one GPU and TensorRT version."""
    return expected["key"].rsplit("-", 1)[0] + ".timing-cache"


def _network_flags(trt: Any) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # ignored (always on) in TensorRT 11
    return 0 if flag is None else 1 << int(flag)


def build_engine(
    trt: Any,
    onnx_path: Path,
    profile: Profile,
    timing_cache: bytes,
    workspace_gb: float | None = None,
    precision: str = "fp32",
    logger: Any = None,
) -> tuple[bytes, bytes]:
    """Parse one ONNX file and build a serialized engine.

    Args:
        trt: the imported tensorrt module.
        onnx_path: the graph (external data, if any, beside it).
        profile: {input: (min, opt, max)} covering every network input.
        timing_cache: serialized timing cache (b"" for a fresh one).
        workspace_gb: workspace limit in GiB, or None.
        precision: "fp32" also turns TF32 off, so fp32 engines match ONNX Runtime closely.
        logger: a trt.ILogger; a WARNING logger when None.

    Returns:
        (serialized engine, updated serialized timing cache).

    Raises:
        BundleError: the ONNX parser rejects the graph, or the profile misses an input.
        BackendError: TensorRT fails to build.
    """
    logger = logger or trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BundleError(f"{onnx_path}: TensorRT's ONNX parser failed: {' | '.join(errors) or 'no details'}")

    config = builder.create_builder_config()
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if precision == "fp32" and tf32 is not None:
        config.clear_flag(tf32)

    try:
        cache = config.create_timing_cache(timing_cache)
    except Exception:  # noqa: BLE001 (a corrupt cache file is not worth failing the build for)
        cache = None
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        # A cache from another device or TensorRT version, or a corrupt file: start a fresh one.
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    optimization_profile = builder.create_optimization_profile()
    network_inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    missing = [n for n in network_inputs if n not in profile]
    if missing:
        raise BundleError(f"{onnx_path}: no shape range for network input(s) {missing} (profile has {sorted(profile)})")
    for name in network_inputs:
        lo, opt, hi = profile[name]
        optimization_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(optimization_profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"{onnx_path.name}: TensorRT failed to build an engine (see the TensorRT log above)")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _why_not_current(folder: Path, expected: dict) -> list[str]:
    """Why the engines in `folder` cannot run as `expected` asks; empty when they are current and intact."""
    if not folder.exists():
        return ["not built"]
    try:
        record = read_engine_record(folder)
    except BundleError as e:
        return [str(e)]
    reasons = stale_reasons(expected, record)
    for graph, entry in record["graphs"].items():
        file = folder / str(entry.get("file", ""))
        if not file.is_file() or sha256_file(file) != entry.get("sha256"):
            reasons.append(f"{graph}: engine file missing or modified")
    return reasons


def _timed(work: Callable[[], Any], label: str, every_s: float) -> tuple[Any, float]:
    """Run `work()`, logging "<label>... N s" at INFO every `every_s` seconds; returns (result, seconds)."""
    start = time.perf_counter()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(every_s):
            log.info("  %s... %.0f s", label, time.perf_counter() - start)

    thread = threading.Thread(target=heartbeat, daemon=True)
    thread.start()
    try:
        result = work()
    finally:
        done.set()
        thread.join()
    return result, time.perf_counter() - start


def build_engines(
    bundle_path: str | Path,
    options: BuildOptions = BuildOptions(),
) -> Path:
    """Build one TensorRT engine per graph of a bundle.

    Progress (one line per step, and a heartbeat during long builds) is logged at INFO
    to `crab_rt.export.tensorrt_build`.

    Args:
        bundle_path: the bundle folder (from `crab-rt export`).
        options: see `BuildOptions`.

    Returns:
        the engine folder `<bundle>/engines/<key>`.

    Raises:
        BundleError: bad bundle, missing precision, or a graph TensorRT cannot parse.
        DependencyError: TensorRT or cuda-python missing.
        BackendError: no such GPU, or a build failure.
        ConfigError: bad options.
    """
    from crab_rt import __version__
    from crab_rt.backends.cuda_memory import require_device, set_device

    options.validate()
    bundle = load_bundle(bundle_path)
    precision = resolve_precision(bundle, options.precision)
    trt = import_tensorrt()
    info = require_device(options.gpu_index)
    set_device(options.gpu_index)
    cc = f"{info.compute_capability[0]}.{info.compute_capability[1]}"
    expected = expected_record(bundle.manifest, precision, info.name, cc, str(trt.__version__))
    root = bundle.root / ENGINES_DIR
    folder = root / expected["key"]
    reasons = _why_not_current(folder, expected)
    if not options.force and not reasons:
        log.info(
            "engines in %s are current for %s and TensorRT %s (--force to rebuild)", folder, info.name, trt.__version__
        )
        return folder
    if reasons != ["not built"]:
        # A stale, broken or --force'd folder is rebuilt where it is: no manual cleanup first.
        log.info("rebuilding %s in place (%s)", folder, "; ".join(reasons) if reasons else "--force")

    folder.mkdir(parents=True, exist_ok=True)
    (folder / ENGINE_RECORD).unlink(missing_ok=True)  # a half-rebuilt folder must not look current
    cache_path = root / timing_cache_name(expected)
    timing_cache = cache_path.read_bytes() if cache_path.is_file() else b""
    profiles = graph_profiles(bundle.manifest, precision)
    log.info(
        f"building {precision} engines with TensorRT {trt.__version__} on {info.name} ({info.sm}) -> {folder}"
        + (f" (timing cache {cache_path.name})" if timing_cache else "")
    )
    logger = trt.Logger(trt.Logger.WARNING)
    graphs: dict[str, dict] = {}
    total_start = time.perf_counter()
    names = bundle.graph_names
    for i, graph in enumerate(names, 1):
        onnx_path = bundle.graph_path(graph, precision)
        tag = f"[{i}/{len(names)}] {graph}"
        size_mb = onnx_path.stat().st_size / 1e6
        log.info("%s: building from %s (%.1f MB); this can take minutes", tag, onnx_path.name, size_mb)
        work = partial(
            build_engine, trt, onnx_path, profiles[graph], timing_cache, options.workspace_gb, precision, logger
        )
        (engine, timing_cache), seconds = _timed(work, f"{tag}: still building", options.heartbeat_s)
        engine_path = folder / f"{graph}.engine"
        _write_atomic(engine_path, engine)
        _write_atomic(cache_path, timing_cache)  # saved per graph, so an interrupted build keeps its timings
        graphs[graph] = {
            "file": engine_path.name,
            "sha256": sha256_file(engine_path),
            "size_bytes": len(engine),
            "build_s": round(seconds, 2),
            **expected["graphs"][graph],
        }
        log.info("%s: done in %.1f s, engine %.1f MB", tag, seconds, len(engine) / 1e6)

    total = time.perf_counter() - total_start
    record = {
        "format": ENGINE_FORMAT,
        "format_version": ENGINE_FORMAT_VERSION,
        **{k: expected[k] for k in ("key", "gpu_name", "compute_capability", "tensorrt_version", "precision")},
        "crab_rt_version": __version__,
        "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "build_s": round(total, 2),
        "workspace_gb": options.workspace_gb,
        "timing_cache": cache_path.name,
        "graphs": graphs,
    }
    _write_atomic(folder / ENGINE_RECORD, (json.dumps(record, indent=2) + "\n").encode("utf-8"))
    log.info("%d engine(s) written to %s in %.1f s", len(graphs), folder, total)
    return folder
