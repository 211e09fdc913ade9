"""Packaging: version, CLI help, the public API, and a cheap import."""

import subprocess
import sys

import pytest

import crab_rt
from crab_rt.cli import main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"crab-rt {crab_rt.__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("synth", "train", "evaluate", "export", "build-engines", "listen", "devices", "prepare",
                    "transcribe-manifest", "model-info"):
        assert command in out, command


def test_public_api_resolves():
    for name in crab_rt.__all__:
        assert getattr(crab_rt, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        crab_rt.Nope  # noqa: B018


def test_import_is_cheap():
    code = "import sys, crab_rt, crab_rt.cli; print([m for m in ('torch','transformers','onnxruntime','tensorrt') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
