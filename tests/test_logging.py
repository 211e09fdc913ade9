"""Logging: the library logs to "crab_rt.*" and never prints; the CLI shows INFO by default, hides it with --quiet.

The source rules are checked on the syntax tree of every module of the library (crab_rt/, train/,
export/, data/), so a `print(` added anywhere fails this file. Entry points (functions named `main`,
e.g. `python -m crab_rt.data.tiny_asr`) may write their result to stdout and set up a handler for
their own run; everything else logs. `warnings.warn` is for programmers (DeprecationWarning and
friends), not for conditions met at run time: those are logger warnings. There are no exceptions
beyond these today.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from crab_rt.cli import configure_logging, main

ROOT = Path(__file__).resolve().parents[1]
LIBRARY_DIRS = ("crab_rt", "train", "export", "data")  # the wheel's packages, less the CLI (which prints)
_PROGRAMMER_WARNINGS = {"DeprecationWarning", "PendingDeprecationWarning", "FutureWarning"}
_ENTRY_POINTS = {"main"}


def _dotted(node: ast.AST) -> str:
    """`a.b.c` for a Name/Attribute chain, else ""."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


class _Checker(ast.NodeVisitor):
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.functions: list[str] = []
        self.warn_names = {"warnings.warn"}  # plus `from warnings import warn [as x]`
        self.problems: list[str] = []

    def _report(self, node: ast.AST, message: str) -> None:
        self.problems.append(f"{self.filename}:{node.lineno}: {message}")

    def _in_entry_point(self) -> bool:
        return any(name in _ENTRY_POINTS for name in self.functions)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module == "warnings":
            self.warn_names |= {a.asname or a.name for a in node.names if a.name == "warn"}
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        name = _dotted(node.func)
        method = node.func.attr if isinstance(node.func, ast.Attribute) else ""  # also on calls: f().addHandler
        if name == "print":
            self._report(node, "print() in the library: log to logging.getLogger(__name__) instead")
        elif name in self.warn_names:
            category = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "category"), None
            )
            if category is None or _dotted(category) not in _PROGRAMMER_WARNINGS:
                self._report(node, "warnings.warn() for a run-time condition: use log.warning() instead")
        elif name in ("sys.stdout.write", "sys.stderr.write") and not self._in_entry_point():
            self._report(node, f"{name}() outside an entry point: log instead")
        elif name == "logging.basicConfig" or (method == "addHandler" and not self._adds_null_handler(node)):
            if not self._in_entry_point():
                self._report(node, "the library must not configure logging (only the CLI and entry points do)")
        elif (name == "getLogger" or method == "getLogger") and not (
            len(node.args) == 1 and isinstance(node.args[0], ast.Name) and node.args[0].id == "__name__"
        ):
            self._report(node, "module loggers are getLogger(__name__), so they sit under 'crab_rt'")
        self.generic_visit(node)

    @staticmethod
    def _adds_null_handler(node: ast.Call) -> bool:
        return len(node.args) == 1 and isinstance(node.args[0], ast.Call) and _dotted(node.args[0].func).endswith(
            "NullHandler"
        )


def check_no_print(source: str, filename: str = "<string>") -> list[str]:
    """Problems in one module's source ("file:line: message"); empty when it only logs."""
    checker = _Checker(filename)
    checker.visit(ast.parse(source, filename=filename))
    return checker.problems


def _library_files() -> list[Path]:
    return sorted(p for d in LIBRARY_DIRS for p in (ROOT / d).rglob("*.py"))


def test_library_sources_do_not_print():
    files = _library_files()
    assert len(files) > 50 and ROOT / "data" / "tiny_asr.py" in files  # the walk really covers the library
    problems = [p for f in files for p in check_no_print(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "source, problem",
    [
        ("def f(x):\n    print(x)\n", "<string>:2: print()"),
        ("import sys\ndef f():\n    print('x', file=sys.stderr)\n", "<string>:3: print()"),
        ("import warnings\nwarnings.warn('odd byte', RuntimeWarning)\n", "<string>:2: warnings.warn()"),
        ("from warnings import warn as w\nw('odd byte')\n", "<string>:2: warnings.warn()"),
        ("import sys\ndef helper():\n    sys.stderr.write('x')\n", "<string>:3: sys.stderr.write()"),
        ("import logging\nlogging.basicConfig(level=logging.INFO)\n", "<string>:2: the library must not configure"),
        ("import logging\nlogging.getLogger(__name__).addHandler(logging.StreamHandler())\n", "<string>:2: the library"),
        ("import logging\nlog = logging.getLogger('crab')\n", "<string>:2: module loggers are getLogger(__name__)"),
    ],
)
def test_check_no_print_catches(source, problem):
    [found] = check_no_print(source)
    assert found.startswith(problem), found


def test_check_no_print_allows():
    source = (
        "import logging, sys, warnings\n"
        "log = logging.getLogger(__name__)\n"
        "logging.getLogger(__name__).addHandler(logging.NullHandler())\n"
        "def f():\n    log.info('step'); warnings.warn('old name', DeprecationWarning)\n"
        "def main():\n    logging.getLogger(__name__).addHandler(logging.StreamHandler())\n"
        "    sys.stdout.write('result\\n')\n"
    )
    assert check_no_print(source) == []


def test_package_has_a_null_handler_only():
    import crab_rt

    handlers = logging.getLogger(crab_rt.__name__).handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


# --------------------------------------------------------------------------- the CLI's --verbose / --quiet


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_model_parts, tmp_path_factory) -> Path:
    from crab_rt.train.checkpoint import save_checkpoint

    model, tokenizer = tiny_model_parts
    root = tmp_path_factory.mktemp("logging")
    return save_checkpoint(root / "best.pt", model, tokenizer, {"max_audio_s": 12.0, "max_text_tokens": 32})


def _export(checkpoint: Path, out: Path, *flags: str) -> None:
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--no-parity", *flags]) == 0


@pytest.mark.filterwarnings("error")  # no third-party warning reaches the user (issue: quiet, honest output)
def test_cli_shows_info_by_default_hides_it_with_quiet(tiny_checkpoint, tmp_path, capsys):
    _export(tiny_checkpoint, tmp_path / "default")
    out, err = capsys.readouterr()
    assert out == ""  # progress is not the command's output
    lines = err.splitlines()
    assert lines[0] == f"loading checkpoint {tiny_checkpoint}..."
    assert "exporting head..." in lines and "parity check skipped (--no-parity)" in lines
    assert lines[-1].startswith(f"bundle {tmp_path / 'default'}: 4 labels, modality both")
    assert not any("ops " in line for line in lines)  # DEBUG is off by default

    _export(tiny_checkpoint, tmp_path / "quiet", "--quiet")
    assert capsys.readouterr() == ("", "")
    assert (tmp_path / "quiet" / "manifest.json").is_file()

    _export(tiny_checkpoint, tmp_path / "verbose", "-v")
    err = capsys.readouterr().err
    assert "exporting head..." in err and "  head.onnx: " in err and "ops " in err  # DEBUG details


def test_cli_quiet_keeps_warnings(capsys):
    configure_logging(-1)
    logging.getLogger("crab_rt.runtime.sources").info("a step")
    logging.getLogger("crab_rt.runtime.sources").warning("stdin: 1 trailing byte(s)")
    assert capsys.readouterr().err == "crab-rt: warning: stdin: 1 trailing byte(s)\n"


# --------------------------------------------------------------------------- the library logs, silently by default


def test_export_bundle_logs_its_steps(tiny_checkpoint, tmp_path, caplog, capsys):
    from crab_rt.export.bundle_writer import ExportOptions, export_bundle

    with caplog.at_level(logging.INFO, logger="crab_rt.export"):
        export_bundle(tiny_checkpoint, tmp_path / "bundle", ExportOptions(parity=False))
    names = {r.name for r in caplog.records}
    assert {"crab_rt.export.bundle_writer", "crab_rt.export.onnx_export"} <= names
    assert names <= {f"crab_rt.export.{m}" for m in ("bundle_writer", "onnx_export", "speech_split", "int8")}
    assert all(r.levelno == logging.INFO for r in caplog.records)
    messages = caplog.messages
    assert messages[0] == f"loading checkpoint {tiny_checkpoint}..."
    assert messages[1:5] == ["exporting speech encoder...", "exporting voice-only classifier...",
                             "exporting text encoder...", "exporting head..."]
    assert "parity check skipped (--no-parity)" in messages
    assert messages[-1].startswith(f"bundle {tmp_path / 'bundle'}: 4 labels")
    assert capsys.readouterr() == ("", "")  # no handler configured: the library itself writes nothing
