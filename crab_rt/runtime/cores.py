"""The core budget: how many CPU threads each stage of the pipeline gets.

Every library sizes its own thread pool for the whole machine: ONNX Runtime's intra-op pool (one per
session) has as many threads as physical cores, CTranslate2 uses 4 (its documented default), torch
one per core. The pipeline runs ASR and the speech encoder at the same time on every utterance
(ARCHITECTURE.md, step 4), so their pools ask for more cores than there are (CTranslate2's 4 alone, on 2
cores). `CoreBudget` decides once, from the cores this process may run on (`os.sched_getaffinity`, so
`taskset` and container CPU sets count) or a number given:

| stage | threads | runs |
|---|---|---|
| ASR (CTranslate2 `intra_threads` = faster-whisper `cpu_threads`) | half the cores, >= 1 | beside speech |
| speech encoder (ONNX Runtime intra-op; torch) | all the cores | beside ASR, then alone |
| text encoder (ONNX Runtime intra-op) | all the cores | after both |
| head (ONNX Runtime intra-op) | all the cores | after the text encoder |
| VAD (ONNX Runtime) | 1 | the caller's thread, 0.1 ms per 32 ms frame |

Why not a strict partition: measured on 2 cores (e2e replay, preset base, ONNX Runtime fp32, tiny.en int8,
11 espeak-ng turns, p50 end of speech to event, median of 2-5 runs, load average under 1.6), ASR/speech/text
threads 1/1/2 gave 471 ms, 1/2/2 498 ms and 2/2/2 490 ms with faster-whisper's 30 s window (within the
runs' spread of +-40 ms), but with `AsrConfig.window="auto"` ASR ends well before the speech encoder and a
speech encoder held to 1 thread leaves the freed core idle: 386 ms (1/1/2) against 360 (1/2/2) and 352
(2/2/2). tiny.en int8 gains little from a second thread (30 s window: 317 vs 290 ms), so ASR keeps half.
Again with the int8 encoders and the head on all cores (one run each): the default 395 ms, ASR and
encoders on 1 thread each 415 ms, ASR on 2 threads 412 ms (30 s window); the default 251 ms against 278 ms
for 1/1 (auto window). The head on 1 thread instead of 2 had cost 13-17 ms p50 (34-40 against 21-27 ms).
CTranslate2's `inter_threads` (faster-whisper `num_workers`) stays 1: the pipeline has one ASR worker.

A stage's own setting (`PipelineConfig.threads` for the ONNX Runtime sessions, `AsrConfig.cpu_threads` for
ASR), when not 0, overrides its share; the budget then says so (`overridden`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from crab_rt.checks import is_int
from crab_rt.errors import ConfigError
from crab_rt.runtime.speech_frontend import SPLIT_GRAPHS

__all__ = ["CoreBudget", "available_cores", "max_stage_threads", "plan_cores", "threads_for", "SPEECH_GRAPHS"]

# Graph names of a bundle by the stage that runs them (bundle graphs and the split speech graphs).
SPEECH_GRAPHS = ("speech_encoder", *SPLIT_GRAPHS)


def available_cores() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, cgroup CPU sets), else `os.cpu_count()`."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def max_stage_threads(cores: int) -> int:
    """The most threads one stage may be given: 4 per core, at least 16 (more only adds switching)."""
    return max(16, 4 * cores)


@dataclass(frozen=True)
class CoreBudget:
    """Threads per pipeline stage.

    Attributes:
        cores: the CPUs the split was made for.
        asr_threads: CTranslate2 intra-op threads (faster-whisper `cpu_threads`).
        speech_threads: intra-op threads of the speech encoder's sessions (its split graphs included); the
            torch backend's `torch.set_num_threads`.
        text_threads: intra-op threads of the text encoder session.
        head_threads: intra-op threads of the head session.
        vad_threads: intra-op threads of the Silero VAD session.
        overridden: the stages whose number was given rather than planned, e.g. ("asr",).
    """

    cores: int
    asr_threads: int
    speech_threads: int
    text_threads: int
    head_threads: int = 1
    vad_threads: int = 1
    overridden: tuple[str, ...] = ()

    def validate(self) -> CoreBudget:
        """Check every field; returns self.

        Raises:
            ConfigError: naming the field, the value and the allowed range.
        """
        if not is_int(self.cores) or self.cores < 1:
            raise ConfigError(f"cores: {self.cores!r} must be an integer >= 1")
        top = max_stage_threads(self.cores)
        for name in ("asr_threads", "speech_threads", "text_threads", "head_threads", "vad_threads"):
            value = getattr(self, name)
            if not is_int(value) or not 1 <= value <= top:
                raise ConfigError(f"{name}: {value!r} must be an integer in [1, {top}] (4 per core of {self.cores})")
        return self

    def graph_threads(self) -> dict[str, int]:
        """Intra-op threads per bundle graph name, for `load_sessions(threads=...)`."""
        # The voice-only classifier is one LayerNorm and one Linear: a second thread would only add overhead.
        return {**{g: self.speech_threads for g in SPEECH_GRAPHS}, "text_encoder": self.text_threads,
                "head": self.head_threads, "speech_classifier": 1}

    def describe(self) -> str:
        """One line for logs, e.g. "2 cores: ASR 1, speech 2, text 2, head 2, VAD 1 threads"."""
        given = f" (given: {', '.join(self.overridden)})" if self.overridden else ""
        return (f"{self.cores} cores: ASR {self.asr_threads}, speech {self.speech_threads}, "
                f"text {self.text_threads}, head {self.head_threads}, VAD {self.vad_threads} threads{given}")


def plan_cores(cores: int = 0, *, asr_threads: int = 0, speech_threads: int = 0,
               text_threads: int = 0) -> CoreBudget:
    """The budget for `cores` CPUs (0: `available_cores()`); a stage's number, when not 0, is kept as given.

    ASR gets half the cores (rounded down, at least 1); the speech encoder, which runs beside it and then
    alone, and the text encoder and the head, which run after both, get all of them; the VAD gets 1 (see
    the module docstring for the measurements). ASR/speech/text: 1 core 1/1/1; 2: 1/2/2; 4: 2/4/4;
    16: 8/16/16.

    Args:
        cores: CPUs to plan for; 0 = the ones this process may run on.
        asr_threads, speech_threads, text_threads: fixed numbers for those stages (0: planned); the head
            follows the text encoder.

    Returns:
        The validated budget.

    Raises:
        ConfigError: a number is negative, not an integer or above 4 per core (the message names it).
    """
    for name, value in (("cores", cores), ("asr_threads", asr_threads), ("speech_threads", speech_threads),
                        ("text_threads", text_threads)):
        if not is_int(value) or value < 0:
            raise ConfigError(f"{name}: {value!r} must be an integer >= 0 (0: planned from the cores)")
    n = cores or available_cores()
    asr = max(1, n // 2)
    speech = n
    given = {"asr": asr_threads, "speech": speech_threads, "text": text_threads}
    return CoreBudget(
        cores=n,
        asr_threads=asr_threads or asr,
        speech_threads=speech_threads or speech,
        text_threads=text_threads or n,
        head_threads=text_threads or n,
        overridden=tuple(k for k, v in given.items() if v),
    ).validate()


def threads_for(threads: int | Mapping[str, int], graph: str) -> int:
    """The intra-op threads of `graph` from an int (every graph) or a per-graph mapping (missing: 0, the default)."""
    if isinstance(threads, Mapping):
        return int(threads.get(graph, 0))
    return int(threads)
