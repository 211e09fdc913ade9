"""The split speech graphs (`speech_frontend`, `speech_backend`) on the torch backend.

They run the two halves of the torch `SpeechEncoder` that the `speech_encoder`
session already holds (`SpeechEncoder.frontend` and `.backend`), with the ONNX
graphs' input and output names, so incremental speech encoding
(`crab_rt.runtime.speech_frontend`) runs the same on every backend that has them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from crab_rt.backends.base import GraphSession, check_inputs

__all__ = ["TorchSplitSession", "torch_split_sessions"]

_IO = {
    "speech_frontend": (("input_values",), ("features",)),
    "speech_backend": (("features", "frame_mask"), ("hidden_states",)),
}


class TorchSplitSession(GraphSession):
    """One half of a torch `SpeechEncoder` (inference mode)."""

    backend = "torch"

    def __init__(self, encoder, name: str, device: str, dtype=None) -> None:
        self.name = name
        self.device = device
        self.provider = f"torch {device}"
        self._encoder = encoder
        self._dtype = dtype
        self.input_names, self.output_names = _IO[name]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        check_inputs(self, inputs)
        t = {}
        for k, v in inputs.items():
            tensor = torch.from_numpy(np.ascontiguousarray(v)).to(self.device)
            t[k] = tensor.to(self._dtype) if self._dtype is not None and tensor.is_floating_point() else tensor
        with torch.inference_mode():
            if self.name == "speech_frontend":
                out = {"features": self._encoder.frontend(t["input_values"])}
            else:
                out = {"hidden_states": self._encoder.backend(t["features"], t["frame_mask"] > 0)}
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
        return {k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in out.items()}


def torch_split_sessions(speech_session: GraphSession | None) -> dict[str, TorchSplitSession] | None:
    """Split sessions sharing the weights of a torch `speech_encoder` session, or None when it has no plain
    (uncompiled) `SpeechEncoder` to split."""
    encoder = getattr(speech_session, "part", None)
    if encoder is None or not hasattr(encoder, "frontend") or getattr(speech_session, "_forward", None) is not encoder:
        return None
    dtype = next(encoder.parameters()).dtype
    return {name: TorchSplitSession(encoder, name, speech_session.device, dtype) for name in _IO}
