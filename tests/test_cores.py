"""The core budget (crab_rt.runtime.cores) and how the pipeline hands its numbers to each stage."""

from __future__ import annotations

import dataclasses
import os

import pytest

from crab_rt.errors import ConfigError
from crab_rt.runtime import cores as cores_module
from crab_rt.runtime.cores import SPEECH_GRAPHS, CoreBudget, available_cores, plan_cores, threads_for


@pytest.mark.parametrize(
    ("cores", "asr", "speech", "text"),
    [(1, 1, 1, 1), (2, 1, 2, 2), (3, 1, 3, 3), (4, 2, 4, 4), (16, 8, 16, 16)],
)
def test_split_by_hand(cores, asr, speech, text):
    budget = plan_cores(cores)
    assert (budget.cores, budget.asr_threads, budget.speech_threads, budget.text_threads) == (cores, asr, speech, text)
    assert (budget.head_threads, budget.vad_threads, budget.overridden) == (text, 1, ())
    # ASR keeps at most half: beside the speech encoder the two ask for at most 1.5x the cores (1 core: 2).
    assert budget.asr_threads + budget.speech_threads <= max(cores * 3 // 2, 2)


def test_zero_cores_are_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert available_cores() == 4
    assert plan_cores().cores == 4
    assert (plan_cores().asr_threads, plan_cores().speech_threads) == (2, 4)


def test_affinity_is_smaller_than_cpu_count_under_taskset():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("os.sched_getaffinity is Linux only")
    assert available_cores() == len(os.sched_getaffinity(0)) <= (os.cpu_count() or 1)


def test_without_sched_getaffinity_cpu_count_is_used(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert cores_module.available_cores() == 6


def test_a_given_stage_number_overrides_only_its_share():
    budget = plan_cores(2, asr_threads=2)
    assert (budget.asr_threads, budget.speech_threads, budget.text_threads) == (2, 2, 2)
    assert budget.overridden == ("asr",)
    budget = plan_cores(4, speech_threads=3, text_threads=1)
    assert (budget.asr_threads, budget.speech_threads, budget.text_threads) == (2, 3, 1)
    assert budget.overridden == ("speech", "text")
    assert "given: speech, text" in budget.describe()


def test_graph_threads_cover_the_split_speech_graphs():
    threads = plan_cores(4).graph_threads()
    assert {g: threads[g] for g in SPEECH_GRAPHS} == {g: 4 for g in SPEECH_GRAPHS}
    assert (threads["text_encoder"], threads["head"]) == (4, 4)
    assert threads_for(threads, "speech_frontend") == 4
    assert threads_for(threads, "unknown_graph") == 0  # left to ONNX Runtime's default
    assert threads_for(3, "head") == 3


def test_describe_names_every_stage():
    assert plan_cores(2).describe() == "2 cores: ASR 1, speech 2, text 2, head 2, VAD 1 threads"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cores": -1}, r"cores: -1 must be an integer >= 0"),
        ({"cores": 1.5}, r"cores: 1\.5 must be an integer >= 0"),
        ({"cores": True}, r"cores: True must be an integer >= 0"),
        ({"cores": 2, "asr_threads": -1}, r"asr_threads: -1 must be an integer >= 0"),
        ({"cores": 2, "speech_threads": "2"}, r"speech_threads: '2' must be an integer >= 0"),
        ({"cores": 1, "text_threads": 17}, r"text_threads: 17 must be an integer in \[1, 16\] \(4 per core of 1\)"),
        ({"cores": 8, "asr_threads": 33}, r"asr_threads: 33 must be an integer in \[1, 32\]"),
    ],
)
def test_validation_names_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        plan_cores(**kwargs)


def test_budget_validate_names_the_field():
    with pytest.raises(ConfigError, match=r"cores: 0 must be an integer >= 1"):
        CoreBudget(cores=0, asr_threads=1, speech_threads=1, text_threads=1).validate()
    with pytest.raises(ConfigError, match=r"vad_threads: 0 must be an integer in \[1, 16\]"):
        CoreBudget(cores=2, asr_threads=1, speech_threads=1, text_threads=2, vad_threads=0).validate()
    budget = plan_cores(2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        budget.asr_threads = 2  # type: ignore[misc]


# --- the pipeline hands the numbers on ------------------------------------------------------------------


class _FakeTranscriber:
    """Records the AsrConfig the pipeline builds its Transcriber with (no Whisper is loaded)."""

    configs: list = []

    def __init__(self, config) -> None:
        type(self).configs.append(config)
        self.config = config
        self.device = "cpu"


def _intra_op(session) -> int:
    return session._session.get_session_options().intra_op_num_threads


@pytest.fixture
def fake_asr(monkeypatch):
    from crab_rt.runtime import pipeline as pipeline_module

    _FakeTranscriber.configs = []
    monkeypatch.setattr(pipeline_module, "Transcriber", _FakeTranscriber)
    return _FakeTranscriber


@pytest.mark.parametrize(("cores", "asr", "speech", "text"), [(2, 1, 2, 2), (4, 2, 4, 4)])
def test_pipeline_gives_each_stage_its_share(tiny_bundle, fake_asr, cores, asr, speech, text):
    pytest.importorskip("onnxruntime")
    from crab_rt.runtime.asr import AsrConfig
    from crab_rt.runtime.pipeline import Pipeline, PipelineConfig

    p = Pipeline(tiny_bundle, PipelineConfig(asr=AsrConfig(model="tiny.en", device="cpu"), backend="onnxruntime",
                                             cores=cores))
    try:
        assert p.cores == plan_cores(cores)
        assert fake_asr.configs[-1].cpu_threads == asr and p.config.asr.cpu_threads == asr
        sessions = {**p.model.sessions, **(p.model.split or {})}
        for name, session in sessions.items():
            want = {"text_encoder": text, "head": text, "speech_classifier": 1}.get(name, speech)
            assert _intra_op(session) == want, name
        assert _intra_op(p.vad) == 1
    finally:
        p.close()


def test_pipeline_threads_and_asr_threads_override_the_budget(tiny_bundle, fake_asr):
    pytest.importorskip("onnxruntime")
    from crab_rt.runtime.asr import AsrConfig
    from crab_rt.runtime.pipeline import Pipeline, PipelineConfig

    config = PipelineConfig(asr=AsrConfig(model="tiny.en", device="cpu", cpu_threads=3), backend="onnxruntime",
                            cores=2, threads=2)
    p = Pipeline(tiny_bundle, config)
    try:
        assert (p.cores.asr_threads, p.cores.speech_threads, p.cores.text_threads) == (3, 2, 2)
        assert p.cores.overridden == ("asr", "speech", "text")
        assert fake_asr.configs[-1].cpu_threads == 3
        assert _intra_op(p.model.sessions["speech_encoder"]) == 2
        assert _intra_op(p.model.sessions["text_encoder"]) == 2
    finally:
        p.close()


def test_pipeline_without_asr_still_plans(tiny_bundle):
    pytest.importorskip("onnxruntime")
    from crab_rt.runtime.pipeline import Pipeline, PipelineConfig

    p = Pipeline(tiny_bundle, PipelineConfig(asr=None, backend="onnxruntime", cores=1))
    try:
        assert p.transcriber is None and p.cores == plan_cores(1)
        assert _intra_op(p.model.sessions["speech_encoder"]) == 1
    finally:
        p.close()


@pytest.mark.parametrize("value", [-1, 1025, 1.0, True])
def test_pipeline_config_cores_is_validated(value):
    from crab_rt.runtime.pipeline import PipelineConfig

    with pytest.raises(ConfigError, match=r"cores = .* is out of range: must be 0 \(the CPUs this process may run on\)"):
        PipelineConfig(asr=None, cores=value).validate()
