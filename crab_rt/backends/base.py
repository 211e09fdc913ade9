"""The one interface every inference backend implements.

A backend loads the bundle's graphs as `GraphSession`s: named numpy inputs in,
named numpy outputs out, exactly the names of the bundle's ONNX graphs
(`speech_encoder`, `text_encoder`, `head`). Sessions are shared engines: they
hold no per-stream state and may be called from one worker thread at a time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

from crab_rt.errors import BackendError

__all__ = ["GraphSession", "check_inputs", "BACKEND_NAMES", "GRAPH_NAMES"]

BACKEND_NAMES = ("auto", "tensorrt", "onnxruntime", "torch")
GRAPH_NAMES = ("speech_encoder", "text_encoder", "head")


class GraphSession(ABC):
    """One loaded graph.

    Attributes:
        name: graph name (speech_encoder, text_encoder or head).
        backend: backend name, e.g. "onnxruntime".
        device: where it runs, e.g. "cpu", "cuda:0".
        provider: a finer description (execution provider, precision), for logs.
    """

    name: str
    backend: str
    device: str
    provider: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    @abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph; returns every output as a host numpy array."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release device memory; the session is unusable afterwards."""


def check_inputs(session: GraphSession, inputs: Mapping[str, np.ndarray]) -> None:
    """Raise BackendError when `inputs` do not match the session's input names."""
    missing = [n for n in session.input_names if n not in inputs]
    extra = [n for n in inputs if n not in session.input_names]
    if missing or extra:
        raise BackendError(
            f"{session.name} ({session.backend}): inputs {sorted(inputs)} do not match the graph's "
            f"{list(session.input_names)} (missing {missing}, unexpected {extra})"
        )
