"""`crab-rt build-engines`: a bundle's ONNX graphs -> TensorRT engines for one GPU."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the `build-engines` subcommand."""
    parser = subparsers.add_parser(
        "build-engines", parents=[common],
        help="build TensorRT engines for a bundle on this GPU (needs TensorRT and cuda-python)",
        description=(
            "Build one TensorRT engine per graph of a bundle into BUNDLE/engines/<gpu>-<sm>-<trt>-<precision>/, "
            "with optimisation profiles from the bundle's shape ranges, a persistent timing cache, and an "
            "engine.json cache key (GPU, compute capability, TensorRT version, precision, ONNX sha256, shape "
            "profile) that the runtime checks on load. Engines run only on the GPU architecture and TensorRT "
            "version that built them. Needs TensorRT >= 10 (JetPack on Jetson; NVIDIA's pip index or the tarball "
            "on x86) and cuda-python."
        ),
    )
    parser.add_argument("--bundle", required=True, help="bundle folder written by crab-rt export")
    parser.add_argument("--gpu", type=int, default=0, help="CUDA device index to build for (default 0)")
    parser.add_argument(
        "--precision", choices=("fp32", "fp16"), default=None,
        help="which graphs to build: fp16 uses the bundle's *.fp16.onnx (export --precision fp16); "
        "default fp16 when the bundle has fp16 graphs, else fp32",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when current engines exist")
    parser.add_argument(
        "--workspace-gb", type=float, default=None,
        help="TensorRT workspace limit in GiB (default: TensorRT's, up to the device memory)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the engines; returns 0."""
    from crab_rt.export.tensorrt_build import BuildOptions, build_engines

    options = BuildOptions(
        gpu_index=args.gpu, precision=args.precision, force=args.force, workspace_gb=args.workspace_gb
    )
    build_engines(args.bundle, options)
    return 0
