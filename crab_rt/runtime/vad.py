"""Silero VAD v6 (the ONNX file faster-whisper ships), run as a shared engine.

The model holds no per-stream state: every stream owns a `VadState` (LSTM h, c
and the last 64 samples of the previous frame), so one `SileroVad` serves any
number of streams.

What the model is (checked on load): input `input` [seq, 576] float32, that is
512 new samples preceded by 64 samples of context (the tail of the previous
frame, zeros before the first), and `h`, `c` [1, 1, 128]. The leading axis is
*time*, not a batch: the LSTM runs along it with a batch of one. So one call
can process many consecutive frames of one stream (`process_stream`), but
frames of different streams cannot share a call; `process` loops over streams
(about 0.13 ms per frame on one CPU core). This reproduces
`faster_whisper.vad.SileroVADModel` exactly: streaming frame by frame gives
bit-identical probabilities to its whole-file call.

One known difference: for a whole file whose zero padding is shorter than 64
samples, faster-whisper's `SileroVADModel.__call__` also zeroes the last 64
samples of the final frame (it writes into a view of its input); a stream
cannot know which frame is last, so this module does not.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crab_rt.audio import SAMPLE_RATE
from crab_rt.errors import BackendError

__all__ = [
    "SAMPLE_RATE",
    "FRAME_SAMPLES",
    "CONTEXT_SAMPLES",
    "STATE_SHAPE",
    "VadState",
    "SileroVad",
    "default_model_path",
    "FASTER_WHISPER_INSTALL",
]

FRAME_SAMPLES = 512
CONTEXT_SAMPLES = 64
STATE_SHAPE = (1, 1, 128)
_MAX_FRAMES_PER_CALL = 4096

# faster-whisper hard-requires the CPU onnxruntime, so beside onnxruntime-gpu it goes in without its dependencies.
FASTER_WHISPER_INSTALL = (
    "pip install 'crab-rt[cpu]', or with crab-rt[gpu] or your own ONNX Runtime: pip install faster-whisper --no-deps"
)


@dataclass
class VadState:
    """One stream's Silero state: LSTM h and c, and the previous frame's tail."""

    h: np.ndarray
    c: np.ndarray
    context: np.ndarray

    @classmethod
    def initial(cls) -> VadState:
        """The state at the start of a stream (all zeros)."""
        return cls(
            h=np.zeros(STATE_SHAPE, dtype=np.float32),
            c=np.zeros(STATE_SHAPE, dtype=np.float32),
            context=np.zeros(CONTEXT_SAMPLES, dtype=np.float32),
        )

    def reset(self) -> None:
        """Return to the initial state in place."""
        self.h = np.zeros(STATE_SHAPE, dtype=np.float32)
        self.c = np.zeros(STATE_SHAPE, dtype=np.float32)
        self.context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)


def default_model_path() -> Path:
    """Path of `silero_vad_v6.onnx` inside the installed faster-whisper package.

    Found without importing faster_whisper (which would load CTranslate2).

    Raises:
        BackendError: faster-whisper is not installed or lacks the file.
    """
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(
            "Silero VAD model not found: the 'faster-whisper' package (which ships assets/silero_vad_v6.onnx) is "
            f"not installed: {FASTER_WHISPER_INSTALL}"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "assets" / "silero_vad_v6.onnx"
        if path.is_file():
            return path
    raise BackendError(
        f"Silero VAD model not found: no assets/silero_vad_v6.onnx in {list(spec.submodule_search_locations)}"
    )


_EXPECTED_INPUTS = {"input": [None, FRAME_SAMPLES + CONTEXT_SAMPLES], "h": list(STATE_SHAPE), "c": list(STATE_SHAPE)}
_EXPECTED_OUTPUTS = {"speech_probs": [None], "hn": list(STATE_SHAPE), "cn": list(STATE_SHAPE)}


def _check_io(kind: str, path: Path, found: list, expected: dict) -> None:
    got = {x.name: x for x in found}
    if set(got) != set(expected):
        raise BackendError(
            f"{path}: not a Silero VAD v6 model: {kind}s are {sorted(got)}, expected {sorted(expected)}"
        )
    for name, want in expected.items():
        shape = got[name].shape
        if got[name].type != "tensor(float)":
            raise BackendError(f"{path}: {kind} '{name}' has type {got[name].type}, expected tensor(float)")
        if len(shape) != len(want) or any(w is not None and s != w for s, w in zip(shape, want)):
            raise BackendError(f"{path}: {kind} '{name}' has shape {shape}, expected {want} (None = any)")


class SileroVad:
    """A shared, stateless Silero VAD v6 engine on ONNX Runtime (CPU).

    Args:
        model_path: the ONNX file; default: the one faster-whisper ships.
        num_threads: ONNX Runtime intra-op threads (1 is fastest for this model).

    Raises:
        BackendError: the file is missing, not loadable, or its inputs/outputs
            are not those of Silero VAD v6.
    """

    FRAME_SAMPLES = FRAME_SAMPLES
    CONTEXT_SAMPLES = CONTEXT_SAMPLES
    SAMPLE_RATE = SAMPLE_RATE

    def __init__(self, model_path: str | Path | None = None, num_threads: int = 1) -> None:
        path = Path(model_path) if model_path is not None else default_model_path()
        if not path.is_file():
            raise BackendError(f"{path}: Silero VAD model file not found")
        if num_threads < 1:
            raise BackendError(f"num_threads must be >= 1, got {num_threads}")
        from crab_rt.backends.onnxruntime import import_onnxruntime

        onnxruntime = import_onnxruntime()
        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = int(num_threads)
        opts.enable_cpu_mem_arena = False
        opts.log_severity_level = 3
        try:
            self._session = onnxruntime.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT raises its own exception types for bad files
            raise BackendError(f"{path}: cannot load the VAD model ({type(e).__name__}: {e})") from e
        _check_io("input", path, self._session.get_inputs(), _EXPECTED_INPUTS)
        _check_io("output", path, self._session.get_outputs(), _EXPECTED_OUTPUTS)
        self.model_path = path

    def process_stream(self, frames: np.ndarray, state: VadState) -> np.ndarray:
        """Run consecutive frames of ONE stream, updating its state.

        Args:
            frames: float32 [N, 512] (or [512]) consecutive frames of the stream.
            state: that stream's state; updated in place.

        Returns:
            float32 [N] speech probabilities, one per frame.
        """
        x = np.asarray(frames, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != FRAME_SAMPLES:
            raise ValueError(f"frames must have shape [N, {FRAME_SAMPLES}], got {x.shape}")
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        # Context of frame i is the tail of frame i-1 (the state's context for i = 0).
        context = np.concatenate([state.context[None, :], x[:-1, -CONTEXT_SAMPLES:]], axis=0)
        inputs = np.ascontiguousarray(np.concatenate([context, x], axis=1))
        h, c = state.h, state.c
        outs = []
        for i in range(0, inputs.shape[0], _MAX_FRAMES_PER_CALL):
            probs, h, c = self._session.run(None, {"input": inputs[i : i + _MAX_FRAMES_PER_CALL], "h": h, "c": c})
            outs.append(np.asarray(probs, dtype=np.float32).reshape(-1))
        state.h, state.c = h, c
        state.context = x[-1, -CONTEXT_SAMPLES:].copy()
        return np.concatenate(outs)

    def process(self, frames: np.ndarray, states: list[VadState]) -> np.ndarray:
        """Run one frame for each of B streams, updating each stream's state.

        The model cannot batch streams (its leading axis is time), so this loops;
        it exists so callers can hand over all streams' frames at once.

        Args:
            frames: float32 [B, 512], row b is the next frame of stream b.
            states: B states, `states[b]` belongs to row b; updated in place.

        Returns:
            float32 [B] speech probabilities.
        """
        x = np.asarray(frames, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != FRAME_SAMPLES:
            raise ValueError(f"frames must have shape [B, {FRAME_SAMPLES}], got {x.shape}")
        if len(states) != x.shape[0]:
            raise ValueError(f"got {x.shape[0]} frames but {len(states)} states")
        out = np.empty(x.shape[0], dtype=np.float32)
        for b, state in enumerate(states):
            out[b] = self.process_stream(x[b : b + 1], state)[0]
        return out

    def whole_file_probs(self, audio: np.ndarray) -> np.ndarray:
        """Speech probability per 512-sample frame of a whole 16 kHz signal.

        Runs from the initial state; the tail is zero-padded to a whole frame.

        Args:
            audio: float32 [T] at 16 kHz.

        Returns:
            float32 [ceil(T / 512)] probabilities (frame i covers samples
            [512 i, 512 (i + 1))).
        """
        x = np.asarray(audio, dtype=np.float32).reshape(-1)
        n = -(-x.shape[0] // FRAME_SAMPLES)
        padded = np.zeros(n * FRAME_SAMPLES, dtype=np.float32)
        padded[: x.shape[0]] = x
        return self.process_stream(padded.reshape(n, FRAME_SAMPLES), VadState.initial())
