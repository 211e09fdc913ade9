"""The torch reference backend: the bundle's own PyTorch weights, CPU or CUDA.

It exposes the same three graphs with the same input and output names as the
ONNX files, so everything above the backends is identical. Needs the [train]
extra (torch, transformers).

`compile` optionally runs each part through `torch.compile`: "inductor"
(generated kernels, CPU or GPU) or "cuda-graphs" (inductor plus CUDA graph
replay, `mode="reduce-overhead"`, GPU only). A compiled part compiles on its
first call for a new shape (seconds to minutes) and then reuses it; the
benchmarks use it to show what compilation buys over eager, the runtime
serves from ONNX Runtime or TensorRT.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np

from crab_rt.backends.base import GraphSession, check_inputs
from crab_rt.bundle import Bundle
from crab_rt.errors import BackendError, requires_extra

__all__ = ["TorchSession", "load_torch_sessions", "torch_cuda_available", "COMPILE_MODES"]

COMPILE_MODES = ("none", "inductor", "cuda-graphs")
# Distinct input shapes one compiled part may specialise for before torch.compile
# falls back to eager (a latency sweep uses ~10 per part; torch's default is 8).
_RECOMPILE_LIMIT = 64

_IO = {
    "speech_encoder": (("input_values", "attention_mask"), ("hidden_states", "frame_mask")),
    "text_encoder": (("input_ids", "attention_mask"), ("hidden_states",)),
}


def torch_cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class TorchSession(GraphSession):
    """One part of a `CrabModel` run with torch (no_grad, eval mode)."""

    backend = "torch"

    def __init__(self, model, name: str, device: str, input_names, output_names, compile: str = "none") -> None:
        self.name = name
        self.device = device
        self.provider = f"torch {device}" + ("" if compile == "none" else f" compile={compile}")
        part = getattr(model, name)  # CrabModel's parts carry the graph names
        self._forward = part if compile == "none" else _compiled(part, compile)
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        check_inputs(self, inputs)
        t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in inputs.items()}
        with torch.inference_mode(), warnings.catch_warnings():
            # torch's MultiheadAttention warns "Support for mismatched key_padding_mask and attn_mask is deprecated"
            # on every call with our bool padding masks; it is harmless here and would flood `crab-rt listen`'s
            # stderr, so that one warning is silenced for this call only (not process-wide).
            warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*", category=UserWarning)
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


def _compiled(part, mode: str):
    """`part` wrapped in torch.compile for `mode` (see COMPILE_MODES)."""
    import torch
    import torch._dynamo

    config = torch._dynamo.config
    for knob in ("recompile_limit", "cache_size_limit"):  # renamed across torch versions
        if hasattr(config, knob):
            setattr(config, knob, max(getattr(config, knob), _RECOMPILE_LIMIT))
    # Each length is its own static graph: what a latency sweep and a CUDA graph both want.
    return torch.compile(part, mode="reduce-overhead" if mode == "cuda-graphs" else None, dynamic=False)


def load_torch_sessions(bundle: Bundle, device: str, compile: str = "none") -> dict[str, TorchSession]:
    """Sessions for every graph of the bundle, from its `model.pt`.

    Args:
        bundle: a loaded bundle.
        device: "cpu" or "cuda:N".
        compile: one of COMPILE_MODES ("cuda-graphs" needs a CUDA device).

    Raises:
        DependencyError: torch or transformers is missing.
        BackendError: CUDA asked for but absent, or an unknown compile mode.
    """
    if compile not in COMPILE_MODES:
        raise BackendError(f"torch backend: unknown compile mode {compile!r} (choose from {', '.join(COMPILE_MODES)})")
    if compile == "cuda-graphs" and not device.startswith("cuda"):
        raise BackendError(f"torch backend: compile mode cuda-graphs needs a CUDA device, not {device}")
    with requires_extra("train"):
        import torch

        from crab_rt.model.checkpoint import load_model
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError(f"torch backend: device {device} requested but torch sees no CUDA device")
    model, _, _ = load_model(bundle.torch_checkpoint_path, map_location=device)
    model.to(device).eval()
    sessions = {}
    for name in bundle.graph_names:
        if name == "head":
            io = bundle.graph_io("head")
            ins, outs = tuple(io["inputs"]), tuple(io["outputs"])
        else:
            ins, outs = _IO[name]
        sessions[name] = TorchSession(model, name, device, ins, outs, compile)
    return sessions
