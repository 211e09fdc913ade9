"""Corpus importers, paper numbers, MSP submission and transcribe-manifest, on tiny trees in the real layouts."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from crab_rt.audio import load_audio
from crab_rt.cli import main
from crab_rt.data.corpora import (
    IEMOCAP_LABELS,
    MELD_LABELS,
    MSP_LETTER_TO_LABEL,
    MSP_PODCAST_LABELS,
    CorpusLayoutError,
    iemocap_fold_splits,
    prepare_iemocap,
    prepare_meld,
    prepare_msp_podcast,
)
from crab_rt.data.corpora.iemocap import parse_emo_evaluation
from crab_rt.data.corpora.meld import fix_meld_text
from crab_rt.data.corpora.paper_counts import PAPER_CLASS_COUNTS
from crab_rt.data.manifest import check_labels, read_manifest
from crab_rt.data.transcribe import partial_path, transcribe_manifest
from crab_rt.errors import ConfigError, ManifestError
from crab_rt.train.paper_results import compare_with_paper, paper_results, write_msp_submission

try:
    from corpus_fixtures import make_iemocap, make_meld, make_msp
except ImportError:  # tests/ imported as a package
    from tests.corpus_fixtures import make_iemocap, make_meld, make_msp


# ----------------------------------------------------------------------------- IEMOCAP


def test_iemocap_parse_labels_speakers_text_and_drops(tmp_path):
    root = make_iemocap(tmp_path / "IEMOCAP_full_release")
    out = tmp_path / "m" / "iemocap.csv"
    s = prepare_iemocap(root, out)
    rows = {r.id: r for r in read_manifest(out)}
    check_labels(rows.values(), IEMOCAP_LABELS)
    assert len(rows) == 7
    assert s.dropped == {"fru": 2, "xxx": 1}
    assert rows["Ses01F_impro01_M000"].label == "happy"  # exc merged into happy
    assert rows["Ses01F_impro01_M001"].label == "happy"
    assert rows["Ses01F_impro01_F000"].label == "neutral"
    assert rows["Ses01F_script01_1_F000"].label == "angry"
    assert rows["Ses01F_impro01_F000"].text == "Excuse me."
    assert rows["Ses01F_impro01_F000"].speaker == "Ses01F"
    assert rows["Ses01F_impro01_M000"].speaker == "Ses01M"
    assert rows["Ses02M_impro02_F000"].speaker == "Ses02F"
    assert rows["Ses02M_impro02_F000"].split == "Session2"
    assert rows["Ses01F_impro01_F000"].extra["start_s"] == "6.2901"
    assert rows["Ses01F_impro01_F000"].extra["code"] == "neu"
    assert rows["Ses01F_impro01_F000"].audio.is_file()
    assert s.counts["Session1"] == {"neutral": 1, "happy": 2, "angry": 1, "sad": 1}
    assert s.counts["Session2"] == {"sad": 1, "neutral": 1}
    assert s.counts["Session5"] == {}
    assert s.n_rows == 7 and s.complete and not s.missing_text
    table = s.format()
    assert "paper all" in table and "1708" in table and "fru=2" in table


def test_iemocap_ignores_annotator_lines():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.txt"
        p.write_text(
            "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
            "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n"
            "C-E1:\tNeutral;\t()\nA-E3:\tval 3; act 2; dom  2;\t()\n"
        )
        got = parse_emo_evaluation(p)
    assert got == [
        {
            "turn": "Ses01F_impro01_F000",
            "code": "neu",
            "start_s": "6.2901",
            "end_s": "8.2357",
            "val": "2.5000",
            "act": "2.5000",
            "dom": "2.5000",
        }
    ]


def test_iemocap_missing_and_corrupt_wavs_are_reported(tmp_path):
    root = make_iemocap(tmp_path / "iemo", skip_wav=("Ses01F_impro01_F000",), corrupt_wav=("Ses02M_impro02_M000",))
    s = prepare_iemocap(root, tmp_path / "iemocap.jsonl")
    ids = {r.id for r in read_manifest(tmp_path / "iemocap.jsonl")}
    assert len(ids) == 5 and "Ses01F_impro01_F000" not in ids and "Ses02M_impro02_M000" not in ids
    assert len(s.missing) == 1 and s.missing[0].endswith("Ses01F_impro01/Ses01F_impro01_F000.wav")
    assert len(s.unreadable) == 1 and "Ses02M_impro02_M000.wav" in s.unreadable[0][0]
    assert not s.complete
    text = s.format(max_listed=1)
    assert "missing audio files: 1" in text and "unreadable audio files: 1" in text


def test_iemocap_parent_folder_is_accepted(tmp_path):
    make_iemocap(tmp_path / "IEMOCAP_full_release")
    s = prepare_iemocap(tmp_path, tmp_path / "m.csv")
    assert s.n_rows == 7


def test_iemocap_fold_splits():
    f = iemocap_fold_splits(3)
    assert f == {
        "train": ["Session1", "Session2", "Session4", "Session5"],
        "dev": ["Session3"],
        "test": ["Session3"],
    }
    g = iemocap_fold_splits(5, dev="next")
    assert g == {"train": ["Session2", "Session3", "Session4"], "dev": ["Session1"], "test": ["Session5"]}
    for k in range(1, 6):
        h = iemocap_fold_splits(k, dev="next")
        assert sorted(h["train"] + h["dev"] + h["test"]) == [f"Session{i}" for i in range(1, 6)]
    with pytest.raises(ConfigError, match="test_session must be an integer in 1..5, got 6"):
        iemocap_fold_splits(6)
    with pytest.raises(ConfigError, match="dev must be 'test' or 'next'"):
        iemocap_fold_splits(1, dev="random")


def test_not_a_corpus_raises_with_expectation(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusLayoutError, match="does not look like IEMOCAP .*EmoEvaluation"):
        prepare_iemocap(tmp_path / "empty", tmp_path / "a.csv")
    with pytest.raises(CorpusLayoutError, match="does not look like MELD .*train_sent_emo.csv"):
        prepare_meld(tmp_path / "empty", tmp_path / "a.csv", progress=False)
    csv_only = tmp_path / "csv_only"
    csv_only.mkdir()
    (csv_only / "dev_sent_emo.csv").write_text("Sr No.,Utterance,Speaker,Emotion,Dialogue_ID,Utterance_ID\n")
    with pytest.raises(CorpusLayoutError, match="MELD CSVs found but no clips .*dev_splits_complete/"):
        prepare_meld(csv_only, tmp_path / "a.csv", progress=False)
    with pytest.raises(ConfigError, match="workers must be an integer >= 1, got 0"):
        prepare_meld(make_meld(tmp_path / "meld"), tmp_path / "a.csv", progress=False, workers=0)
    with pytest.raises(CorpusLayoutError, match="does not look like MSP-Podcast .*labels_consensus.csv"):
        prepare_msp_podcast(tmp_path / "empty", tmp_path / "a.csv")
    assert not (tmp_path / "a.csv").exists()


# ----------------------------------------------------------------------------- MELD


def test_meld_extracts_reports_and_caches(tmp_path):
    root = make_meld(tmp_path / "MELD.Raw", skip=("test/dia0_utt1",), corrupt=("test/dia1_utt0",))
    out = tmp_path / "out" / "meld.csv"
    s = prepare_meld(root, out, progress=False)
    rows = {r.id: r for r in read_manifest(out)}
    check_labels(rows.values(), MELD_LABELS)
    assert sorted(rows) == ["dev_dia0_utt0", "test_dia0_utt0", "train_dia0_utt0", "train_dia0_utt1", "train_dia1_utt0"]
    r = rows["train_dia0_utt0"]
    assert r.text == "It\u2019s fine, really."  # cp1252 0x92 decoded
    assert r.label == "neutral" and r.split == "train" and r.speaker == "Chandler"
    assert r.extra["Season"] == "3" and r.extra["media"].endswith("train_splits/dia0_utt0.mp4")
    assert r.audio == (tmp_path / "out" / "meld_wav" / "train" / "dia0_utt0.wav").resolve()
    audio = load_audio(r.audio)
    assert 0.25 < len(audio) / 16000 < 0.40 and np.abs(audio).max() > 0.1
    import soundfile as sf

    info = sf.info(str(r.audio))
    assert info.samplerate == 16000 and info.channels == 1
    assert rows["test_dia0_utt0"].text == "I\u2019m so sorry."
    assert s.counts == {"train": {"neutral": 1, "joy": 1, "anger": 1}, "dev": {"surprise": 1}, "test": {"sadness": 1}}
    assert s.missing == ["test: output_repeated_splits_test/dia0_utt1.mp4"]
    assert len(s.unreadable) == 1 and s.unreadable[0][0].endswith("output_repeated_splits_test/dia1_utt0.mp4")
    assert "paper train" in s.format() and "4710" in s.format()

    # Second run: cached WAVs are reused, not re-extracted.
    mtime = os.stat(r.audio).st_mtime_ns
    s2 = prepare_meld(root, out, progress=False)
    assert os.stat(r.audio).st_mtime_ns == mtime
    assert any("reused 5 cached WAVs" in n for n in s2.notes)
    assert s2.counts == s.counts


def test_meld_custom_cache_and_parent_root(tmp_path):
    make_meld(tmp_path / "data" / "MELD.Raw")
    cache = tmp_path / "cache"
    s = prepare_meld(tmp_path / "data", tmp_path / "meld.jsonl", audio_cache=cache, progress=False, workers=2)
    assert s.complete and s.n_rows == 7
    assert sorted(p.name for p in (cache / "test").iterdir()) == ["dia0_utt0.wav", "dia0_utt1.wav", "dia1_utt0.wav"]
    assert not list(cache.rglob("*.part.wav"))


def test_fix_meld_text():
    assert fix_meld_text("It\x92s") == "It\u2019s"  # cp1252 byte read as Latin-1
    assert fix_meld_text("It\u00e2\u20ac\u2122s") == "It\u2019s"  # UTF-8 read as cp1252
    assert fix_meld_text("Caf\u00e9 \u00e2ge") == "Caf\u00e9 \u00e2ge"  # clean text untouched


# ----------------------------------------------------------------------------- MSP-Podcast


def test_msp_podcast_labels_splits_and_test3(tmp_path):
    root = make_msp(tmp_path / "MSP-Podcast", skip=("MSP-PODCAST_0004_0001.wav",))
    out = tmp_path / "msp.csv"
    s = prepare_msp_podcast(root, out)
    rows = {r.id: r for r in read_manifest(out)}
    check_labels(rows.values(), MSP_PODCAST_LABELS)
    assert s.dropped == {"O (other)": 1, "X (no agreement)": 1}
    assert "MSP-PODCAST_0001_0004" not in rows and "MSP-PODCAST_0001_0005" not in rows
    assert rows["MSP-PODCAST_0001_0001"].label == "angry"
    assert rows["MSP-PODCAST_0002_0002"].label == "contempt" and rows["MSP-PODCAST_0002_0002"].split == "dev"
    assert rows["MSP-PODCAST_0003_0001"].split == "test1" and rows["MSP-PODCAST_0003_0001"].label == "surprise"
    assert rows["MSP-PODCAST_0004_0002"].split == "test2"
    assert rows["MSP-PODCAST_test3_0001"].label is None and rows["MSP-PODCAST_test3_0001"].split == "test3"
    r = rows["MSP-PODCAST_0001_0003"]
    assert r.extra == {"EmoAct": "4.4", "EmoVal": "5.8", "EmoDom": "4.2", "Gender": "Female"}
    assert r.speaker == "128" and r.text == "words of MSP-PODCAST_0001_0003"
    assert rows["MSP-PODCAST_0002_0001"].text == ""
    assert len(s.missing) == 1 and s.missing[0].endswith("Audios/MSP-PODCAST_0004_0001.wav")
    assert sorted(s.missing_text) == sorted(
        [
            "MSP-PODCAST_0002_0001",
            "MSP-PODCAST_0002_0002",
            "MSP-PODCAST_0003_0001",
            "MSP-PODCAST_0004_0002",
            "MSP-PODCAST_test3_0001",
            "MSP-PODCAST_test3_0002",
        ]
    )
    assert list(s.counts) == ["train", "dev", "test1", "test2", "test3"]
    assert s.counts["train"] == {"angry": 1, "sad": 1, "happy": 1}
    assert s.counts["test3"] == {"": 2}
    assert "(no label)" in s.format()


def test_msp_letter_mapping_is_complete():
    assert "".join(MSP_LETTER_TO_LABEL) == "ASHUFDCN"
    assert tuple(MSP_LETTER_TO_LABEL.values()) == MSP_PODCAST_LABELS
    assert set(PAPER_CLASS_COUNTS["msp-podcast"]["train"]) <= set(MSP_PODCAST_LABELS)
    assert set(PAPER_CLASS_COUNTS["meld"]["train"]) == set(MELD_LABELS)
    assert set(PAPER_CLASS_COUNTS["iemocap"]["all"]) == set(IEMOCAP_LABELS)
    assert sum(PAPER_CLASS_COUNTS["iemocap"]["all"].values()) == 5531
    assert sum(PAPER_CLASS_COUNTS["meld"]["train"].values()) == 9989


# ----------------------------------------------------------------------------- CLI


def test_cli_prepare_exit_codes(tmp_path, capsys):
    root = make_msp(tmp_path / "msp")
    assert main(["prepare", "msp-podcast", "--root", str(root), "--out", str(tmp_path / "a.csv")]) == 0
    cap = capsys.readouterr()
    assert "contempt" in cap.out and "paper train" in cap.out and "warning" not in cap.err

    (root / "Audios" / "MSP-PODCAST_0001_0001.wav").unlink()
    assert main(["prepare", "msp-podcast", "--root", str(root), "--out", str(tmp_path / "b.csv")]) == 0
    cap = capsys.readouterr()
    assert "crab-rt: warning: 1 missing and 0 unreadable" in cap.err
    assert "MSP-PODCAST_0001_0001.wav" in cap.out

    assert main(["prepare", "meld", "--root", str(root), "--out", str(tmp_path / "c.csv")]) == 2
    cap = capsys.readouterr()
    assert "crab-rt: error:" in cap.err and "does not look like MELD" in cap.err

    assert (
        main(
            [
                "prepare",
                "iemocap",
                "--root",
                str(root),
                "--out",
                str(tmp_path / "d.csv"),
                "--audio-cache",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "--audio-cache applies only to meld" in capsys.readouterr().err


def test_cli_prepare_iemocap_and_meld(tmp_path, capsys):
    iemo = make_iemocap(tmp_path / "iemo")
    assert main(["prepare", "iemocap", "--root", str(iemo), "--out", str(tmp_path / "i.csv")]) == 0
    assert "Session1" in capsys.readouterr().out
    meld = make_meld(tmp_path / "meld", skip=("dev/dia0_utt0",))
    code = main(
        [
            "prepare",
            "meld",
            "--root",
            str(meld),
            "--out",
            str(tmp_path / "m.csv"),
            "--audio-cache",
            str(tmp_path / "wav"),
            "--no-progress",
        ]
    )
    assert code == 0
    cap = capsys.readouterr()
    assert "dev_splits_complete/dia0_utt0.mp4" in cap.out and "1 missing" in cap.err
    assert len(read_manifest(tmp_path / "m.csv")) == 6


# ----------------------------------------------------------------------------- transcribe-manifest


def _manifest_with_texts(tmp_path) -> Path:
    root = make_msp(tmp_path / "msp")
    out = tmp_path / "msp.csv"
    prepare_msp_podcast(root, out)
    return out


def test_transcribe_manifest_resumes_after_interruption(tmp_path):
    src = _manifest_with_texts(tmp_path)
    rows = read_manifest(src)
    empty = [r.id for r in rows if not r.text]
    assert len(empty) == 7
    out = tmp_path / "filled.jsonl"
    calls: list[int] = []

    class Boom(RuntimeError):
        pass

    def flaky(audio: np.ndarray) -> str:
        if len(calls) == 3:
            raise Boom("interrupted")
        calls.append(len(audio))
        return f"  text {len(calls)}  "

    with pytest.raises(Boom):
        transcribe_manifest(src, out, flaky, progress=False)
    side = partial_path(out)
    assert side.name == "filled.jsonl.partial.jsonl" and not out.exists()
    recs = [json.loads(x) for x in side.read_text().splitlines()]
    assert recs[0] == {"manifest": str(src.resolve())} and len(recs) == 4

    # A line cut short by a kill is dropped and redone; a second interruption resumes too.
    with side.open("a") as f:
        f.write('{"id": "MSP-PODCAST_')
    second: list[int] = []

    def once_then_boom(audio: np.ndarray) -> str:
        second.append(len(audio))
        if len(second) == 2:
            raise Boom("interrupted again")
        return "one"

    with pytest.raises(Boom):
        transcribe_manifest(src, out, once_then_boom, progress=False)
    assert side.read_text().splitlines()[-1] == json.dumps({"id": empty[3], "text": "one"})
    seen: list[int] = []

    def steady(audio: np.ndarray) -> str:
        seen.append(len(audio))
        return "new"

    res = transcribe_manifest(src, out, steady, progress=False)
    assert res["resumed"] == 4 and res["transcribed"] == 3 and res["kept"] == 3 and res["failed"] == []
    assert len(seen) == 3
    assert not side.exists()
    # Rerun with nothing left to do is a no-op that keeps the result.
    assert transcribe_manifest(out, out, steady, progress=False)["transcribed"] == 0
    got = {r.id: r for r in read_manifest(out)}
    assert len(got) == len(rows)
    assert [got[i].text for i in empty] == ["text 1", "text 2", "text 3", "one", "new", "new", "new"]
    assert got["MSP-PODCAST_0001_0001"].text == "words of MSP-PODCAST_0001_0001"  # kept
    assert got["MSP-PODCAST_0001_0001"].audio == rows[0].audio and got["MSP-PODCAST_0001_0001"].extra["EmoAct"] == "5.2"


def test_transcribe_manifest_all_and_unreadable(tmp_path):
    src = _manifest_with_texts(tmp_path)
    rows = read_manifest(src)
    rows[0].audio.write_bytes(b"not audio")
    res = transcribe_manifest(src, tmp_path / "o.csv", lambda a: "x", only_missing=False, progress=False)
    assert res["failed"] == [rows[0].id] and res["transcribed"] == len(rows) - 1
    got = read_manifest(tmp_path / "o.csv")
    assert got[0].text == rows[0].text and all(r.text == "x" for r in got[1:])


def test_transcribe_manifest_rejects_foreign_sidecar(tmp_path):
    src = _manifest_with_texts(tmp_path)
    out = tmp_path / "o.csv"
    partial_path(out).write_text(json.dumps({"manifest": "/elsewhere/m.csv"}) + "\n")
    with pytest.raises(ManifestError, match="resume file belongs to /elsewhere/m.csv"):
        transcribe_manifest(src, out, lambda a: "x", progress=False)


def test_transcribe_manifest_cli_with_fake_asr(tmp_path, capsys, monkeypatch):
    asr = pytest.importorskip("crab_rt.runtime.asr", reason="the ASR module is not there yet")
    src = _manifest_with_texts(tmp_path)
    made = []

    class FakeTranscriber:
        def __init__(self, config):
            made.append(config)

        def transcribe(self, audio):
            return type("T", (), {"text": f"heard {len(audio)} samples"})()

    monkeypatch.setattr(asr, "Transcriber", FakeTranscriber)
    out = tmp_path / "o.csv"
    code = main(
        [
            "transcribe-manifest",
            "--manifest",
            str(src),
            "--out",
            str(out),
            "--asr",
            "/models/tiny",
            "--language",
            "en",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    assert made[0].model == "/models/tiny" and made[0].device == "cpu" and made[0].local_files_only is True
    assert "10 rows, 7 transcribed now, 0 resumed, 3 kept, 0 unreadable" in capsys.readouterr().out
    texts = [r.text for r in read_manifest(out)]
    assert texts.count("heard 1600 samples") == 7


# ----------------------------------------------------------------------------- paper results


def test_compare_with_paper_and_lookup():
    md = compare_with_paper("meld", "test", {"war": 0.6, "uar": 0.5})
    lines = md.splitlines()
    assert lines[2] == "| model | WAR | UAR | macro-F1 | source |"
    assert "| Crab | 0.6257 | 0.5565 | — | paper Table II |" in lines
    assert "| ours | 0.6000 | 0.5000 | — | this run |" in lines
    assert "| ours − Crab | -0.0257 | -0.0565 | — | |" in lines
    md3 = compare_with_paper("msp", "test3", {"macro_f1": 0.45})
    assert "| Crab | 0.4212 | — | 0.4313 | paper Table VIII |" in md3 and "+0.0187" in md3
    assert "0.7585" in compare_with_paper("iemocap", "Session5", {"war": 0.7})
    assert [r.model for r in paper_results("meld", "test", tables=["IV"])][0] == "Crab CE"
    with pytest.raises(ConfigError, match="split 'test' has no paper results for msp-podcast"):
        compare_with_paper("msp-podcast", "test", {})
    with pytest.raises(ConfigError, match="corpus 'ravdess' has no paper results"):
        compare_with_paper("ravdess", "test", {})
    with pytest.raises(ConfigError, match="unknown metric"):
        compare_with_paper("meld", "test", {"acc": 0.5})


def test_compare_with_paper_ablation_rows_and_iemocap_protocol():
    from crab_rt.train.config import ABLATIONS
    from crab_rt.train.paper_results import ABLATION_ROWS, PAPER_RESULTS

    assert set(ABLATION_ROWS) == set(ABLATIONS)
    assert all(any(r.model == model for r in PAPER_RESULTS) for model in ABLATION_ROWS.values())
    md = compare_with_paper("meld", "test", {"war": 0.6, "uar": 0.5}, ablation="hubert")
    assert "| Crab HuBERT Large MLCS | 0.6230 | 0.5453 | — | paper Table V (ablation hubert) |" in md
    assert "| Crab | 0.6257 | 0.5565 | — | paper Table II |" in md  # the full model's row stays
    assert "| ours − Crab HuBERT Large MLCS | -0.0230 | -0.0453 | — | |" in md
    speech = compare_with_paper("iemocap", "Session5", {"uar": 0.6}, ablation="speech_only")
    assert "| Crab speech only | 0.6153 | 0.6518 | — | paper Table III (ablation speech_only) |" in speech
    lone = compare_with_paper("iemocap", "Session5", {"uar": 0.6}, ablation="ce_only")
    assert "the paper has no row for ablation ce_only on iemocap Session5" in lone
    # The paper states no IEMOCAP protocol (it says IEMOCAP has no official partitions).
    assert "leave-one-session-out" not in compare_with_paper("iemocap", "Session5", {"war": 0.7}).lower()
    assert "states no IEMOCAP partitions" in compare_with_paper("iemocap", "Session5", {"war": 0.7})
    with pytest.raises(ConfigError, match="unknown ablation 'nope'"):
        compare_with_paper("meld", "test", {}, ablation="nope")


def test_msp_submission_csv(tmp_path):
    p = write_msp_submission(
        ["MSP-PODCAST_test3_0002", "MSP-PODCAST_test3_0001.wav", "MSP-PODCAST_test3_0003"],
        ["angry", "N", "contempt"],
        tmp_path / "sub" / "test3.csv",
    )
    assert p.read_text() == (
        "FileName,EmoClass\nMSP-PODCAST_test3_0001.wav,N\nMSP-PODCAST_test3_0002.wav,A\nMSP-PODCAST_test3_0003.wav,C\n"
    )
    with pytest.raises(ManifestError, match="unknown predicted label 'O'"):
        write_msp_submission(["a"], ["O"], tmp_path / "x.csv")
    with pytest.raises(ManifestError, match="2 ids but 1 predicted labels"):
        write_msp_submission(["a", "b"], ["A"], tmp_path / "x.csv")
    with pytest.raises(ManifestError, match="appears twice"):
        write_msp_submission(["a", "a.wav"], ["A", "S"], tmp_path / "x.csv")
    with open(p, newline="") as f:
        assert list(csv.DictReader(f))[0] == {"FileName": "MSP-PODCAST_test3_0001.wav", "EmoClass": "N"}
