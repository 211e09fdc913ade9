"""CUDA graphs captured by hand: the torch backend's "capture" mode.

`CapturedPart(part, device, name)` runs a model part from one CUDA graph per
input signature (the shapes and dtypes of its tensor arguments). The first
call with a new signature copies the inputs into static buffers, warms the
part up on a side stream (cuDNN and cuBLAS choose their kernels there) and
captures one call with `torch.cuda.graph`; every call then copies its inputs
into that signature's buffers and replays the graph: one launch for the whole
part instead of hundreds.

Why next to torch.compile's "cuda-graphs" mode: that mode captures what
inductor generated, and dynamo leaves `nn.GRU` out of its graphs, so the
head's bi-GRU (200 sequential steps for 4 s of audio, launch-bound) ran as
eager. A hand capture takes the kernels as they are, cuDNN's GRU included,
and needs no compiler (no compile time per shape either, only a capture).

Bounded: at most `max_graphs` signatures are kept, the least recently used
dropped with its memory pool. One call at a time (a lock): the buffers are
shared. The outputs are copies, so a caller may keep them.

A part that reads device values on the host (`.item()`, data-dependent shapes)
cannot be captured; the first call then raises `BackendError` naming the part
and the signature. The model's parts make no such reads (tests/test_backends.py
runs them on fake tensors, which refuse them as capture does).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from crab_rt.errors import BackendError

__all__ = ["CapturedPart", "DEFAULT_MAX_GRAPHS", "signature"]

# Signatures kept per part: a latency sweep uses 15 (3 batch sizes x 5 lengths); a server pads to a few buckets.
DEFAULT_MAX_GRAPHS = 32
_WARMUP_CALLS = 3  # torch's documentation warms up on a side stream before capture; 3 is its example


def signature(args: tuple) -> tuple:
    """The cache key of a call: (shape, dtype) of each tensor argument, None for an absent one."""
    return tuple(None if a is None else (tuple(a.shape), str(a.dtype).removeprefix("torch.")) for a in args)


def _describe(key: tuple) -> str:
    return ", ".join("None" if k is None else f"{k[1]}[{'x'.join(map(str, k[0]))}]" for k in key)


@dataclass
class _Captured:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: list  # static input buffers (None where the argument is absent)
    outputs: tuple  # static output tensors, rewritten by every replay
    single: bool  # the part returns one tensor (not a tuple)


class CapturedPart:
    """`part(*tensors)` replayed from a CUDA graph per input signature (see the module docstring).

    Args:
        part: a module or function of tensors (or None) returning a tensor or a tuple of tensors; it must
            already be on `device`, in eval mode.
        device: "cuda:N".
        name: the part's name, for errors.
        max_graphs: signatures kept before the least recently used is dropped.
    """

    def __init__(self, part, device: str, name: str, max_graphs: int = DEFAULT_MAX_GRAPHS) -> None:
        if max_graphs < 1:
            raise BackendError(f"torch backend: max_graphs must be at least 1, not {max_graphs}")
        self.part = part
        self.device = device
        self.name = name
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._lock = threading.Lock()
        self.captures = 0  # graphs captured so far (dropped ones included)

    @property
    def signatures(self) -> list[tuple]:
        """The signatures held, least recently used first."""
        with self._lock:
            return list(self._graphs)

    def __call__(self, *args):
        import torch

        key = signature(args)
        with self._lock, torch.cuda.device(self.device), torch.inference_mode():
            entry = self._graphs.get(key)
            if entry is None:
                entry = self._capture(key, args)
            else:
                self._graphs.move_to_end(key)
                for buffer, value in zip(entry.inputs, args):
                    if buffer is not None:
                        buffer.copy_(value)
            entry.graph.replay()
            outputs = tuple(o.clone() for o in entry.outputs)
        return outputs[0] if entry.single else outputs

    def _capture(self, key: tuple, args: tuple) -> _Captured:
        import torch

        inputs = [None if a is None else a.detach().clone() for a in args]
        current = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(current)
        try:
            with torch.cuda.stream(side):
                for _ in range(_WARMUP_CALLS):
                    self.part(*inputs)
            current.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: a runtime's other threads may use CUDA meanwhile (only this thread's calls must be
            # capture-safe)
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = self.part(*inputs)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackendError(f"torch backend: {self.name} cannot be captured in a CUDA graph for inputs "
                               f"{_describe(key)}: {first}") from e
        single = isinstance(out, torch.Tensor)
        entry = _Captured(graph, inputs, (out,) if single else tuple(out), single)
        self._graphs[key] = entry
        self.captures += 1
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)  # its graph and memory pool go with it
        return entry
