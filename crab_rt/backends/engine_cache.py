"""TensorRT engine caches: what an engine folder records and whether it still fits.

Engines live in `<bundle>/engines/<key>/` (written by `crab-rt build-engines`),
`<key>` a readable slug such as `h100-sm90-trt10.9-fp16`, next to an
`engine.json` that records the cache key: GPU name, compute capability, exact
TensorRT version, precision, and per graph the source ONNX sha256, the shape
profile, the I/O signature and the engine file's sha256. An engine runs only on
the GPU architecture and TensorRT version that built it, so the key is checked
on every load and a stale engine is refused with what differs and how to
rebuild. Everything here is plain Python: no TensorRT, no GPU.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from crab_rt.errors import BackendError, BundleError

__all__ = [
    "ENGINES_DIR",
    "ENGINE_RECORD",
    "ENGINE_FORMAT",
    "ENGINE_FORMAT_VERSION",
    "SYMBOLIC_DIMS",
    "Profile",
    "gpu_slug",
    "engine_key",
    "graph_profiles",
    "profile_to_json",
    "profile_from_json",
    "expected_record",
    "stale_reasons",
    "read_engine_record",
    "rebuild_hint",
    "select_engines",
    "check_shape_in_profile",
]

ENGINES_DIR = "engines"
ENGINE_RECORD = "engine.json"
ENGINE_FORMAT = "crab-rt-engines"
ENGINE_FORMAT_VERSION = 1

# Symbolic ONNX dimension -> key of the bundle's shape_ranges.
SYMBOLIC_DIMS = {"batch": "batch", "samples": "audio_samples", "tokens": "text_tokens", "frames": "speech_frames"}

# {input name: (min shape, opt shape, max shape)}
Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

_VENDOR_WORDS = {"nvidia", "geforce", "tesla", "quadro", "jetson"}

_SKU_TOKEN = re.compile(r"^(\d+gb|sxm\d*|pcie|hbm\d*e?|nvl|mig|max-q|laptop|gpu)$")


def gpu_slug(name: str) -> str:
    """A short, path-safe GPU tag: "NVIDIA H100 80GB HBM3" -> "h100", "NVIDIA GeForce RTX 4090" -> "rtx-4090".

    Vendor words are dropped, and everything from the first memory-size or
    form-factor token on ("80GB", "SXM4", "PCIe"); the full name is still
    recorded and checked, the slug only names the folder.
    """
    tokens = [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]
    kept: list[str] = []
    for token in tokens:
        if token in _VENDOR_WORDS:
            continue
        if _SKU_TOKEN.match(token):
            break
        kept.append(token)
    return "-".join(kept) or "gpu"


def engine_key(gpu_name: str, compute_capability: str, tensorrt_version: str, precision: str) -> str:
    """The engine folder name, e.g. "h100-sm90-trt10.9-fp16".

    Args:
        gpu_name: device name as CUDA reports it.
        compute_capability: "9.0".
        tensorrt_version: full version, e.g. "10.9.0.34" (the slug keeps major.minor).
        precision: "fp32" or "fp16".
    """
    sm = "sm" + compute_capability.replace(".", "")
    trt = ".".join(tensorrt_version.split(".")[:2])
    return f"{gpu_slug(gpu_name)}-{sm}-trt{trt}-{precision}"


def graph_profiles(manifest: Mapping, precision: str = "fp32") -> dict[str, Profile]:
    """TensorRT optimisation profiles from a bundle manifest's shape_ranges.

    Each input's symbolic dims map to a shape range ("batch" -> batch,
    "samples" -> audio_samples, "tokens" -> text_tokens, "frames" ->
    speech_frames); fixed dims (hidden sizes) stay fixed.

    Args:
        manifest: a bundle manifest dict (`Bundle.manifest`).
        precision: which graphs' I/O to read ("fp32" or "fp16").

    Returns:
        {graph: {input name: (min, opt, max)}} for every graph at `precision`.

    Raises:
        BundleError: a graph lacks that precision, a symbolic dim is unknown, or its range is missing.
    """
    ranges = manifest["shape_ranges"]
    out: dict[str, Profile] = {}
    for graph, per_precision in manifest["graphs"].items():
        if precision not in per_precision:
            raise BundleError(f"bundle has no {precision} {graph} graph; re-export with --precision {precision}")
        profile: Profile = {}
        for name, spec in per_precision[precision]["inputs"].items():
            lo, opt, hi = [], [], []
            for dim in spec["shape"]:
                if isinstance(dim, int):
                    lo.append(dim), opt.append(dim), hi.append(dim)
                    continue
                key = SYMBOLIC_DIMS.get(dim)
                if key is None:
                    raise BundleError(
                        f"{graph} input {name}: unknown symbolic dim {dim!r} (known: {', '.join(SYMBOLIC_DIMS)})"
                    )
                if key not in ranges:
                    raise BundleError(
                        f"{graph} input {name}: manifest shape_ranges lacks {key!r} (needed for dim {dim!r})"
                    )
                r = ranges[key]
                lo.append(int(r["min"])), opt.append(int(r["opt"])), hi.append(int(r["max"]))
            profile[name] = (tuple(lo), tuple(opt), tuple(hi))
        out[graph] = profile
    return out


def profile_to_json(profile: Profile) -> dict:
    """{input: {"min": [...], "opt": [...], "max": [...]}} for engine.json."""
    return {name: {"min": list(lo), "opt": list(opt), "max": list(hi)} for name, (lo, opt, hi) in profile.items()}


def profile_from_json(data: Mapping) -> Profile:
    """Inverse of `profile_to_json`."""
    return {name: (tuple(v["min"]), tuple(v["opt"]), tuple(v["max"])) for name, v in data.items()}


def expected_record(
    manifest: Mapping, precision: str, gpu_name: str, compute_capability: str, tensorrt_version: str
) -> dict:
    """The cache key that engines for this bundle, device and TensorRT must carry.

    Returns:
        {"key", "gpu_name", "compute_capability", "tensorrt_version", "precision",
        "graphs": {graph: {"onnx_file", "onnx_sha256", "profile", "io"}}}.

    Raises:
        BundleError: as `graph_profiles`.
    """
    profiles = graph_profiles(manifest, precision)
    graphs = {}
    for graph, per_precision in manifest["graphs"].items():
        entry = per_precision[precision]
        graphs[graph] = {
            "onnx_file": entry["file"],
            "onnx_sha256": entry["sha256"],
            "profile": profile_to_json(profiles[graph]),
            "io": {"inputs": entry["inputs"], "outputs": entry["outputs"]},
        }
    return {
        "key": engine_key(gpu_name, compute_capability, tensorrt_version, precision),
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "tensorrt_version": tensorrt_version,
        "precision": precision,
        "graphs": graphs,
    }


def stale_reasons(expected: Mapping, recorded: Mapping) -> list[str]:
    """What differs between the key engines must have and the one they carry.

    Args:
        expected: from `expected_record` (this device, this TensorRT, this bundle).
        recorded: a parsed engine.json.

    Returns:
        one short phrase per difference; empty when the engines are current.
    """
    reasons = []
    labels = {
        "gpu_name": "GPU",
        "compute_capability": "compute capability",
        "tensorrt_version": "TensorRT version",
        "precision": "precision",
    }
    for field, label in labels.items():
        if recorded.get(field) != expected[field]:
            reasons.append(f"{label}: built for {recorded.get(field)!r}, this is {expected[field]!r}")
    rec_graphs = recorded.get("graphs") or {}
    exp_graphs = expected["graphs"]
    if set(rec_graphs) != set(exp_graphs):
        reasons.append(f"graphs: engines have {sorted(rec_graphs)}, bundle has {sorted(exp_graphs)}")
    for graph in sorted(set(rec_graphs) & set(exp_graphs)):
        rec, exp = rec_graphs[graph], exp_graphs[graph]
        if rec.get("onnx_sha256") != exp["onnx_sha256"]:
            reasons.append(
                f"{graph}: ONNX changed since the build (sha256 {str(rec.get('onnx_sha256'))[:12]}..., "
                f"bundle has {exp['onnx_sha256'][:12]}...)"
            )
        if rec.get("profile") != exp["profile"]:
            reasons.append(f"{graph}: shape profile {rec.get('profile')} differs from the bundle's {exp['profile']}")
    return reasons


def read_engine_record(folder: str | Path) -> dict:
    """Parse `<folder>/engine.json`.

    Raises:
        BundleError: missing, not JSON, or not a crab-rt engine record of a known version.
    """
    path = Path(folder) / ENGINE_RECORD
    if not path.is_file():
        raise BundleError(f"{path}: not found (engine build incomplete?)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(record, dict) or record.get("format") != ENGINE_FORMAT:
        raise BundleError(f"{path}: not a crab-rt engine record (format must be {ENGINE_FORMAT!r})")
    if record.get("format_version") != ENGINE_FORMAT_VERSION:
        raise BundleError(
            f"{path}: unsupported format_version {record.get('format_version')!r} (expected {ENGINE_FORMAT_VERSION})"
        )
    if not isinstance(record.get("graphs"), dict):
        raise BundleError(f"{path}: lacks the graphs table")
    return record


def rebuild_hint(bundle_root: str | Path, gpu_index: int, precision: str | None = None) -> str:
    """The command that (re)builds engines for this bundle and GPU."""
    extra = f" --precision {precision}" if precision else ""
    return f"run: crab-rt build-engines --bundle {bundle_root} --gpu {gpu_index}{extra}"


def select_engines(engines_root: str | Path, expected: Sequence[Mapping], hint: str) -> Path:
    """Pick the engine folder whose engine.json matches one of `expected` (first match wins).

    Args:
        engines_root: `<bundle>/engines`.
        expected: `expected_record`s in order of preference (e.g. fp16, then fp32).
        hint: the rebuild command to append to errors.

    Returns:
        the matching folder (every engine file in it exists).

    Raises:
        BundleError: no engines, or only stale ones: says which folder and exactly what differs.
    """
    root = Path(engines_root)
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    records: list[tuple[Path, dict]] = []
    broken: list[str] = []
    for folder in folders:
        try:
            records.append((folder, read_engine_record(folder)))
        except BundleError as e:
            broken.append(str(e))
    best: tuple[int, Path, list[str]] | None = None
    for want in expected:
        for folder, record in records:
            reasons = stale_reasons(want, record)
            if not reasons:
                missing = [g for g, e in record["graphs"].items() if not (folder / str(e.get("file", ""))).is_file()]
                if not missing:
                    return folder
                reasons = [f"engine file(s) missing: {', '.join(missing)}"]
            # Rank candidates: same precision first, then fewest differences.
            rank = len(reasons) + (0 if record.get("precision") == want["precision"] else 100)
            if best is None or rank < best[0]:
                best = (rank, folder, reasons)
    if best is not None:
        _, folder, reasons = best
        raise BundleError(f"{folder}: stale TensorRT engines ({'; '.join(reasons)}); {hint}")
    if broken:
        raise BundleError(f"{broken[0]}; {hint}")
    wanted = " or ".join(str(e["key"]) for e in expected)
    raise BundleError(f"{root}: no TensorRT engines for this GPU ({wanted}); {hint}")


def check_shape_in_profile(graph: str, name: str, shape: Sequence[int], profile: tuple) -> None:
    """Refuse an input shape outside the engine's optimisation profile.

    Args:
        graph: graph name (for the message).
        name: input name.
        shape: the input's shape.
        profile: (min, opt, max) shapes of that input.

    Raises:
        BackendError: naming the input, its shape, the profile range and the offending dim.
    """
    lo, _, hi = profile
    shape = tuple(int(d) for d in shape)
    if len(shape) != len(lo):
        raise BackendError(
            f"{graph}: input {name} has rank {len(shape)} (shape {shape}), the engine expects rank {len(lo)}"
        )
    for axis, (d, a, b) in enumerate(zip(shape, lo, hi)):
        if not a <= d <= b:
            advice = "; input longer than the engine's maximum, split it or rebuild with larger shape_ranges"
            raise BackendError(
                f"{graph}: input {name} shape {shape} is outside the engine's profile "
                f"(min {tuple(lo)}, max {tuple(hi)}): dim {axis} = {d} not in [{a}, {b}]" + (advice if d > b else "")
            )
