"""What users install: the wheel ships every module of the tree, and its CLI runs.

Every earlier test ran on the editable install, so a package missing from
pyproject's list went unnoticed until a user ran `pip install .`. Here the wheel
is built from the checkout, compared with the source tree, installed into a
separate folder (no editable finder, no source tree on the path) and
`crab-rt listen` runs from it on the ONNX Runtime backend with torch,
transformers and matplotlib made unimportable, as on a runtime-only install.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from import_rules import FOLDERS, ROOT, source_modules

RUNTIME_ONLY_BLOCKED = ("torch", "transformers", "matplotlib")


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def wheel(crab_wheel) -> Path:
    """crab-rt's wheel (built once per session: tests/conftest.py)."""
    return crab_wheel


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed (without dependencies: the dev environment has them) into its own folder."""
    target = tmp_path_factory.mktemp("site")
    proc = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(target),
                 str(wheel)])
    assert proc.returncode == 0, proc.stderr
    return target


def test_wheel_ships_every_module_of_the_tree(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    shipped = {n[:-3].replace("/", ".").removesuffix(".__init__") for n in names if n.endswith(".py")}
    expected = {m.name for m in source_modules() if not m.name.startswith("crab_bench")}
    assert expected - shipped == set(), "modules missing from the wheel"
    assert shipped - expected == set(), "the wheel ships modules that are not in the tree"
    for folder, package in FOLDERS.items():  # every wing is in the expected set
        if package != "crab_bench":
            assert package in expected, folder
    recipes = {p.name for p in (ROOT / "train" / "recipes").glob("*.toml")}
    assert recipes and {f"crab_rt/train/recipes/{r}" for r in recipes} <= names
    assert not any(n.startswith(("crab_bench/", "tests/", "benchmarks/")) for n in names)
    schemas = {p.name for p in (ROOT / "crab_rt" / "serve" / "schemas").glob("*.json")}
    assert len(schemas) == 2 and {f"crab_rt/serve/schemas/{n}" for n in schemas} <= names
    from crab_rt.serve.page import ASSETS  # the browser page: every file it serves

    assert {f"crab_rt/serve/static/{name}" for name, _ in ASSETS.values()} <= names
    assert {p.name for p in (ROOT / "crab_rt" / "serve" / "static").iterdir()} == {n for n, _ in ASSETS.values()}


def test_wheel_metadata_keeps_heavy_libraries_in_extras(wheel):
    with zipfile.ZipFile(wheel) as z:
        metadata = next(z.read(n).decode() for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    base = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]
    names = {req.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for req in base}
    assert {"numpy", "ctranslate2", "tokenizers"} <= names
    # No ONNX Runtime build (nor faster-whisper, which requires the CPU one): [cpu] or [gpu] picks it
    # (tests/test_extras.py).
    assert names.isdisjoint({"torch", "transformers", "matplotlib", "onnx", "websockets", "prometheus-client",
                             "onnxruntime", "onnxruntime-gpu", "faster-whisper"}), names
    serve = {line.split(":", 1)[1].split(";")[0].strip() for line in metadata.splitlines()
             if line.startswith("Requires-Dist:") and "extra == \"serve\"" in line}
    assert serve == {"websockets>=14", "prometheus-client>=0.20"}, serve


@pytest.fixture(scope="module")
def blocker(tmp_path_factory) -> Path:
    """A folder whose torch / transformers / matplotlib raise ImportError, as when they are not installed."""
    root = tmp_path_factory.mktemp("blocker")
    for name in RUNTIME_ONLY_BLOCKED:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed (blocked by the test)')\n")
    return root


def _wheel_env(installed: Path, blocker: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(installed)]), "PYTHONNOUSERSITE": "1"}


def test_installed_package_is_the_wheel_not_the_checkout(installed, blocker, tmp_path):
    code = "import crab_rt, crab_rt.cli, crab_rt.data, crab_rt.train, crab_rt.export; print(crab_rt.cli.__file__)"
    proc = _run([sys.executable, "-c", code], env=_wheel_env(installed, blocker), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(installed), proc.stdout


def test_listen_runs_from_the_wheel_without_torch(installed, blocker, tiny_bundle, tmp_path):
    from crab_rt.data.synth import read_conversation_truth, synthesize_conversation

    wav = tmp_path / "conversation.wav"
    synthesize_conversation(wav, num_turns=2, seed=1)
    truth = read_conversation_truth(wav)
    script = installed / "bin" / "crab-rt"
    assert script.is_file(), "the wheel installs no crab-rt console script"
    proc = _run([str(script), "listen", "--bundle", str(tiny_bundle), "--input", str(wav), "--no-asr",
                 "--backend", "onnxruntime"], env=_wheel_env(installed, blocker), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    events = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(events) == len(truth), (proc.stdout, truth)


def test_blocked_import_really_fails(installed, blocker, tmp_path):
    """The blocker works: a command that needs torch says so in one line instead of running."""
    proc = _run([sys.executable, "-m", "crab_rt.cli", "model-info"], env=_wheel_env(installed, blocker),
                cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("crab-rt: error:") and "crab-rt[train]" in proc.stderr, proc.stderr


def test_serve_without_its_extra_says_which_to_install(installed, blocker, tiny_bundle, tmp_path):
    for name in ("websockets", "prometheus_client"):
        (blocker / name).mkdir(exist_ok=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed (blocked)')\n")
    try:
        proc = _run([sys.executable, "-m", "crab_rt.cli", "serve", "--bundle", str(tiny_bundle), "--no-asr"],
                    env=_wheel_env(installed, blocker), cwd=tmp_path)
    finally:
        import shutil

        for name in ("websockets", "prometheus_client"):
            shutil.rmtree(blocker / name)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "crab-rt: error: this feature needs 'websockets', which is not installed: pip install 'crab-rt[serve]'"]
