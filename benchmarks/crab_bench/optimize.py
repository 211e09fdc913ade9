"""Offline ONNX Runtime transformer fusion of an encoder graph (attention, SkipLayerNorm, BiasGelu).

Used by `python benchmarks/models.py --ort-variants` to measure what
`onnxruntime.transformers.optimizer` buys on the CPU. The fused graph is
checked against the original on a random input before it is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crab_rt.errors import BundleError

__all__ = ["fuse_encoder_graph", "quantize_encoder_graph", "FUSION_TOLERANCE"]

FUSION_TOLERANCE = 1e-3


def _feed(path: Path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    if "speech" in path.name:
        x = (0.1 * rng.standard_normal((1, 32000))).astype(np.float32)
        return {"input_values": x, "attention_mask": np.ones_like(x, dtype=np.int64)}
    ids = rng.integers(4, 300, size=(1, 24), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 0, 2
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def fuse_encoder_graph(src: Path, dst: Path, model_type: str, log=print) -> Path:
    """Write (once) the fused version of `src` at `dst` and check it against `src`.

    Args:
        src: the bundle's fp32 encoder graph.
        dst: where the fused graph goes (reused when newer than `src`).
        model_type: "bert" for RoBERTa; anything else uses the generic "bert" fusions
            with attention fusion off (WavLM's gated relative-position attention
            does not match ONNX Runtime's attention patterns).
        log: progress lines.

    Raises:
        BundleError: the fused graph's hidden states differ from the original by more
            than FUSION_TOLERANCE.
    """
    import onnxruntime as ort
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    src, dst = Path(src), Path(dst)
    if not (dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime):
        dst.parent.mkdir(parents=True, exist_ok=True)
        options = FusionOptions("bert")
        if model_type != "bert":
            options.enable_attention = False
        log(f"fusing {src.name} ({model_type}) -> {dst}")
        model = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0,
                               optimization_options=options, opt_level=0, use_gpu=False, only_onnxruntime=False)
        model.save_model_to_file(str(dst))
    feed = _feed(src)
    outs = []
    for path in (src, dst):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        outs.append(s.run(["hidden_states"], feed)[0])
    err = float(np.max(np.abs(outs[0] - outs[1])))
    if err > FUSION_TOLERANCE:
        raise BundleError(f"{dst}: fused graph differs from {src.name} by {err:.1e} (> {FUSION_TOLERANCE:g})")
    log(f"  {dst.name}: max abs diff vs original {err:.1e}")
    return dst


def quantize_encoder_graph(src: Path, dst: Path, log=print) -> Path:
    """Write (once) a dynamic int8 version of `src` (MatMul/Gemm weights int8, activations quantised per call).

    NOT parity-preserving: the hidden states move by a few percent; the benchmark
    reports the difference. Meant to measure what int8 would buy, not to ship
    without an accuracy check on real weights.
    """
    from crab_rt.export.int8 import quantize_graph  # what `crab-rt export` writes as the bundle's int8 encoders

    src, dst = Path(src), Path(dst)
    if not (dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime):
        dst.parent.mkdir(parents=True, exist_ok=True)
        log(f"quantizing {src.name} (dynamic int8, MatMul/Gemm) -> {dst}")
        quantize_graph(src, dst)
    return dst
