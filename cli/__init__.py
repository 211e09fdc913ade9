"""The `crab-rt` command line: one subcommand per module of this package.

This package is the only place that parses arguments, prints results and
turns errors into exit codes. Each command module defines `register(sub)`,
which adds its parser and sets `func`; modules import heavy libraries only
inside `func`, so `crab-rt --help` is fast and works on a runtime-only
install. User errors (`CrabError`) become one line on stderr and exit code 2.
The library logs to the `crab_rt` logger; `--verbose` / `--quiet` set its
level here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from crab_rt import __version__
from crab_rt.errors import CrabError

__all__ = ["main", "build_parser", "COMMAND_MODULES"]


def _command_modules() -> list[str]:
    """The command modules of this package, in name order (helpers start with `_`)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


COMMAND_MODULES: tuple[str, ...] = tuple(_command_modules())


def _common_options() -> argparse.ArgumentParser:
    """`--verbose` / `--quiet`, accepted after every subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_const", dest="verbosity", const=1, default=0,
                   help="also print debug messages")
    g.add_argument("-q", "--quiet", action="store_const", dest="verbosity", const=-1,
                   help="only warnings and errors; no progress bars")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every command module registered."""
    parser = argparse.ArgumentParser(
        prog="crab-rt",
        description="Streaming speech emotion recognition (Crab: WavLM + RoBERTa + MLCS).",
    )
    parser.add_argument("--version", action="version", version=f"crab-rt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_options()
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub, common)
    return parser


class _CliFormatter(logging.Formatter):
    """Info as plain lines; warnings and errors as `crab-rt: warning: ...`, like the CLI's own errors."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"crab-rt: {record.levelname.lower()}: {message}"
        return message


class _StderrHandler(logging.StreamHandler):
    """A stream handler on whatever `sys.stderr` is when a record is emitted (tests and callers swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(verbosity: int) -> None:
    """Route the `crab_rt` logger to stderr: -1 warnings only, 0 info, 1 debug."""
    level = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}[verbosity]
    logger = logging.getLogger("crab_rt")
    logger.setLevel(level)
    for handler in list(logger.handlers):  # a second main() in one process replaces the first's handler
        if getattr(handler, "crab_cli", False):
            logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(_CliFormatter("%(message)s"))
    handler.crab_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as given (`crab-rt train --nproc-per-node` passes it on)
    configure_logging(args.verbosity)
    try:
        return int(args.func(args) or 0)
    except CrabError as e:
        print(f"crab-rt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("crab-rt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `crab-rt listen ... | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
