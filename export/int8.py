"""int8 encoder graphs for ONNX Runtime on the CPU, and their parity against the fp32 graphs.

Dynamic quantisation (`onnxruntime.quantization.quantize_dynamic`): the weights
of every MatMul/Gemm become int8, activations are quantised per call, and ONNX
Runtime fuses each product into one `DynamicQuantizeMatMul` that runs on the
CPU's int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, ARM dot product).
On the 2-core benchmark machine this makes the base speech encoder 1.7-1.9x
and the text encoder 2.6-3x faster than their fp32 graphs. Convolutions stay
fp32 (`ConvInteger` was slower than the fp32 Conv there), and so does the head:
its time goes into GRU steps, not matrix products.

int8 changes the encoders' outputs by a few percent, so what ships is decided
by the probabilities: `check_int8_parity` runs the fp32 and the int8 pipelines
(ONNX Runtime CPU, fp32 head) on the parity cases of `crab_rt.export.parity` and
records the max abs difference of the probabilities, of the logits and the
label agreement. The bundle writer keeps the int8 graphs only when the
probabilities are within the bound; the manifest's `cpu_int8` entry records
the parity either way, and the ONNX Runtime backend checks it again on load
(`crab_rt.backends.onnxruntime.cpu_int8_graphs`).

Small graphs are left alone (`DEFAULT_MIN_WEIGHTS`): quantising activations on
every call costs more than int8 products save when the matrices are tiny.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from crab_rt.errors import ConfigError

__all__ = ["INT8_GRAPHS", "DEFAULT_INT8_TOLERANCE", "DEFAULT_MIN_WEIGHTS", "matmul_weight_count", "quantize_graph",
           "check_int8_parity", "int8_entry"]

log = logging.getLogger(__name__)

INT8_GRAPHS = ("speech_encoder", "text_encoder")
DEFAULT_INT8_TOLERANCE = 1e-2  # on the probabilities, as for fp16
DEFAULT_MIN_WEIGHTS = 4_000_000  # MatMul/Gemm weights below which a graph stays fp32


def matmul_weight_count(path: str | Path) -> int:
    """Number of weights (initializer elements) that feed a MatMul or Gemm in an ONNX file."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    sizes = {t.name: int(np.prod(t.dims)) for t in graph.initializer}
    return sum(sizes.get(i, 0) for n in graph.node if n.op_type in ("MatMul", "Gemm") for i in n.input[1:2])


def quantize_graph(src: str | Path, dst: str | Path) -> Path:
    """Write a dynamic int8 copy of an fp32 graph: MatMul/Gemm weights int8 (per tensor, signed), I/O unchanged.

    Returns:
        `dst`.
    """
    from crab_rt.backends.onnxruntime import import_onnxruntime

    import_onnxruntime()  # one line naming the extras when no ONNX Runtime build is installed
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # ONNX Runtime's pre-processing first (shape inference, graph optimisation), as its quantizer asks: without
    # it, quantize_dynamic logs its advice with `logging.warning` on the root logger, which prints a
    # `WARNING:root:` line and configures logging for the whole process.
    prepared = Path(dst).with_name(Path(dst).stem + ".preprocessed.onnx")
    try:
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        prepared.unlink(missing_ok=True)
    return Path(dst)


def check_int8_parity(
    fp32_graphs: Mapping[str, str | Path],
    int8_graphs: Mapping[str, str | Path],
    modality: str,
    vocab_size: int,
    pad_id: int,
    max_text_tokens: int,
    normalize: bool,
) -> dict:
    """Compare the pipeline with the int8 encoders against the fp32 pipeline (ONNX Runtime CPU).

    Args:
        fp32_graphs: {graph name: fp32 path} for every graph of the model.
        int8_graphs: {graph name: int8 path} for the graphs that have one (the others run fp32 in both).

    Returns:
        {"probabilities": max abs diff, "logits": max abs diff, "label_agreement": fraction of samples
        whose most probable label is the same, "samples": how many samples were compared}.
    """
    from crab_rt.export.parity import _session, compare_pipelines, parity_cases

    fp32 = {k: _session(v) for k, v in fp32_graphs.items()}
    int8 = {**fp32, **{k: _session(v) for k, v in int8_graphs.items()}}
    return compare_pipelines(fp32, int8, parity_cases(modality, vocab_size, pad_id, max_text_tokens, normalize))


def int8_entry(
    graphs: Mapping[str, Path],
    out_dir: str | Path,
    modality: str,
    vocab_size: int,
    pad_id: int,
    max_text_tokens: int,
    normalize: bool,
    tolerance: float = DEFAULT_INT8_TOLERANCE,
    min_weights: int = DEFAULT_MIN_WEIGHTS,
) -> tuple[dict, dict[str, Path]]:
    """Quantise the encoders that are large enough, check the probabilities, and say what ships.

    Args:
        graphs: {graph name: fp32 path} of the exported model.
        out_dir: the bundle folder being written; int8 files are `<graph>.int8.onnx`.
        tolerance: bound on the probabilities' max abs diff, int8 vs fp32.
        min_weights: a graph with fewer MatMul/Gemm weights stays fp32.

    Returns:
        (the manifest's `cpu_int8` entry, {graph name: int8 path} of the graphs kept). The entry has
        "graphs" (those kept; empty when the bound is missed), "parity" (see `check_int8_parity`; None
        when no graph was large enough), "bound" ({"probabilities": tolerance}), "within_bound",
        "method" and "skipped" ({graph: why it stays fp32}).

    Raises:
        ConfigError: a tolerance outside (0, 1].
    """
    if not 0 < tolerance <= 1:
        raise ConfigError(f"int8 tolerance must be in (0, 1], got {tolerance}")
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name in INT8_GRAPHS:
        if name not in graphs:
            continue
        weights = matmul_weight_count(graphs[name])
        if weights < min_weights:
            skipped[name] = f"{weights} MatMul/Gemm weights < {min_weights}: too small to gain from int8"
            continue
        log.info("quantising %s to int8 (dynamic, MatMul/Gemm weights)...", name)
        written[name] = quantize_graph(graphs[name], out_dir / f"{name}.int8.onnx")
    entry = {"graphs": [], "parity": None, "bound": {"probabilities": tolerance}, "within_bound": False,
             "method": "onnxruntime.quantization.quantize_dynamic, QInt8 weights, MatMul/Gemm; head and Conv fp32",
             "skipped": skipped}
    if not written:
        return entry, {}
    log.info("int8 parity (probabilities vs fp32, bound %g)...", tolerance)
    parity = check_int8_parity(graphs, written, modality, vocab_size, pad_id, max_text_tokens, normalize)
    ok = parity["probabilities"] <= tolerance  # also False for NaN
    entry.update(parity=parity, within_bound=bool(ok), graphs=sorted(written) if ok else [])
    if ok:
        log.info("  probabilities max err %.1e, labels agree on %.0f%% OK: CPU runs int8 %s", parity["probabilities"],
                 100 * parity["label_agreement"], ", ".join(sorted(written)))
        return entry, written
    log.warning("int8 probabilities max err %.2g miss the bound %g: no int8 graphs, the CPU runs fp32",
                parity["probabilities"], tolerance)
    for path in written.values():
        path.unlink(missing_ok=True)
    return entry, {}
