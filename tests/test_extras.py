"""The extras pick exactly one ONNX Runtime build.

`onnxruntime` and `onnxruntime-gpu` install the same `onnxruntime` module, so
an environment with both runs whichever was installed last. crab-rt requires
neither: `[cpu]` brings the CPU build (and faster-whisper, which itself
requires the CPU build), `[gpu]` the CUDA build on x86_64 Linux and Windows,
and the plain install none (Jetson users bring the jetson-ai-lab wheel).

The wheel's metadata is checked here without network. The resolve tests ask
pip what each extra would install (`pip install --dry-run --report`, against
the index pip is configured for): pip reads the wheels' metadata (PEP 658
files on PyPI) and downloads no GPU wheel. They skip, saying why, when the
index cannot be reached; CI has it.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

ORT_BUILDS = {"onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-qnn",
              "onnxruntime-rocm", "onnxruntime-migraphx", "onnxruntime-training"}
# The platforms PyPI has onnxruntime-gpu wheels for, and the ones [gpu] must leave alone (Jetson, macOS).
GPU_PLATFORMS = {("linux", "x86_64"): True, ("win32", "AMD64"): True, ("linux", "aarch64"): False,
                 ("darwin", "arm64"): False, ("darwin", "x86_64"): False}
INDEX = "https://pypi.org/simple/onnxruntime-gpu/"
GPU_HERE = "onnxruntime-gpu" if GPU_PLATFORMS.get((sys.platform, platform.machine())) else None


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def wheel(crab_wheel) -> Path:
    return crab_wheel


@pytest.fixture(scope="module")
def requirements(wheel) -> list:
    """The wheel's Requires-Dist lines as `packaging` requirements."""
    requirements_mod = pytest.importorskip("packaging.requirements")
    with zipfile.ZipFile(wheel) as z:
        metadata = next(z.read(n).decode() for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    return [requirements_mod.Requirement(line.split(":", 1)[1].strip()) for line in metadata.splitlines()
            if line.startswith("Requires-Dist:")]


def _names(requirements: list, extra: str, sys_platform: str = "linux", machine: str = "x86_64") -> set[str]:
    """Distributions required by `extra` ("" for the base install) on a platform, extras of crab-rt expanded."""
    env = {"sys_platform": sys_platform, "platform_machine": machine, "platform_system": "Linux",
           "python_version": "3.12", "extra": extra}
    out = set()
    for req in requirements:
        if bool(extra) != ("extra ==" in str(req.marker)):
            continue  # a base requirement counts for extra "", an extra's only for that extra
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        if req.name == "crab-rt":
            for sub in req.extras:
                out |= _names(requirements, sub, sys_platform, machine)
        else:
            out.add(req.name.lower())
    return out


def test_base_install_brings_no_onnxruntime_build(requirements):
    base = _names(requirements, "")
    assert base.isdisjoint(ORT_BUILDS) and "faster-whisper" not in base, base
    # faster-whisper's other requirements are base ones, so `pip install --no-deps faster-whisper` completes it.
    assert {"ctranslate2", "huggingface-hub", "tokenizers", "av", "tqdm"} <= base


def test_each_extra_names_one_build(requirements):
    assert _names(requirements, "cpu") & ORT_BUILDS == {"onnxruntime"}
    assert "faster-whisper" in _names(requirements, "cpu")
    for (sys_platform, machine), has_wheel in GPU_PLATFORMS.items():
        gpu = _names(requirements, "gpu", sys_platform, machine)
        assert gpu == ({"onnxruntime-gpu"} if has_wheel else set()), (sys_platform, machine, gpu)
    assert _names(requirements, "dev") & ORT_BUILDS == {"onnxruntime"}  # the dev/CI install runs on the CPU
    for extra in ("data", "train", "mic", "serve", "tensorrt", "demo"):
        assert _names(requirements, extra).isdisjoint(ORT_BUILDS | {"faster-whisper"}), extra


# --------------------------------------------------------------------------- what pip resolves


@pytest.fixture(scope="module")
def index_reachable() -> None:
    try:
        with urllib.request.urlopen(INDEX, timeout=15) as response:  # proxies from the environment, as pip
            response.read(1)
    except OSError as e:
        pytest.skip(f"PyPI is not reachable ({e}): the resolve tests read the index's metadata (CI runs them)")


def _resolve(requirements: list[str], tmp_path: Path) -> dict[str, str]:
    """{distribution: version} pip would install for `requirements` into an empty environment."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--only-binary",
           ":all:", "--report", str(report), *requirements]
    proc = _run(cmd)
    assert proc.returncode == 0, "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    installs = json.loads(report.read_text())["install"]
    assert all(item.get("download_info") for item in installs)
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in installs}


@pytest.mark.parametrize(("extras", "build"), [
    ("", None),
    ("[cpu]", "onnxruntime"),
    ("[gpu]", GPU_HERE),
    ("[cpu,serve,tensorrt,data]", "onnxruntime"),
    ("[gpu,serve,tensorrt,data]", GPU_HERE),
])
def test_pip_resolves_exactly_one_build(index_reachable, wheel, tmp_path, extras, build):
    resolved = _resolve([f"crab-rt{extras} @ {wheel.as_uri()}"], tmp_path)
    builds = set(resolved) & ORT_BUILDS
    assert builds == ({build} if build else set()), resolved
    assert ("faster-whisper" in resolved) == (build == "onnxruntime"), resolved
    print(f"crab-rt{extras}: " + (f"{build} {resolved[build]}" if build else "no ONNX Runtime build"))


def test_faster_whisper_beside_the_gpu_build_resolves_two(index_reachable, tmp_path):
    """Why faster-whisper is not in [gpu]: it requires the CPU build, and pip would install both."""
    resolved = _resolve(["faster-whisper>=1.1", "onnxruntime-gpu>=1.19"], tmp_path)
    assert {"onnxruntime", "onnxruntime-gpu"} <= set(resolved), resolved
