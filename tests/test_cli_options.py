"""One owner per default: CLI flags take defaults and choices from the config dataclasses; one SAMPLE_RATE."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
from pathlib import Path

import pytest

from crab_rt.backends.base import BACKEND_NAMES
from crab_rt.bundle import PRECISIONS
from crab_rt.cli import build_parser
from crab_rt.cli._options import OPTIONS_KEY, config_from_args, field_default
from crab_rt.cli.listen import pipeline_config_from_args
from crab_rt.data.synth import SynthConfig
from crab_rt.errors import ConfigError
from crab_rt.export.bundle_writer import ExportOptions
from crab_rt.export.tensorrt_build import BuildOptions
from crab_rt.runtime.asr import DEVICES, GUARDS, WINDOWS, AsrConfig
from crab_rt.runtime.pipeline import OVERFLOW_POLICIES, PipelineConfig
from crab_rt.runtime.segmenter import SegmenterConfig

ROOT = Path(__file__).resolve().parents[1]
LISTEN = ["listen", "--bundle", "b", "--input", "talk.wav"]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _options(command: str) -> dict:
    return _subparsers()[command].get_default(OPTIONS_KEY) or {}


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_config_flags_default_to_none_and_show_the_config_default():
    checked = 0
    for command, sub in _subparsers().items():
        for option in (sub.get_default(OPTIONS_KEY) or {}).values():
            where = f"{command} {option.action.option_strings[0]}"
            default = field_default(option.cls, option.field)
            shown = re.search(r"\(default: (.*)\)$", option.action.help or "")
            assert option.action.default is None, where
            if isinstance(default, bool):  # a switch flips the config default
                assert option.action.const is (not default), where
            elif option.default_text is not None:  # input-dependent default, described in words
                assert shown and shown.group(1) == option.default_text, where
                assert default is None or str(default) in option.default_text, where
            elif default is not None:
                assert shown, where
                assert option.action.type(shown.group(1)) == default, where
            checked += 1
    assert checked >= 30


def test_the_config_fields_have_flags():
    def fields(command):
        return {(o.cls, o.field) for o in _options(command).values()}

    segmenter = {f.name for f in dataclasses.fields(SegmenterConfig)} - {"sample_rate_hz"}
    assert {(SegmenterConfig, f) for f in segmenter} <= fields("listen")
    assert {(PipelineConfig, f) for f in ("backend", "gpu", "precision", "threads", "cores", "overflow")} <= fields(
        "listen")
    assert {(AsrConfig, f) for f in ("model", "language", "guard", "cpu_threads", "window")} <= fields("listen")
    export = {f.name for f in dataclasses.fields(ExportOptions)}
    assert fields("export") == {(ExportOptions, f) for f in export}
    build = {f.name for f in dataclasses.fields(BuildOptions)} - {"heartbeat_s"}
    assert fields("build-engines") == {(BuildOptions, f) for f in build}
    synth = {"num_utterances", "seed", "num_speakers", "imbalance_ratio", "noise_snr_db", "voice"}
    assert fields("synth") == {(SynthConfig, f) for f in synth}
    transcribe = {"model", "language", "device", "local_files_only", "window"}
    assert fields("transcribe-manifest") == {(AsrConfig, f) for f in transcribe}


def test_listen_without_flags_gives_the_config_defaults():
    args = _parse(*LISTEN)
    cpu_asr = dataclasses.replace(AsrConfig(), device="cpu")  # no --gpu: ASR on the CPU
    assert pipeline_config_from_args(args, None, live=False) == PipelineConfig(asr=cpu_asr)
    live = pipeline_config_from_args(args, "tiny.en", live=True)  # the bundle's ASR model; drop when live
    assert live == PipelineConfig(asr=dataclasses.replace(cpu_asr, model="tiny.en"), overflow="drop")
    assert pipeline_config_from_args(_parse(*LISTEN, "--no-asr"), "tiny.en", False) == PipelineConfig(asr=None)


@pytest.mark.parametrize(
    ("argv", "where", "field", "value"),
    [
        (["--post-roll-ms", "50"], "segmenter", "post_roll_ms", 50.0),
        (["--min-speech-ms", "100"], "segmenter", "min_speech_ms", 100.0),
        (["--start-threshold", "0.6"], "segmenter", "start_threshold", 0.6),
        (["--max-utterance-s", "20"], "segmenter", "max_utterance_s", 20.0),
        (["--asr", "base.en"], "asr", "model", "base.en"),
        (["--language", "auto"], "asr", "language", None),
        (["--language", "de"], "asr", "language", "de"),
        (["--asr-guard", "flag"], "asr", "guard", "flag"),
        (["--asr-compute-type", "int8"], "asr", "compute_type", "int8"),
        (["--asr-threads", "2"], "asr", "cpu_threads", 2),
        (["--asr-window", "auto"], "asr", "window", "auto"),
        (["--cores", "4"], None, "cores", 4),
        (["--backend", "torch"], None, "backend", "torch"),
        (["--max-in-flight", "4"], None, "max_in_flight", 4),
        (["--asr-max-batch", "4"], None, "asr_max_batch", 4),
        (["--precision", "fp16"], None, "precision", "fp16"),
        (["--threads", "3"], None, "threads", 3),
        (["--overflow", "drop"], None, "overflow", "drop"),
    ],
)
def test_a_listen_flag_overrides_exactly_its_field(argv, where, field, value):
    base = pipeline_config_from_args(_parse(*LISTEN), "tiny.en", live=False)
    config = pipeline_config_from_args(_parse(*LISTEN, *argv), "tiny.en", live=False)
    if where is None:
        expected = dataclasses.replace(base, **{field: value})
    else:
        expected = dataclasses.replace(base, **{where: dataclasses.replace(getattr(base, where), **{field: value})})
    assert config == expected
    config.validate()


def test_listen_gpu_moves_model_and_asr():
    config = pipeline_config_from_args(_parse(*LISTEN, "--gpu", "1"), None, live=False)
    assert config.gpu == 1 and (config.asr.device, config.asr.device_index) == ("auto", 1)


def test_an_invalid_flag_value_is_a_config_error():
    config = pipeline_config_from_args(_parse(*LISTEN, "--post-roll-ms", "900"), None, live=False)
    with pytest.raises(ConfigError, match=r"post_roll_ms = 900\.0 is out of range"):
        config.validate()


@pytest.mark.parametrize(
    ("argv", "config", "changes"),
    [
        (["export", "--checkpoint", "c.pt", "--out", "b"], ExportOptions, {}),
        (["export", "--checkpoint", "c.pt", "--out", "b", "--no-parity", "--opset", "18", "--asr", "tiny.en"],
         ExportOptions, {"parity": False, "opset": 18, "asr_model": "tiny.en"}),
        (["synth", "--out", "d"], SynthConfig, {}),
        (["synth", "--out", "d", "--num", "40", "--imbalance", "2"], SynthConfig,
         {"num_utterances": 40, "imbalance_ratio": 2.0}),
        (["synth", "--out", "d", "--voice", "harmonic"], SynthConfig, {"voice": "harmonic"}),
        (["synth", "--out", "d", "--speakers", "32"], SynthConfig, {"num_speakers": 32}),
        (["build-engines", "--bundle", "b"], BuildOptions, {}),
        (["build-engines", "--bundle", "b", "--gpu", "1", "--force", "--workspace-gb", "2", "--precision", "fp32"],
         BuildOptions, {"gpu_index": 1, "force": True, "workspace_gb": 2.0, "precision": "fp32"}),
        (["transcribe-manifest", "--manifest", "m.csv", "--out", "o.csv"], AsrConfig, {}),
        (["transcribe-manifest", "--manifest", "m.csv", "--out", "o.csv", "--download", "--device", "cpu"],
         AsrConfig, {"local_files_only": False, "device": "cpu"}),
    ],
)
def test_other_commands_build_their_configs_from_the_defaults(argv, config, changes):
    built = config_from_args(config, _parse(*argv))
    assert built == dataclasses.replace(config(), **changes)
    built.validate()


def test_choices_come_from_the_constants():
    listen = _options("listen")
    assert listen["backend"].action.choices is BACKEND_NAMES
    assert listen["precision"].action.choices is PRECISIONS
    assert listen["asr_guard"].action.choices is GUARDS
    assert listen["asr_window"].action.choices is WINDOWS
    assert listen["overflow"].action.choices is OVERFLOW_POLICIES
    assert _options("export")["precision"].action.choices is PRECISIONS
    assert _options("build-engines")["precision"].action.choices is PRECISIONS
    assert _options("transcribe-manifest")["device"].action.choices is DEVICES


@pytest.mark.parametrize(
    ("changes", "constant"),
    [({"backend": "cuda"}, BACKEND_NAMES), ({"precision": "int8"}, PRECISIONS), ({"overflow": "skip"}, OVERFLOW_POLICIES)],
)
def test_pipeline_config_validates_with_the_same_constants(changes, constant):
    with pytest.raises(ConfigError, match=re.escape(", ".join(constant))):
        PipelineConfig(**changes).validate()


def test_listen_rate_defaults_to_the_sample_rate():
    from crab_rt.audio import SAMPLE_RATE

    assert _parse(*LISTEN).rate == SAMPLE_RATE


def test_sample_rate_has_one_owner():
    """No int literal 16000 in the source outside crab_rt/audio.py (docstrings may say 16 kHz)."""
    found = []
    for folder in ("crab_rt", "cli", "export", "data", "train", "benchmarks/crab_bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "crab_rt" / "audio.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and type(node.value) is int and node.value == 16000:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []
