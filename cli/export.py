"""`crab-rt export`: a checkpoint -> a parity-checked model bundle (ONNX graphs + manifest)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "export", parents=[common],
        help="export a checkpoint to a model bundle (three parity-checked ONNX graphs)",
        description=(
            "Export speech encoder, text encoder and head as ONNX (legacy exporter, dynamic batch and length), "
            "check them against torch with ONNX Runtime, and write a bundle folder with manifest.json. "
            "An existing bundle at --out is replaced; a failed export leaves nothing behind."
        ),
    )
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt from crab-rt train")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument(
        "--precision", choices=("fp32", "fp16"), default="fp32",
        help="fp16 also writes *.fp16.onnx graphs (LayerNorm/Softmax kept fp32); fp32 graphs are always written",
    )
    p.add_argument("--asr", default=None, metavar="MODEL", help="faster-whisper model (name or folder) to record for the runtime")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="parity tolerance, max abs error (default 1e-4)")
    p.add_argument(
        "--fp16-tolerance", type=float, default=1e-2,
        help="fp16 vs fp32 tolerance on probabilities, max abs error (default 1e-2)",
    )
    p.add_argument("--max-batch", type=int, default=8, help="largest batch in the recorded shape ranges (default 8)")
    p.add_argument("--no-parity", action="store_true", help="skip the parity checks (not recommended)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crab_rt.errors import requires_extra

    with requires_extra("train"):
        from crab_rt.export.bundle_writer import ExportOptions, export_bundle

    options = ExportOptions(
        precision=args.precision,
        opset=args.opset,
        parity=not args.no_parity,
        tolerance=args.tolerance,
        fp16_tolerance=args.fp16_tolerance,
        asr_model=args.asr,
        max_batch=args.max_batch,
    )
    export_bundle(args.checkpoint, args.out, options)
    return 0
