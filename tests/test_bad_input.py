"""Nothing lost, nothing silently wrong: bad input is one line on stderr and exit 2; drops are warned at once.

Every case builds its input at test time (the tiny bundle, the synthetic conversation, edited copies).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import threading

import numpy as np
import pytest

from crab_rt.cli import main

pytest.importorskip("torch")  # building the bundle fixture needs the [train] extra


@pytest.fixture(scope="module")
def audio(conversation):
    from crab_rt.audio import load_audio

    return load_audio(conversation[0])


@pytest.fixture(scope="module")
def pipeline(tiny_bundle):
    from crab_rt.runtime.pipeline import Pipeline, PipelineConfig

    with Pipeline(tiny_bundle, PipelineConfig(asr=None, backend="onnxruntime")) as p:
        yield p


def _listen(capsys, bundle, *args):
    """Run `crab-rt listen` on the tiny bundle without ASR; returns (exit code, stdout, stderr lines)."""
    code = main(["listen", "--bundle", str(bundle), "--no-asr", "--backend", "onnxruntime", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def _one_line_error(code, err, *needles):
    assert code == 2
    assert not any("Traceback" in line for line in err)
    errors = [line for line in err if line.startswith("crab-rt: error:")]
    assert errors == err[-1:], err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _edited_bundle(bundle, tmp_path, **changes):
    """A copy of the bundle with manifest fields replaced (the manifest itself carries no hash)."""
    copy = tmp_path / "edited"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.update(changes)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


# ---- 1: piped stdin is not a live device; a drop is a warning when it happens ---------------------------------
def test_stdin_input_blocks_instead_of_dropping(tiny_bundle, monkeypatch):
    from crab_rt.cli import build_parser
    from crab_rt.cli.listen import _source, pipeline_config_from_args

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"")))
    args = build_parser().parse_args(["listen", "--bundle", str(tiny_bundle), "--input", "-", "--no-asr"])
    source, live = _source(args)
    assert pipeline_config_from_args(args, None, live).overflow == "block"


def test_dropped_utterance_is_a_warning_when_it_happens(tiny_bundle, audio, caplog):
    from crab_rt.runtime.pipeline import Pipeline, PipelineConfig

    with Pipeline(tiny_bundle, PipelineConfig(asr=None, backend="onnxruntime", max_in_flight=1,
                                              overflow="drop")) as p:
        p._admission.acquire()  # a slow consumer: the only slot is taken
        stream = p.create_stream("mic")
        with caplog.at_level(logging.WARNING, logger="crab_rt"):
            stream.accept(audio)  # no flush: the warning comes with the drop, not with a summary
        p._admission.release()
    drops = [r for r in caplog.records if "dropped utterance" in r.getMessage()]
    assert stream.dropped_utterances >= 1 and len(drops) == stream.dropped_utterances
    assert drops[0].levelno == logging.WARNING
    assert "stream mic: dropped utterance at " in drops[0].getMessage()
    assert "overflow=drop" in drops[0].getMessage()


# ---- 3: the label list must match the model's classes ------------------------------------------------------------
def test_fewer_labels_than_classes_is_refused_on_load(tiny_bundle, conversation, tmp_path, capsys):
    edited = _edited_bundle(tiny_bundle, tmp_path, labels=["a", "b", "c"])
    code, out, err = _listen(capsys, edited, "--input", str(conversation[0]))
    _one_line_error(code, err, str(edited), "3 labels", "4 classes")
    assert out == ""


def test_more_labels_than_classes_is_refused_on_load(tiny_bundle, conversation, tmp_path, capsys):
    edited = _edited_bundle(tiny_bundle, tmp_path, labels=["a", "b", "c", "d", "e"])
    code, out, err = _listen(capsys, edited, "--input", str(conversation[0]))
    _one_line_error(code, err, str(edited), "5 labels", "4 classes")
    assert out == ""


# ---- 5: --output must be a writable file, checked before the model loads -----------------------------------------
def test_output_that_is_a_folder(conversation, tmp_path, capsys):
    # a bundle that does not exist: the --output check comes first
    code, _, err = _listen(capsys, tmp_path / "no-bundle", "--input", str(conversation[0]), "--output", str(tmp_path))
    _one_line_error(code, err, f"--output {tmp_path}", "is a folder")


def test_output_in_a_missing_folder(conversation, tmp_path, capsys):
    target = tmp_path / "missing" / "events.jsonl"
    code, _, err = _listen(capsys, tmp_path / "no-bundle", "--input", str(conversation[0]), "--output", str(target))
    _one_line_error(code, err, "--output", f"folder {tmp_path / 'missing'} does not exist")


# ---- 6: --threads in range ----------------------------------------------------------------------------------------
def test_huge_thread_count_is_refused():
    from crab_rt.errors import ConfigError
    from crab_rt.runtime.pipeline import PipelineConfig, max_threads

    with pytest.raises(ConfigError, match=rf"threads = 100000 is out of range: .*\[1, {max_threads()}\]"):
        PipelineConfig(threads=100000).validate()


def test_negative_thread_count_is_one_line_exit_2(tiny_bundle, conversation, capsys):
    code, _, err = _listen(capsys, tiny_bundle, "--input", str(conversation[0]), "--threads", "-1")
    _one_line_error(code, err, "threads = -1 is out of range")


# ---- 7: --gpu names a device that exists ---------------------------------------------------------------------------
def test_gpu_index_without_cuda(tiny_bundle, conversation, monkeypatch, capsys):
    monkeypatch.setattr("crab_rt.backends.select.cuda_device_count", lambda: 0)
    code = main(["listen", "--bundle", str(tiny_bundle), "--no-asr", "--input", str(conversation[0]), "--gpu", "99"])
    err = capsys.readouterr().err.strip().splitlines()
    _one_line_error(code, err, "--gpu 99: no CUDA device is available")


def test_gpu_index_beyond_the_devices(tiny_bundle, conversation, monkeypatch, capsys):
    monkeypatch.setattr("crab_rt.backends.select.cuda_device_count", lambda: 2)
    code = main(["listen", "--bundle", str(tiny_bundle), "--input", str(conversation[0]), "--gpu", "99"])
    err = capsys.readouterr().err.strip().splitlines()
    _one_line_error(code, err, "--gpu 99: GPU 99 does not exist", "2 CUDA device(s)")


# ---- 8: a short --min-silence-ms alone is valid --------------------------------------------------------------------
def test_short_min_silence_lowers_the_default_post_roll(tiny_bundle, conversation, capsys):
    code, out, err = _listen(capsys, tiny_bundle, "--input", str(conversation[0]), "--min-silence-ms", "50")
    assert code == 0, err
    assert len(out.splitlines()) >= 1


def test_short_min_silence_with_an_explicit_post_roll_still_names_it(tiny_bundle, conversation, capsys):
    code, _, err = _listen(capsys, tiny_bundle, "--input", str(conversation[0]), "--min-silence-ms", "50",
                           "--post-roll-ms", "100")
    _one_line_error(code, err, "post_roll_ms = 100", "min_silence_ms = 50")


# ---- 9: max_utterance_s fits the bundle -----------------------------------------------------------------------------
def test_max_utterance_above_the_bundle_is_refused(tiny_bundle, conversation, capsys):
    code, out, err = _listen(capsys, tiny_bundle, "--input", str(conversation[0]), "--max-utterance-s", "100")
    _one_line_error(code, err, "max_utterance_s = 100 s", "at most 12 s")
    assert out == ""


def test_default_max_utterance_is_lowered_to_the_bundle(tiny_bundle, tmp_path):
    from crab_rt.runtime.pipeline import Pipeline, PipelineConfig

    edited = _edited_bundle(tiny_bundle, tmp_path, max_audio_s=5.0)
    with Pipeline(edited, PipelineConfig(asr=None, backend="onnxruntime")) as p:
        assert p.config.segmenter.max_utterance_s == 5.0


# ---- 10: an on_event error is raised by wait() ------------------------------------------------------------------------
def test_on_event_error_is_raised_by_wait(pipeline, audio):
    gate = threading.Event()

    def on_event(event):
        gate.wait(30)  # fail only after flush() has returned: wait() is the call that must raise
        raise ValueError("consumer broke")

    stream = pipeline.create_stream(on_event=on_event)
    stream.accept(audio)
    stream.flush()
    gate.set()
    with pytest.raises(ValueError, match="consumer broke"):
        stream.wait(timeout=30)
    assert pipeline.error is None


# ---- 11: smaller ones ---------------------------------------------------------------------------------------------------
def test_folder_as_input_says_folder(tiny_bundle, tmp_path, capsys):
    code, _, err = _listen(capsys, tiny_bundle, "--input", str(tmp_path))
    _one_line_error(code, err, "is a folder, not an audio file")


def test_rate_with_a_file_is_refused(tiny_bundle, conversation, capsys):
    code, _, err = _listen(capsys, tiny_bundle, "--input", str(conversation[0]), "--rate", "8000")
    _one_line_error(code, err, "--rate apply only to --input -")


@pytest.mark.parametrize("bad,name", [(None, "NoneType"), (b"\x00\x01" * 100, "bytes"), ("audio.wav", "str")])
def test_accept_names_the_type_given(pipeline, bad, name):
    from crab_rt.errors import AudioError

    stream = pipeline.create_stream()
    with pytest.raises(AudioError, match=f"must be a numpy array of float32 samples, got {name}"):
        stream.accept(bad)
    assert stream.accept(np.zeros(512, dtype=np.float32)) == 0  # the stream is still usable


def test_pretty_summary_goes_to_stderr(tiny_bundle, conversation, capsys):
    code, out, err = _listen(capsys, tiny_bundle, "--input", str(conversation[0]), "--format", "pretty")
    assert code == 0
    assert out and all(line.startswith("[") for line in out.splitlines())  # events only
    assert any(line.startswith("utterances ") for line in err)


# ---- 11a: a truncated WAV (header claims more than the file holds) is decoded as far as it goes, with a warning ---
def test_truncated_wav_is_decoded_with_a_warning(conversation, tmp_path, caplog):
    import soundfile as sf

    from crab_rt.audio import load_audio
    from crab_rt.runtime.sources import FileSource

    full = tmp_path / "full.wav"
    tone = (np.sin(np.arange(int(15.8 * 16000)) / 7.0) * 0.3).astype(np.float32)
    sf.write(str(full), tone, 16000, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(full.read_bytes()[: 44 + 2 * 16000 * 2])  # header says 15.8 s, the file holds 2 s
    for decode in (load_audio, lambda p: np.concatenate(list(FileSource(p)))):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="crab_rt"):
            audio = decode(cut)
        assert audio.size == 2 * 16000
        np.testing.assert_allclose(audio, tone[: audio.size], atol=1e-4)
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1 and "cut.wav" in warned[0] and "15.8 s" in warned[0] and "2.0 s" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="crab_rt"):
        load_audio(full)
    assert not caplog.records  # a whole file: no warning
