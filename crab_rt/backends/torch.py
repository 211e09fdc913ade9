"""The torch reference backend: the bundle's own PyTorch weights, CPU or CUDA.

It exposes the same three graphs with the same input and output names as the
ONNX files, so everything above the backends is identical. Needs the [train]
extra (torch, transformers).

`compile` optionally runs each part through `torch.compile`: "inductor"
(generated kernels, CPU or GPU) or "cuda-graphs" (inductor plus CUDA graph
replay, `mode="reduce-overhead"`, GPU only). A compiled part compiles on its
first call for a new shape (seconds to minutes) and then reuses it; with
`dynamic_shapes` it compiles for symbolic lengths and batch sizes instead, so
a handful of compiles serve every shape (the CUDA graphs are still recorded
per shape). "capture" needs no compiler: each part's own kernels are captured
by hand in a CUDA graph per input shape (`torch_capture.CapturedPart`), which,
unlike "cuda-graphs", takes in the head's cuDNN GRU. The benchmarks use these
modes to show what each buys over eager; the runtime serves from ONNX Runtime
or TensorRT.

`precision` "bf16" or "fp16" casts the two encoders' weights and float inputs
to that type (the matrix products then run on tensor cores); the head stays
fp32 (its GRUs, LayerNorm and softmax are under 1% of the work, and cuDNN's
bf16 GRU support varies), and every output is returned as fp32.
`precision_parity` measures what that costs against fp32, as the fp16 ONNX
export does (`crab_rt.export.parity.check_fp16_parity`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from crab_rt.backends.base import GraphSession, check_inputs
from crab_rt.bundle import Bundle
from crab_rt.errors import BackendError, requires_extra

__all__ = ["TorchSession", "load_torch_sessions", "torch_sessions", "place_model", "precision_parity",
           "torch_cuda_available", "COMPILE_MODES", "TORCH_COMPILE_MODES", "TORCH_PRECISIONS"]

COMPILE_MODES = ("none", "inductor", "cuda-graphs", "capture")
TORCH_COMPILE_MODES = ("inductor", "cuda-graphs")  # the modes that run torch.compile (and take dynamic_shapes)
_GPU_ONLY_MODES = ("cuda-graphs", "capture")
TORCH_PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_ENCODERS = ("speech_encoder", "text_encoder")
# Distinct input shapes one compiled part may specialise for before torch.compile
# falls back to eager (a latency sweep uses ~10 per part; torch's default is 8).
_RECOMPILE_LIMIT = 64

_IO = {
    "speech_encoder": (("input_values", "attention_mask"), ("hidden_states", "frame_mask")),
    "text_encoder": (("input_ids", "attention_mask"), ("hidden_states",)),
    "speech_classifier": (("speech_hidden", "speech_mask"), ("logits", "probabilities")),
}
_HEAD_IO = {
    "both": (("speech_hidden", "speech_mask", "text_hidden", "text_mask"), ("logits", "probabilities")),
    "speech": (("speech_hidden", "speech_mask"), ("logits", "probabilities")),
    "text": (("text_hidden", "text_mask"), ("logits", "probabilities")),
}


def torch_cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class TorchSession(GraphSession):
    """One part of a `CrabModel` run with torch (inference mode, eval mode).

    Args:
        model: the CrabModel, already on `device` and, for a reduced `precision`, with its encoders cast
            (`torch_sessions` does both).
        name: the part, one of the graph names.
        device: "cpu" or "cuda:N".
        input_names, output_names: the graph's names.
        compile: one of COMPILE_MODES.
        precision: one of TORCH_PRECISIONS; the type float inputs of an encoder are cast to.
        dynamic_shapes: compile ("inductor", "cuda-graphs") for symbolic shapes instead of one graph per shape.
    """

    backend = "torch"

    def __init__(self, model, name: str, device: str, input_names, output_names, compile: str = "none",
                 precision: str = "fp32", dynamic_shapes: bool = False) -> None:
        import torch

        self.name = name
        self.device = device
        self.precision = precision
        self.provider = (f"torch {device}" + ("" if compile == "none" else f" compile={compile}")
                         + (" dynamic" if dynamic_shapes and compile in TORCH_COMPILE_MODES else "")
                         + ("" if precision == "fp32" else f" {precision}"))
        part = getattr(model, name)  # CrabModel's parts carry the graph names
        self.part = part  # the module itself (the split speech graphs run its frontend and backend)
        if compile == "capture":
            from crab_rt.backends.torch_capture import CapturedPart

            self._forward = CapturedPart(part, device, name)
        else:
            self._forward = part if compile == "none" else _compiled(part, compile, dynamic_shapes)
        self._float = getattr(torch, _DTYPES[precision if name in _ENCODERS else "fp32"])
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        check_inputs(self, inputs)
        t = {}
        for k, v in inputs.items():
            tensor = torch.from_numpy(np.ascontiguousarray(v)).to(self.device)
            t[k] = tensor.to(self._float) if tensor.is_floating_point() else tensor
        with torch.inference_mode():  # (WavLM's mask warning is silenced in SpeechEncoder, for training too)
            forward = self._forward
            if self.name == "speech_encoder":
                hidden, mask = forward(t["input_values"], t["attention_mask"])
                out = {"hidden_states": hidden, "frame_mask": mask.to(torch.long)}
            elif self.name == "text_encoder":
                out = {"hidden_states": forward(t["input_ids"], t["attention_mask"])}
            else:
                logits = forward(
                    t.get("speech_hidden"), None if "speech_mask" not in t else t["speech_mask"].bool(),
                    t.get("text_hidden"), None if "text_mask" not in t else t["text_mask"].bool(),
                )
                out = {"logits": logits, "probabilities": torch.softmax(logits.float(), dim=-1)}
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
        return {k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in out.items()}


def _compiled(part, mode: str, dynamic_shapes: bool = False):
    """`part` wrapped in torch.compile for `mode` ("inductor" or "cuda-graphs")."""
    import torch
    import torch._dynamo

    config = torch._dynamo.config
    for knob in ("recompile_limit", "cache_size_limit"):  # renamed across torch versions
        if hasattr(config, knob):
            setattr(config, knob, max(getattr(config, knob), _RECOMPILE_LIMIT))
    # Static: each shape is its own graph, specialised to it (the fastest kernels, a compile per shape).
    # Dynamic: symbolic batch and length (torch still specialises size 1, so batch 1 is a graph of its own).
    return torch.compile(part, mode="reduce-overhead" if mode == "cuda-graphs" else None, dynamic=dynamic_shapes)


def _check_options(device: str, compile: str, precision: str) -> None:
    """Refuse an unknown compile mode or precision, and a CUDA device torch does not see (imports torch)."""
    import torch

    if compile not in COMPILE_MODES:
        raise BackendError(f"torch backend: unknown compile mode {compile!r} (choose from {', '.join(COMPILE_MODES)})")
    if compile in _GPU_ONLY_MODES and not device.startswith("cuda"):
        raise BackendError(f"torch backend: compile mode {compile} needs a CUDA device, not {device}")
    if precision not in TORCH_PRECISIONS:
        raise BackendError(
            f"torch backend: unknown precision {precision!r} (choose from {', '.join(TORCH_PRECISIONS)})")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError(f"torch backend: device {device} requested but torch sees no CUDA device")


def torch_sessions(model, device: str, compile: str = "none", precision: str = "fp32",
                   dynamic_shapes: bool = False) -> dict[str, TorchSession]:
    """Sessions for every part of an in-memory `CrabModel` (moved to `device`, eval mode, encoders cast).

    Args:
        model: a CrabModel; it is changed in place (device, eval mode, encoder dtype).
        device: "cpu" or "cuda:N".
        compile: one of COMPILE_MODES ("cuda-graphs" and "capture" need a CUDA device).
        precision: one of TORCH_PRECISIONS.
        dynamic_shapes: for "inductor" and "cuda-graphs", compile for symbolic shapes (see the module docstring).

    Raises:
        BackendError: CUDA asked for but absent, an unknown compile mode or precision.
    """
    _check_options(device, compile, precision)
    place_model(model, device, precision)
    names = [n for n in (*_ENCODERS, "speech_classifier") if getattr(model, n, None) is not None] + ["head"]
    return {n: TorchSession(model, n, device, *(_IO.get(n) or _HEAD_IO[model.head.config.modality]), compile,
                            precision, dynamic_shapes) for n in names}


def place_model(model, device: str, precision: str = "fp32"):
    """Move a `CrabModel` to `device` in eval mode and cast its encoders to `precision` (the head stays fp32).

    Returns:
        The encoders' torch dtype (what their float inputs must be cast to).
    """
    import torch

    dtype = getattr(torch, _DTYPES[precision])
    model.to(device).eval()
    for name in _ENCODERS:
        part = getattr(model, name)
        if part is not None:
            part.to(dtype)
    return dtype


def load_torch_sessions(bundle: Bundle, device: str, compile: str = "none", precision: str = "fp32",
                        dynamic_shapes: bool = False) -> dict[str, TorchSession]:
    """Sessions for every graph of the bundle, from its `model.pt`.

    Args:
        bundle: a loaded bundle.
        device: "cpu" or "cuda:N".
        compile: one of COMPILE_MODES ("cuda-graphs" and "capture" need a CUDA device).
        precision: one of TORCH_PRECISIONS (see the module docstring).
        dynamic_shapes: for "inductor" and "cuda-graphs", compile for symbolic shapes.

    Raises:
        DependencyError: torch or transformers is missing.
        BackendError: CUDA asked for but absent, an unknown compile mode or precision.
    """
    with requires_extra("train"):
        from crab_rt.model.checkpoint import load_model
    _check_options(device, compile, precision)  # before the checkpoint is read
    model, _, _ = load_model(bundle.torch_checkpoint_path, map_location=device)
    sessions = torch_sessions(model, device, compile, precision, dynamic_shapes)
    io = bundle.graph_io("head")  # the bundle's names are the contract
    sessions["head"].input_names, sessions["head"].output_names = tuple(io["inputs"]), tuple(io["outputs"])
    return sessions


def _parity_feeds(sessions: Mapping[str, TorchSession], seed: int) -> list[dict[str, dict[str, np.ndarray]]]:
    """Encoder feeds of batch 1 (1 s, 5 tokens) and of a padded batch 3 (0.6-2 s, 3-12 tokens)."""
    from crab_rt.audio import SAMPLE_RATE
    from crab_rt.features import pad_waveforms

    rng = np.random.default_rng(seed)
    cases = []
    for seconds, tokens in (([1.0], [5]), ([2.0, 0.6, 1.3], [12, 3, 7])):
        feed: dict[str, dict[str, np.ndarray]] = {}
        if "speech_encoder" in sessions:
            waves = [(0.1 * rng.standard_normal(int(s * SAMPLE_RATE))).astype(np.float32) for s in seconds]
            values, mask = pad_waveforms(waves, True)
            feed["speech_encoder"] = {"input_values": values, "attention_mask": mask}
        if "text_encoder" in sessions:
            ids = np.ones((len(tokens), max(tokens)), dtype=np.int64)  # RoBERTa's pad id
            for i, n in enumerate(tokens):
                ids[i, :n] = rng.integers(5, 250, size=n)
            feed["text_encoder"] = {"input_ids": ids, "attention_mask": (ids != 1).astype(np.int64)}
        cases.append(feed)
    return cases


def _pipeline(sessions: Mapping[str, TorchSession], feed: Mapping[str, dict]) -> dict[str, np.ndarray]:
    head: dict[str, np.ndarray] = {}
    if "speech_encoder" in feed:
        out = sessions["speech_encoder"].run(feed["speech_encoder"])
        head.update(speech_hidden=out["hidden_states"], speech_mask=out["frame_mask"])
    if "text_encoder" in feed:
        head.update(text_hidden=sessions["text_encoder"].run(feed["text_encoder"])["hidden_states"],
                    text_mask=feed["text_encoder"]["attention_mask"])
    return {**head, **sessions["head"].run(head)}


def precision_parity(reference: Mapping[str, TorchSession], candidate: Mapping[str, TorchSession],
                     seed: int = 0) -> dict:
    """Compare two session sets end to end (e.g. bf16 against fp32), as the fp16 export's parity check does.

    Both run the same inputs: batch 1, and a batch of 3 with padding. Errors count valid positions only.

    Returns:
        {"probabilities": max abs diff, "logits": max abs diff, "speech_hidden" / "text_hidden": max abs diff
        relative to the reference's largest magnitude (present when that encoder is), "labels_equal": whether
        every argmax agrees, "samples": samples compared}.
    """
    report: dict = {"probabilities": 0.0, "logits": 0.0, "labels_equal": True, "samples": 0}
    for feed in _parity_feeds(reference, seed):
        ref, got = _pipeline(reference, feed), _pipeline(candidate, feed)
        for key in ("probabilities", "logits"):
            report[key] = max(report[key], float(np.max(np.abs(ref[key].astype(np.float64) - got[key]))))
        for key, mask in (("speech_hidden", "speech_mask"), ("text_hidden", "text_mask")):
            if key in ref:
                valid = ref[mask].astype(bool)
                diff = np.abs(ref[key][valid].astype(np.float64) - got[key][valid])
                scale = max(float(np.max(np.abs(ref[key][valid]))), 1e-12)
                report[key] = max(report.get(key, 0.0), float(diff.max()) / scale)
        report["labels_equal"] &= bool(np.array_equal(ref["probabilities"].argmax(-1), got["probabilities"].argmax(-1)))
        report["samples"] += int(ref["logits"].shape[0])
    return report
