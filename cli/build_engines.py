"""`crab-rt build-engines`: a bundle's ONNX graphs -> TensorRT engines for one GPU."""

from __future__ import annotations

import argparse

from crab_rt.bundle import PRECISIONS
from crab_rt.cli._options import add_config_option, config_from_args
from crab_rt.export.tensorrt_build import BuildOptions


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `build-engines` subcommand."""
    parser = subparsers.add_parser(
        "build-engines", parents=[common],
        help="build TensorRT engines for a bundle on this GPU (needs TensorRT and cuda-python)",
        description=(
            "Build one TensorRT engine per graph of a bundle into BUNDLE/engines/<gpu>-<sm>-<trt>-<precision>/, "
            "with optimisation profiles from the bundle's shape ranges, a persistent timing cache, and an "
            "engine.json cache key (GPU, compute capability, TensorRT version, precision, ONNX sha256, shape "
            "profile) that the runtime checks on load: a stale engine is refused with this command to run, and "
            "running it rebuilds the stale folder in place. Engines run only on the GPU architecture and TensorRT "
            "version that built them. Needs TensorRT >= 10 (JetPack on Jetson; NVIDIA's pip index or the tarball "
            "on x86) and cuda-python."
        ),
    )
    parser.add_argument("--bundle", required=True, help="bundle folder written by crab-rt export")
    add_config_option(parser, "--gpu", BuildOptions, "gpu_index", "CUDA device index to build for")
    add_config_option(
        parser, "--precision", BuildOptions, "precision", choices=PRECISIONS,
        help="which graphs to build: fp16 uses the bundle's *.fp16.onnx (export --precision fp16)",
        default_text="fp16 when the bundle has fp16 graphs, else fp32",
    )
    add_config_option(parser, "--force", BuildOptions, "force",
                      "rebuild even when current engines exist (stale or broken engines for this GPU, TensorRT "
                      "and bundle are always rebuilt in place)")
    add_config_option(parser, "--workspace-gb", BuildOptions, "workspace_gb", "TensorRT workspace limit in GiB",
                      type=float, default_text="TensorRT's, up to the device memory")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the engines; returns 0."""
    from crab_rt.export.tensorrt_build import build_engines

    build_engines(args.bundle, config_from_args(BuildOptions, args))
    return 0
