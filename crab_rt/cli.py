"""The `crab-rt` command line: one subcommand per module in `crab_rt.commands`.

Each command module defines `register(subparsers)`, which adds its parser and
sets `func`. Modules import heavy libraries only inside `func`, so `crab-rt
--help` is fast and works on a runtime-only install. User errors (`CrabError`)
become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Sequence

from crab_rt import __version__
from crab_rt.errors import CrabError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every command module registered."""
    import crab_rt.commands as commands

    parser = argparse.ArgumentParser(
        prog="crab-rt",
        description="Streaming speech emotion recognition (Crab: WavLM + RoBERTa + MLCS).",
    )
    parser.add_argument("--version", action="version", version=f"crab-rt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"crab_rt.commands.{info.name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
