"""`crab-rt evaluate`: report files, the paper comparison, and the MSP-Podcast submission CSV."""

import csv
import json

import pytest

torch = pytest.importorskip("torch")

from crab_rt.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def msp_checkpoint(tiny_model_parts, tmp_path_factory):
    from crab_rt.data.corpora import MSP_PODCAST_LABELS
    from crab_rt.model.config import HeadConfig, ModelConfig
    from crab_rt.model.crab import CrabModel
    from crab_rt.train.checkpoint import save_checkpoint

    _, tokenizer = tiny_model_parts
    torch.manual_seed(0)
    config = ModelConfig(speech_encoder="random:wavlm-tiny", text_encoder="random:roberta-tiny",
                         head=HeadConfig(hidden_dim=8, classifier_dim=8))
    model = CrabModel.build(config, list(MSP_PODCAST_LABELS)).eval()
    return save_checkpoint(tmp_path_factory.mktemp("msp") / "best.pt", model, tokenizer,
                           {"max_audio_s": 12.0, "max_text_tokens": 32})


@pytest.fixture(scope="module")
def msp_manifest(synthetic_corpus, tmp_path_factory):
    wavs = sorted(synthetic_corpus.parent.glob("wav/*.wav"))[:6]
    path = tmp_path_factory.mktemp("mspman") / "manifest.csv"
    rows = ["id,audio,text,label,split"]
    rows += [f"t1_{i},{w},hello there,{lab},test1" for i, (w, lab) in enumerate(zip(wavs[:4], ["angry", "sad", "happy", "neutral"]))]
    rows += [f"MSP-PODCAST_test3_{i:04d},{w},,,test3" for i, w in enumerate(wavs[4:])]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.filterwarnings("error")  # no third-party warning reaches the user (issue: quiet, honest output)
def test_evaluate_writes_report_and_compares_with_paper(msp_checkpoint, msp_manifest, tmp_path, capsys):
    code = main(["evaluate", "--checkpoint", str(msp_checkpoint), "--manifest", str(msp_manifest),
                 "--split", "test1", "--out", str(tmp_path), "--paper", "msp-podcast"])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads((tmp_path / "test1.json").read_text())
    assert report["num_samples"] == 4 and 0 <= report["uar"] <= 1
    assert (tmp_path / "test1_confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "test1_reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "UAR" in out and "0.4390" in out  # the paper's Test1 UAR printed beside ours
    # No temperature was fitted for this checkpoint: 1.0, so ECE before and after are the same.
    head = report["calibration"]["head"]
    assert report["calibration"]["fitted_on"] is None and head["temperature"] == 1.0
    assert head["ece_before"] == head["ece_after"] and head["num_samples"] == 4
    assert set(report["provisional"]) == {"war", "uar", "macro_f1"}  # the voice-only classifier's figures
    assert "calibration, Crab: temperature 1.000 (none fitted): ECE" in out and "provisional (voice only): WAR" in out


def test_submission_csv_for_unlabelled_test3(msp_checkpoint, msp_manifest, tmp_path, capsys):
    out_csv = tmp_path / "submission.csv"
    code = main(["evaluate", "--checkpoint", str(msp_checkpoint), "--manifest", str(msp_manifest),
                 "--split", "test3", "--submission", str(out_csv)])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader(out_csv.open()))
    assert [r.keys() for r in rows][0] == {"FileName", "EmoClass"}
    assert len(rows) == 2 and all(r["EmoClass"] in "ASHUFDCN" and len(r["EmoClass"]) == 1 for r in rows)


def test_evaluate_unlabelled_split_is_an_error(msp_checkpoint, msp_manifest, capsys):
    code = main(["evaluate", "--checkpoint", str(msp_checkpoint), "--manifest", str(msp_manifest), "--split", "test3"])
    assert code == 2 and "no labelled rows" in capsys.readouterr().err


def test_several_checkpoints_side_by_side(msp_checkpoint, msp_manifest, tmp_path, capsys):
    from crab_rt.data.corpora import MSP_PODCAST_LABELS
    from crab_rt.model.config import HeadConfig, ModelConfig
    from crab_rt.model.crab import CrabModel
    from crab_rt.train.checkpoint import save_checkpoint

    torch.manual_seed(1)
    config = ModelConfig(speech_encoder="random:wavlm-tiny", text_encoder="random:roberta-tiny",
                         head=HeadConfig(hidden_dim=8, classifier_dim=8, modality="speech"))
    speech_only = CrabModel.build(config, list(MSP_PODCAST_LABELS)).eval()
    speech_ckpt = save_checkpoint(tmp_path / "speech" / "best.pt", speech_only, None,
                                  {"max_audio_s": 12.0, "max_text_tokens": 32})
    code = main(["evaluate", "--checkpoint", str(msp_checkpoint), "--checkpoint", str(speech_ckpt),
                 "--manifest", str(msp_manifest), "--split", "test1", "--out", str(tmp_path / "eval")])
    out = capsys.readouterr().out
    assert code == 0
    reports = [json.loads(p.read_text()) for p in sorted((tmp_path / "eval").glob("*/test1.json"))]
    assert [r["modality"] for r in reports] == ["both", "speech"]
    table = out[out.index("side by side on [test1]:"):].splitlines()
    rows = {line.split()[0]: [float(x) for x in line.split()[-3:]] for line in table[3:]}
    for r in reports:
        assert rows[r["modality"]] == [round(r["war"], 4), round(r["uar"], 4), round(r["macro_f1"], 4)]


def test_submission_takes_one_checkpoint(msp_checkpoint, msp_manifest, tmp_path, capsys):
    code = main(["evaluate", "--checkpoint", str(msp_checkpoint), "--checkpoint", str(msp_checkpoint),
                 "--manifest", str(msp_manifest), "--split", "test3", "--submission", str(tmp_path / "s.csv")])
    assert code == 2 and "--submission takes one --checkpoint" in capsys.readouterr().err


def test_paper_comparison_per_split(msp_checkpoint, synthetic_corpus, tmp_path, capsys):
    # The MSP-Podcast recipe tests on test1 and test2: each is compared with its own Table VII row.
    wavs = sorted(synthetic_corpus.parent.glob("wav/*.wav"))[:8]
    labels = ["angry", "sad", "happy", "neutral"]
    rows = ["id,audio,text,label,split"]
    rows += [f"t{i},{w},hello there,{labels[i % 4]},{'test1' if i < 4 else 'test2'}" for i, w in enumerate(wavs)]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    code = main(["evaluate", "--checkpoint", str(msp_checkpoint), "--manifest", str(manifest),
                 "--split", "test1", "--split", "test2", "--out", str(tmp_path / "eval"), "--paper", "msp-podcast"])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads((tmp_path / "eval" / "test1_test2.json").read_text())
    assert report["num_samples"] == 8 and sorted(report["per_split"]) == ["test1", "test2"]
    assert all(report["per_split"][s]["num_samples"] == 4 for s in ("test1", "test2"))
    test1 = out[out.index("**msp-podcast test1**"):out.index("**msp-podcast test2**")]
    test2 = out[out.index("**msp-podcast test2**"):]
    assert "| Crab | 0.5232 | 0.4390 |" in test1 and "0.3382" not in test1
    assert "| Crab | 0.4861 | 0.3382 |" in test2 and "0.4390" not in test2
    uar1 = report["per_split"]["test1"]["uar"]
    assert f"| ours | {report['per_split']['test1']['war']:.4f} | {uar1:.4f} |" in test1
    assert "pooled over test1 + test2 (8 utterances)" in out and "pooled: no paper row" in out
    assert "[test1, test2] pooled" in out


def test_ablation_checkpoint_shows_its_own_paper_row(tiny_model_parts, synthetic_corpus, tmp_path, capsys):
    from crab_rt.data.corpora import MELD_LABELS
    from crab_rt.model.config import HeadConfig, ModelConfig
    from crab_rt.model.crab import CrabModel
    from crab_rt.train.checkpoint import save_checkpoint
    from crab_rt.train.config import load_recipe

    _, tokenizer = tiny_model_parts
    torch.manual_seed(2)
    config = ModelConfig(speech_encoder="random:wavlm-tiny", text_encoder="random:roberta-tiny",
                         head=HeadConfig(hidden_dim=8, classifier_dim=8))
    model = CrabModel.build(config, list(MELD_LABELS)).eval()
    train_config = load_recipe("meld", ablation="ce_only").to_dict()  # what Trainer stores under "config"
    ckpt = save_checkpoint(tmp_path / "ce_only" / "best.pt", model, tokenizer,
                           {"max_audio_s": 12.0, "max_text_tokens": 32}, config=train_config)
    wavs = sorted(synthetic_corpus.parent.glob("wav/*.wav"))[:4]
    manifest = tmp_path / "meld.csv"
    manifest.write_text("id,audio,text,label,split\n" + "".join(
        f"m{i},{w},hi,{lab},test\n" for i, (w, lab) in enumerate(zip(wavs, ["joy", "anger", "neutral", "fear"]))))
    code = main(["evaluate", "--checkpoint", str(ckpt), "--manifest", str(manifest), "--split", "test",
                 "--out", str(tmp_path / "eval"), "--paper", "meld"])
    out = capsys.readouterr().out
    assert code == 0
    assert json.loads((tmp_path / "eval" / "test.json").read_text())["ablation"] == "ce_only"
    assert "| Crab CE | 0.5797 | 0.5253 | — | paper Table IV (ablation ce_only) |" in out
    assert "| Crab | 0.6257 | 0.5565 |" in out  # the full model's row beside it
    assert "| ours − Crab CE |" in out and "| ours − Crab |" in out
