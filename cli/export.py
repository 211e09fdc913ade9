"""`crab-rt export`: a checkpoint -> a parity-checked model bundle (ONNX graphs + manifest)."""

from __future__ import annotations

import argparse

from crab_rt.bundle import PRECISIONS
from crab_rt.cli._options import add_config_option, config_from_args
from crab_rt.export.bundle_writer import ExportOptions


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
    add_config_option(
        p, "--precision", ExportOptions, "precision", choices=PRECISIONS,
        help="fp16 also writes *.fp16.onnx graphs (LayerNorm/Softmax kept fp32); fp32 graphs are always written",
    )
    add_config_option(p, "--asr", ExportOptions, "asr_model", "ASR model for the runtime: a faster-whisper name "
                      "(recorded) or a local CTranslate2 folder (copied into the bundle)", type=str, metavar="MODEL")
    add_config_option(p, "--opset", ExportOptions, "opset", "ONNX opset")
    add_config_option(p, "--tolerance", ExportOptions, "tolerance", "parity tolerance, max abs error")
    add_config_option(p, "--fp16-tolerance", ExportOptions, "fp16_tolerance",
                      "fp16 vs fp32 tolerance on probabilities, max abs error")
    add_config_option(p, "--max-batch", ExportOptions, "max_batch", "largest batch in the recorded shape ranges")
    add_config_option(p, "--no-parity", ExportOptions, "parity", "skip the parity checks (not recommended)")
    add_config_option(p, "--no-cpu-int8", ExportOptions, "cpu_int8",
                      "write no int8 encoders for ONNX Runtime on the CPU (by default they are written when their "
                      "probabilities stay within --int8-tolerance of fp32, and the CPU runs them)")
    add_config_option(p, "--int8-tolerance", ExportOptions, "int8_tolerance",
                      "int8 vs fp32 bound on probabilities, max abs error")
    add_config_option(p, "--int8-min-weights", ExportOptions, "int8_min_weights",
                      "an encoder with fewer MatMul/Gemm weights stays fp32 (too small to gain from int8)")
    add_config_option(p, "--no-incremental-speech", ExportOptions, "incremental_speech",
                      "write no speech_frontend/speech_backend graphs (by default they are written when incremental "
                      "encoding matches the whole speech encoder within the two bounds below)")
    add_config_option(p, "--incremental-tolerance", ExportOptions, "incremental_tolerance",
                      "incremental vs whole speech encoder: bound on the encoder output, max abs error")
    add_config_option(p, "--incremental-prob-tolerance", ExportOptions, "incremental_prob_tolerance",
                      "incremental vs whole speech encoder: bound on probabilities, max abs error")
    add_config_option(p, "--no-torch-weights", ExportOptions, "torch_weights",
                      "leave the torch weights (model.pt) out of the bundle: smaller, runs on onnxruntime and "
                      "tensorrt only, not on --backend torch")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crab_rt.errors import requires_extra

    with requires_extra("train"):
        from crab_rt.export.bundle_writer import export_bundle

    export_bundle(args.checkpoint, args.out, config_from_args(ExportOptions, args))
    return 0
