"""ONNX export of the Crab model as three graphs: speech encoder, text encoder, head.

Uses the legacy TorchScript exporter (`dynamo=False`, opset 17): the new
exporter silently fixes the time axis of every `nn.GRU` to the example length
(DESIGN.md section 4). Each graph takes and returns int64 masks (1 valid, 0
padding) so every runtime (ONNX Runtime, TensorRT) can feed plain integer
buffers; the wrappers turn them into booleans inside. Batch and length axes
are dynamic. The graphs are checked for ops TensorRT handles badly.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from crab_rt.audio import SAMPLE_RATE
from crab_rt.errors import BundleError
from crab_rt.model.crab import CrabModel

__all__ = [
    "GRAPH_NAMES",
    "FORBIDDEN_OPS",
    "SpeechEncoderGraph",
    "TextEncoderGraph",
    "HeadGraph",
    "SpeechClassifierGraph",
    "VOICE_GRAPH",
    "graph_names",
    "export_model_copy",
    "export_graphs",
    "graph_ops",
    "graph_io",
    "check_graph_ops",
]

log = logging.getLogger(__name__)

GRAPH_NAMES = ("speech_encoder", "text_encoder", "head")
VOICE_GRAPH = "speech_classifier"  # the voice-only classifier of provisional events (a bundle may lack it)
# Ops that come from in-place boolean indexing (`x[mask] = 0`) or data-dependent
# shapes; TensorRT either rejects them or builds slow, shape-rigid engines.
FORBIDDEN_OPS = ("NonZero", "ScatterND")

_EXAMPLE_SAMPLES = (SAMPLE_RATE, SAMPLE_RATE * 6 // 10)  # two padded waveforms (1.0 s, 0.6 s)
_EXAMPLE_TOKENS = (12, 7)


class SpeechEncoderGraph(nn.Module):
    """input_values [B, T] float, attention_mask [B, T] int64 -> hidden_states, frame_mask int64."""

    def __init__(self, speech_encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = speech_encoder

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, frame_mask = self.encoder(input_values, attention_mask)
        return hidden, frame_mask.to(torch.int64)


class TextEncoderGraph(nn.Module):
    """input_ids [B, L] int64, attention_mask [B, L] int64 -> hidden_states [B, L, D]."""

    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = text_encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask)


class HeadGraph(nn.Module):
    """Encoder hidden states and int64 masks -> (logits, probabilities).

    Takes only the inputs of the modalities the head uses: (speech_hidden,
    speech_mask, text_hidden, text_mask) for "both", the first or last pair for
    a unimodal head.
    """

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.modality = head.config.modality

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        speech = speech_mask = text = text_mask = None
        if self.modality == "both":
            speech, speech_mask, text, text_mask = inputs
        elif self.modality == "speech":
            speech, speech_mask = inputs
        else:
            text, text_mask = inputs
        logits = self.head(
            speech,
            None if speech_mask is None else speech_mask > 0,
            text,
            None if text_mask is None else text_mask > 0,
        )
        return logits, torch.softmax(logits, dim=-1)


class SpeechClassifierGraph(nn.Module):
    """speech_hidden [B, F, D], speech_mask [B, F] int64 -> (logits, probabilities) of the voice-only classifier."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, speech_hidden: torch.Tensor, speech_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(speech_hidden, speech_mask > 0)
        return logits, torch.softmax(logits, dim=-1)


def graph_names(modality: str, speech_classifier: bool = False) -> tuple[str, ...]:
    """The graphs a model of this modality exports, in run order (`speech_classifier`: it has the voice-only
    classifier, whose graph runs after the speech encoder's)."""
    if modality == "speech":
        names = ("speech_encoder", "head")
    elif modality == "text":
        return ("text_encoder", "head")
    else:
        names = GRAPH_NAMES
    return (names[0], VOICE_GRAPH, *names[1:]) if speech_classifier else names


def export_model_copy(model: CrabModel) -> CrabModel:
    """A deep copy in eval mode with the positional conv's weight_norm folded."""
    # Rebuilt rather than deep-copied: a deep copy of a parametrized conv shares
    # state with the original, and folding it would break the original.
    clone = CrabModel.from_architecture(model.architecture())
    clone.load_state_dict(model.state_dict())
    clone.eval()
    if clone.speech_encoder is not None:
        clone.speech_encoder.fold_weight_norm()
    return clone


def _padded_batch(lengths: tuple[int, ...]) -> torch.Tensor:
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.int64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return mask


def _export(module: nn.Module, args: tuple, path: Path, inputs: dict, outputs: dict, opset: int) -> None:
    names_in, names_out = list(inputs), list(outputs)
    with warnings.catch_warnings():
        # The tracer warns about Python-int shape arithmetic in HF code; parity checks catch real problems.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=names_in,
            output_names=names_out,
            dynamic_axes={**inputs, **outputs},
            do_constant_folding=True,
        )


def export_graphs(model: CrabModel, out_dir: str | Path, opset: int = 17) -> dict[str, Path]:
    """Export the model's graphs (fp32) into `out_dir`, logging one INFO line per graph.

    Args:
        model: the Crab model (not modified; a folded copy is exported).
        out_dir: existing folder; files are `<graph>.onnx`.
        opset: ONNX opset (17 has LayerNormalization).

    Returns:
        {graph name: path} for the graphs this modality has.
    """
    out_dir = Path(out_dir)
    model = export_model_copy(model)
    modality = model.head.config.modality
    paths: dict[str, Path] = {}
    speech_hidden = speech_mask = text_hidden = text_mask = None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # see _export; also the eager example runs
        if model.speech_encoder is not None:
            log.info("exporting speech encoder...")
            mask = _padded_batch(_EXAMPLE_SAMPLES)
            values = torch.randn(mask.shape) * mask
            path = out_dir / "speech_encoder.onnx"
            _export(
                SpeechEncoderGraph(model.speech_encoder),
                (values, mask),
                path,
                {"input_values": {0: "batch", 1: "samples"}, "attention_mask": {0: "batch", 1: "samples"}},
                {"hidden_states": {0: "batch", 1: "frames"}, "frame_mask": {0: "batch", 1: "frames"}},
                opset,
            )
            paths["speech_encoder"] = path
            speech_hidden, frame_mask = model.speech_encoder(values, mask)
            speech_mask = frame_mask.to(torch.int64)
            if model.speech_classifier is not None:
                log.info("exporting voice-only classifier...")
                path = out_dir / f"{VOICE_GRAPH}.onnx"
                _export(
                    SpeechClassifierGraph(model.speech_classifier),
                    (speech_hidden, speech_mask),
                    path,
                    {"speech_hidden": {0: "batch", 1: "frames"}, "speech_mask": {0: "batch", 1: "frames"}},
                    {"logits": {0: "batch"}, "probabilities": {0: "batch"}},
                    opset,
                )
                paths[VOICE_GRAPH] = path
        if model.text_encoder is not None:
            log.info("exporting text encoder...")
            text_mask = _padded_batch(_EXAMPLE_TOKENS)
            config = model.text_encoder.model.config
            pad_id = int(getattr(config, "pad_token_id", 0) or 0)
            ids = torch.randint(5, int(config.vocab_size), text_mask.shape)
            ids = torch.where(text_mask > 0, ids, torch.full_like(ids, pad_id))
            path = out_dir / "text_encoder.onnx"
            _export(
                TextEncoderGraph(model.text_encoder),
                (ids, text_mask),
                path,
                {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}},
                {"hidden_states": {0: "batch", 1: "tokens"}},
                opset,
            )
            paths["text_encoder"] = path
            text_hidden = model.text_encoder(ids, text_mask)
        log.info("exporting head...")
        args: list[torch.Tensor] = []
        axes: dict[str, dict[int, str]] = {}
        if modality in ("both", "speech"):
            args += [speech_hidden, speech_mask]
            axes.update(speech_hidden={0: "batch", 1: "frames"}, speech_mask={0: "batch", 1: "frames"})
        if modality in ("both", "text"):
            args += [text_hidden, text_mask]
            axes.update(text_hidden={0: "batch", 1: "tokens"}, text_mask={0: "batch", 1: "tokens"})
        path = out_dir / "head.onnx"
        _export(
            HeadGraph(model.head),
            tuple(args),
            path,
            axes,
            {"logits": {0: "batch"}, "probabilities": {0: "batch"}},
            opset,
        )
        paths["head"] = path
    return paths


def graph_ops(path: str | Path) -> list[str]:
    """Sorted op types used by an ONNX file (including nested subgraphs)."""
    import onnx

    ops: set[str] = set()

    def walk(graph) -> None:
        for node in graph.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                if attr.g is not None and attr.HasField("g"):
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(onnx.load(str(path), load_external_data=False).graph)
    return sorted(ops)


_ONNX_DTYPES = {1: "float32", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}


def graph_io(path: str | Path) -> dict[str, dict[str, dict]]:
    """Inputs and outputs of an ONNX file: {"inputs": {name: {"dtype", "shape"}}, "outputs": {...}}.

    Symbolic dimensions are strings ("batch", "frames"); fixed ones are ints.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}

    def describe(values) -> dict[str, dict]:
        out = {}
        for v in values:
            if v.name in initializers:
                continue
            t = v.type.tensor_type
            shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
            out[v.name] = {"dtype": _ONNX_DTYPES.get(t.elem_type, str(t.elem_type)), "shape": shape}
        return out

    return {"inputs": describe(graph.input), "outputs": describe(graph.output)}


def check_graph_ops(name: str, ops: list[str]) -> None:
    """Refuse a graph that uses an op from FORBIDDEN_OPS.

    Raises:
        BundleError: naming the graph and the ops.
    """
    bad = [op for op in FORBIDDEN_OPS if op in ops]
    if bad:
        raise BundleError(
            f"{name} graph uses {', '.join(bad)} (boolean indexing or data-dependent shapes), "
            "which TensorRT handles badly; the encoder needs a masked (multiply) rewrite"
        )
