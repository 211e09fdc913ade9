"""What `crab-rt listen`, `client` and `serve` share at their edges: input flags, output files, event lines,
token files, and SIGTERM handled like Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from crab_rt.audio import SAMPLE_RATE
from crab_rt.errors import ConfigError
from crab_rt.runtime.events import EmotionEvent

__all__ = ["add_input_options", "check_output", "open_output", "pretty_line", "read_token_file",
           "run_with_sigterm_as_interrupt"]


class _PcmOption(argparse.Action):
    """Stores the value and records the flag, so that --rate/--channels without --input - can be refused."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        namespace.pcm_flags = [*getattr(namespace, "pcm_flags", []), option_string]


def add_input_options(p: argparse.ArgumentParser, realtime_help: str) -> None:
    """--input / --device, --rate / --channels (raw PCM on stdin only) and --realtime."""
    src = p.add_argument_group("input (one of)")
    src.add_argument("--input", help="audio/video file, or - for raw signed 16-bit little-endian PCM on stdin")
    src.add_argument("--device", help="microphone: index or (part of) a name, see `crab-rt devices`")
    src.add_argument("--rate", type=int, default=SAMPLE_RATE, action=_PcmOption,
                     help=f"sample rate of --input - (default {SAMPLE_RATE}); only with --input -")
    src.add_argument("--channels", type=int, default=1, action=_PcmOption,
                     help="channels of --input - (default 1); only with --input -")
    src.add_argument("--realtime", action="store_true", help=realtime_help)


def check_input_flags(args: argparse.Namespace) -> None:
    """Exactly one input, and --rate/--channels only for raw PCM on stdin."""
    if (args.input is None) == (args.device is None):
        raise ConfigError("give exactly one input: --input FILE, --input - (PCM on stdin) or --device MIC")
    pcm_flags = getattr(args, "pcm_flags", [])
    if pcm_flags and args.input != "-":
        raise ConfigError(f"{'/'.join(dict.fromkeys(pcm_flags))} apply only to --input - (raw PCM on stdin); "
                          "a file or microphone gives its own")


def check_output(path: str | None) -> None:
    """Refuse an --output that cannot be written (a folder, a missing folder) before anything starts."""
    if path is None:
        return
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"--output {path}: is a folder; give a file name")
    if not out.parent.is_dir():
        what = "is not a folder" if out.parent.exists() else "does not exist"
        raise ConfigError(f"--output {path}: folder {out.parent} {what}")


def open_output(path: str) -> IO[str]:
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"--output {path}: cannot write: {e.strerror or e}") from e


def pretty_line(event: EmotionEvent) -> str:
    """An event as `--format pretty` prints it (one line, newline included)."""
    text = f' "{event.text}"' if event.text else ""
    flag = " (text flagged)" if event.text_flagged else ""
    stage = " (provisional: voice only)" if event.stage == "provisional" else ""
    abstained = " (abstained)" if event.abstained else ""
    return (f"[{event.start_s:7.2f}-{event.end_s:7.2f}s] {event.label:<10} {event.confidence:5.2f}  "
            f"{event.latency_ms.get('end_to_event', float('nan')):6.0f} ms{stage}{text}{flag}{abstained}\n")


def read_token_file(path: str | None, flag: str = "--token-file") -> str | None:
    """The bearer token held in `path` (one line, surrounding whitespace stripped); None without a path.

    Raises:
        ConfigError: a folder, a missing, unreadable, non-UTF-8 or empty file, or more than one line.
    """
    if path is None:
        return None
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; give the file holding the token")
    try:
        token = file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{flag} {path}: file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{flag} {path}: not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot read: {e.strerror or e}") from None
    if not token:
        raise ConfigError(f"{flag} {path}: the file is empty")
    if "\n" in token or "\r" in token:
        raise ConfigError(f"{flag} {path}: holds more than one line; the token is one line")
    return token


def _sigterm_as_interrupt(signum, frame) -> None:
    """SIGTERM (systemd, `docker stop`) ends a run as Ctrl-C does."""
    raise KeyboardInterrupt


def run_with_sigterm_as_interrupt(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """`run(args)` with SIGTERM raising KeyboardInterrupt (main thread only), the previous handler restored after."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        return run(args)
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
