"""The torch reference backend: the bundle's own PyTorch weights, CPU or CUDA.

It exposes the same three graphs with the same input and output names as the
ONNX files, so everything above the backends is identical. Needs the [train]
extra (torch, transformers).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from crab_rt.backends.base import GraphSession, check_inputs
from crab_rt.bundle import Bundle
from crab_rt.errors import BackendError, requires_extra

__all__ = ["TorchSession", "load_torch_sessions", "torch_cuda_available"]

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

    def __init__(self, model, name: str, device: str, input_names, output_names) -> None:
        self._model = model
        self.name = name
        self.device = device
        self.provider = f"torch {device}"
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        check_inputs(self, inputs)
        t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            m = self._model
            if self.name == "speech_encoder":
                hidden, mask = m.speech_encoder(t["input_values"], t["attention_mask"])
                out = {"hidden_states": hidden, "frame_mask": mask.to(torch.long)}
            elif self.name == "text_encoder":
                out = {"hidden_states": m.text_encoder(t["input_ids"], t["attention_mask"])}
            else:
                logits = m.head(
                    t.get("speech_hidden"), None if "speech_mask" not in t else t["speech_mask"].bool(),
                    t.get("text_hidden"), None if "text_mask" not in t else t["text_mask"].bool(),
                )
                out = {"logits": logits, "probabilities": torch.softmax(logits.float(), dim=-1)}
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
        return {k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in out.items()}


def load_torch_sessions(bundle: Bundle, device: str) -> dict[str, TorchSession]:
    """Sessions for every graph of the bundle, from its `model.pt`.

    Raises:
        DependencyError: torch or transformers is missing.
        BackendError: CUDA asked for but absent.
    """
    with requires_extra("train"):
        import torch

        from crab_rt.train.checkpoint import load_model
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
        sessions[name] = TorchSession(model, name, device, ins, outs)
    return sessions
