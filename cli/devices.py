"""`crab-rt devices`: list the audio input devices (microphones) PortAudio sees."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `devices` subcommand."""
    parser = subparsers.add_parser(
        "devices", parents=[common],
        help="list audio input devices (for --device of live capture)",
        description="List audio input devices with their index, name, default rate and channels. "
        "Needs PyAudio: pip install 'crab-rt[mic]'.",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the device table; returns 0 (1 when there is no input device)."""
    from crab_rt.runtime.sources import list_input_devices

    devices = list_input_devices()
    if not devices:
        print("no audio input devices found")
        return 1
    width = max(len("name"), *(len(d["name"]) for d in devices))
    print(f"{'index':>5}  {'name':<{width}}  {'rate_hz':>8}  {'channels':>8}")
    for d in devices:
        mark = "*" if d.get("is_default") else " "
        print(
            f"{d['index']:>4}{mark}  {d['name']:<{width}}  "
            f"{d['default_sample_rate']:>8.0f}  {d['max_input_channels']:>8}"
        )
    print("* default input device")
    return 0
