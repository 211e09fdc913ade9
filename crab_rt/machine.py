"""What is installed and present on this machine: the facts behind `crab-rt doctor`.

Python and package versions, the ONNX Runtime build and its providers, CUDA
devices, TensorRT, CTranslate2, ASR models available offline and PortAudio
input devices, each as a plain dict (the `crab-rt doctor --json` sections, see
`crab_rt.doctor`). Every probe imports its package lazily, inside a try: an
absent or broken package is a finding, never an exception. torch is imported
only when `importlib` finds it, never when it is absent. CUDA devices are
asked of whatever is installed: cuda-python, the driver's NVML
(`nvidia-ml-py`), `nvidia-smi`, torch, CTranslate2; ONNX Runtime only says
whether its CUDA provider is there.
"""

from __future__ import annotations

import importlib.util
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "ORT_DISTRIBUTIONS",
    "PACKAGES",
    "TEGRA_RELEASE",
    "MIC_FIX",
    "found_module",
    "dist_version",
    "first_line",
    "system_info",
    "onnxruntime_info",
    "cuda_info",
    "tensorrt_info",
    "ctranslate2_info",
    "offline_asr_models",
    "microphones_info",
]

# Distributions that install the `onnxruntime` module: more than one of them is a broken install.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                     "onnxruntime-qnn", "onnxruntime-rocm", "onnxruntime-migraphx", "onnxruntime-training")

PACKAGES = ("numpy", *ORT_DISTRIBUTIONS[:2], "faster-whisper", "ctranslate2", "tokenizers", "huggingface-hub", "av",
            "soundfile", "soxr", "tensorrt", "cuda-python", "nvidia-ml-py", "torch", "transformers", "pyaudio",
            "websockets", "prometheus-client")

MIC_FIX = "pip install 'crab-rt[mic]' (needs PortAudio: apt-get install portaudio19-dev / brew install portaudio)"
TEGRA_RELEASE = Path("/etc/nv_tegra_release")  # L4T's release file: a Jetson has one
# L4T major release -> JetPack major.
_JETPACK = {35: "5", 36: "6", 38: "7", 39: "7"}

Found = Callable[[str, list[dict]], None]  # records the devices one source named


def found_module(module: str) -> bool:
    """Whether `module` can be found, without importing it (a broken parent package counts as absent)."""
    if module in sys.modules:  # already imported (None there means: import is blocked)
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def dist_version(dist: str) -> str | None:
    """The installed version of distribution `dist` ("onnxruntime-gpu"), or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def first_line(e: BaseException) -> str:
    """"TypeName: first line of the message", for findings that must stay on one line."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _jetson(tegra_release: Path) -> str | None:
    """"L4T R36.4.3 (JetPack 6)" from /etc/nv_tegra_release, or None off a Jetson."""
    try:
        text = tegra_release.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not m:
        return "L4T (unknown release)"
    jetpack = _JETPACK.get(int(m.group(1)))
    return f"L4T R{m.group(1)}.{m.group(2)}" + (f" (JetPack {jetpack})" if jetpack else "")


def system_info(tegra_release: Path = TEGRA_RELEASE) -> dict:
    """Python version and executable, platform, machine, and the L4T/JetPack release on a Jetson (else None)."""
    return {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
            "machine": platform.machine(), "jetson": _jetson(tegra_release)}


def onnxruntime_info() -> dict:
    """Which ONNX Runtime distributions are installed, and the version and providers of the module they provide."""
    info: dict[str, Any] = {"distributions": [d for d in ORT_DISTRIBUTIONS if dist_version(d)], "version": None,
                            "providers": [], "error": None}
    from crab_rt.backends.onnxruntime import ORT_MISSING, import_onnxruntime
    from crab_rt.errors import DependencyError

    try:
        ort = import_onnxruntime()
        info["version"] = str(ort.__version__)
        info["providers"] = list(ort.get_available_providers())
    except DependencyError as e:
        info["error"] = "not installed" if str(e) == ORT_MISSING else str(e)
    return info


def cuda_info(ort: dict) -> dict:
    """CUDA devices from the first source that names them, the count, and what every source said.

    Args:
        ort: `onnxruntime_info()` (its providers say whether ONNX Runtime could use CUDA).
    """
    sources: dict[str, str] = {}
    named: list[dict] = []
    counts: list[int] = []  # from sources that ask the driver (a CPU-only build's 0 proves nothing)

    def found(source: str, devices: list[dict]) -> None:
        names = ", ".join(d["name"] for d in devices)
        sources[source] = f"{len(devices)} device(s)" + (f": {names}" if names else "")
        counts.append(len(devices))
        if devices and not named:
            named.extend(devices)

    if not (found_module("cuda.bindings") or found_module("cuda.cudart")):
        sources["cuda-python"] = "not installed (pip install 'crab-rt[tensorrt]')"
    else:
        _cuda_python(found, sources)
    sources["nvml"] = _nvml(found)
    sources["nvidia-smi"] = _nvidia_smi(found)
    if found_module("torch"):
        try:
            import torch

            if torch.version.cuda is None:
                sources["torch"] = f"torch {torch.__version__} is a CPU build"
            else:
                n = torch.cuda.device_count() if torch.cuda.is_available() else 0
                found("torch", [{"index": i, "name": torch.cuda.get_device_name(i),
                                 "compute_capability": "{}.{}".format(*torch.cuda.get_device_capability(i)),
                                 "memory_mib": torch.cuda.get_device_properties(i).total_memory >> 20}
                                for i in range(n)])
        except Exception as e:  # noqa: BLE001
            sources["torch"] = f"cannot import torch: {first_line(e)}"
    else:
        sources["torch"] = "not installed"
    if found_module("ctranslate2"):
        try:
            import ctranslate2

            n = int(ctranslate2.get_cuda_device_count())
            sources["ctranslate2"] = f"{n} device(s)" + ("" if n else " (or a CPU-only build)")
            if n:
                counts.append(n)
        except Exception as e:  # noqa: BLE001
            sources["ctranslate2"] = first_line(e)
    else:
        sources["ctranslate2"] = "not installed"
    if ort["error"]:
        sources["onnxruntime"] = "not installed"
    elif "CUDAExecutionProvider" in ort["providers"]:
        sources["onnxruntime"] = "CUDAExecutionProvider present (it does not count devices)"
    else:
        sources["onnxruntime"] = f"no CUDAExecutionProvider ({', '.join(ort['distributions']) or 'onnxruntime'} build)"
    return {"devices": named, "count": max(counts) if counts else None, "sources": sources}


def _cuda_python(found: Found, sources: dict) -> None:
    try:
        from crab_rt.backends import cuda_memory as cm

        infos = [cm.device_info(i) for i in range(cm.device_count())]
    except Exception as e:  # noqa: BLE001 - no driver, or a driver too old for these bindings
        sources["cuda-python"] = first_line(e)
        return
    found("cuda-python", [{"index": d.index, "name": d.name, "memory_mib": d.total_memory_bytes >> 20,
                           "compute_capability": "{}.{}".format(*d.compute_capability)} for d in infos])


def _nvml(found: Found) -> str:
    if not found_module("pynvml"):
        return "pynvml not installed (pip install nvidia-ml-py)"
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            devices = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(h)
                cc = pynvml.nvmlDeviceGetCudaComputeCapability(h)
                devices.append({"index": i, "name": name.decode() if isinstance(name, bytes) else str(name),
                                "compute_capability": f"{cc[0]}.{cc[1]}",
                                "memory_mib": int(pynvml.nvmlDeviceGetMemoryInfo(h).total) >> 20})
            driver = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # noqa: BLE001 - no driver, Jetson (no NVML), ...
        return first_line(e)
    found("nvml", devices)
    return f"{len(devices)} device(s), driver {driver.decode() if isinstance(driver, bytes) else driver}"


def _nvidia_smi(found: Found) -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "not on PATH"
    cmd = [exe, "--query-gpu=index,name,compute_cap,memory.total,driver_version", "--format=csv,noheader,nounits"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return first_line(e)
    if proc.returncode != 0:
        said = (proc.stdout + proc.stderr).strip().splitlines()
        return f"exit {proc.returncode}: {said[0][:160] if said else 'no output'}"
    devices, driver = [], None
    for line in proc.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5 or not parts[0].isdigit():
            continue
        memory = parts[3]
        devices.append({"index": int(parts[0]), "name": parts[1],
                        "compute_capability": parts[2] if re.fullmatch(r"\d+\.\d+", parts[2]) else None,
                        "memory_mib": int(memory) if memory.isdigit() else None})
        driver = parts[4]
    found("nvidia-smi", devices)
    return f"{len(devices)} device(s)" + (f", driver {driver}" if driver else "")


def tensorrt_info() -> dict:
    """The TensorRT version, or why it cannot be used (absent, older than 10, broken)."""
    if not found_module("tensorrt"):
        return {"version": None, "error": "not installed"}
    try:
        from crab_rt.backends.tensorrt import import_tensorrt

        return {"version": str(import_tensorrt().__version__), "error": None}
    except Exception as e:  # noqa: BLE001 - too old, or a broken install
        return {"version": dist_version("tensorrt"), "error": str(e)}


def ctranslate2_info(gpu: int = 0) -> dict:
    """CTranslate2's version, the CUDA devices it sees, and its compute types on the CPU and on CUDA device `gpu`."""
    info: dict[str, Any] = {"version": None, "cuda_devices": 0, "compute_types": {"cpu": [], "cuda": []}, "error": None}
    if not found_module("ctranslate2"):
        info["error"] = "not installed"
        return info
    try:
        import ctranslate2

        info["version"] = ctranslate2.__version__
        info["cuda_devices"] = int(ctranslate2.get_cuda_device_count())
        info["compute_types"]["cpu"] = sorted(ctranslate2.get_supported_compute_types("cpu"))
        if info["cuda_devices"] > gpu:
            info["compute_types"]["cuda"] = sorted(ctranslate2.get_supported_compute_types("cuda", gpu))
    except Exception as e:  # noqa: BLE001
        info["error"] = first_line(e)
    return info


def offline_asr_models() -> list[dict]:
    """ASR models usable offline: the packaged ones (checked) and CTranslate2 models in the Hugging Face cache."""
    from crab_rt.errors import CrabError
    from crab_rt.runtime.asr import PACKAGED_MODELS, _packaged_folder

    models = []
    for name, entry in PACKAGED_MODELS.items():
        if not found_module(entry.module):
            continue
        try:
            folder = _packaged_folder(name)
            models.append({"name": name, "source": f"package {entry.module} (sha256 checked)", "path": str(folder),
                           "error": None})
        except CrabError as e:
            models.append({"name": name, "source": f"package {entry.module}", "path": None, "error": str(e)})
    if not found_module("huggingface_hub"):
        return models
    try:
        from huggingface_hub import scan_cache_dir

        cache = scan_cache_dir()
    except Exception:  # noqa: BLE001 - no cache folder yet: nothing downloaded
        return models
    names = {}
    if found_module("faster_whisper"):
        try:
            from faster_whisper import utils as fw_utils

            names = {repo: name for name, repo in getattr(fw_utils, "_MODELS", {}).items()}
        except Exception:  # noqa: BLE001 - names are a nicety
            names = {}
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        for rev in repo.revisions:
            files = {f.file_name for f in rev.files}
            if repo.repo_type == "model" and {"model.bin", "config.json"} <= files:
                models.append({"name": names.get(repo.repo_id, repo.repo_id), "source": f"Hugging Face cache "
                               f"({repo.repo_id})", "path": str(rev.snapshot_path), "error": None})
                break
    return models


def microphones_info() -> dict:
    """PortAudio's input devices (as `crab-rt devices` lists them), or why they cannot be listed."""
    if not found_module("pyaudio"):
        return {"devices": [], "error": "PyAudio is not installed"}
    try:
        from crab_rt.runtime.sources import list_input_devices

        return {"devices": list_input_devices(), "error": None}
    except Exception as e:  # noqa: BLE001
        return {"devices": [], "error": str(e)}
