"""fp16 ONNX graphs with the overflow-prone ops kept in fp32.

TensorRT 11 is strongly typed: precision is chosen in the ONNX, not by a
builder flag (DESIGN.md section 4). LayerNorm in fp16 overflows on real
activations (a known TensorRT problem), so normalisation, softmax and the
reductions of a decomposed LayerNorm stay in fp32; inputs and outputs stay
fp32 so every runtime feeds the same buffers to either precision.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["FP32_OPS", "convert_to_fp16"]

# Normalisation, softmax, and the pieces of a decomposed LayerNorm / GELU that
# overflow or lose too much in fp16.
FP32_OPS = (
    "LayerNormalization",
    "InstanceNormalization",
    "GroupNormalization",
    "BatchNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "Pow",
    "Sqrt",
    "Exp",
    "Log",
)


def convert_to_fp16(src: str | Path, dst: str | Path, keep_fp32: tuple[str, ...] = FP32_OPS) -> Path:
    """Write an fp16 copy of an fp32 ONNX graph.

    Args:
        src: fp32 ONNX file.
        dst: where to write the fp16 file.
        keep_fp32: op types left in fp32 (casts are inserted around them).

    Returns:
        `dst`.
    """
    import onnx

    from crab_rt.backends.onnxruntime import import_onnxruntime

    import_onnxruntime()  # one line naming the extras when no ONNX Runtime build is installed
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    converted = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(keep_fp32)),
    )
    onnx.save(converted, str(dst))
    return Path(dst)
