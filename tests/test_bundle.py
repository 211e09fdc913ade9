"""The runtime's bundle reader: fields, paths, and refusal of broken or tampered bundles."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crab_rt.bundle import BUNDLE_FORMAT_VERSION, Bundle, load_bundle
from crab_rt.errors import BundleError


@pytest.fixture(scope="module")
def exported(tiny_model_parts, tmp_path_factory) -> Path:
    """One fp32 bundle of the tiny model (read-only; tests that damage it work on a copy)."""
    pytest.importorskip("onnx")
    from crab_rt.export.bundle_writer import ExportOptions, export_bundle
    from crab_rt.train.checkpoint import save_checkpoint

    model, tokenizer = tiny_model_parts
    root = tmp_path_factory.mktemp("bundle")
    ckpt = save_checkpoint(root / "best.pt", model, tokenizer, {"max_audio_s": 8.0, "max_text_tokens": 32})
    return export_bundle(ckpt, root / "tiny", ExportOptions())


@pytest.fixture
def copy(exported, tmp_path) -> Path:
    return Path(shutil.copytree(exported, tmp_path / "copy"))


def test_round_trip_fields(exported):
    b = load_bundle(exported)
    assert isinstance(b, Bundle) and b.root == exported
    assert b.labels == ("a", "b", "c", "d")
    assert (b.sample_rate, b.normalize_waveform, b.modality) == (16000, True, "both")
    assert (b.max_audio_s, b.max_text_tokens, b.max_audio_samples) == (8.0, 32, 128000)
    assert b.asr_model is None
    assert b.shape_ranges["audio_samples"] == {"min": 400, "opt": 64000, "max": 128000}
    assert b.shape_ranges["speech_frames"]["max"] == 399
    assert b.graph_names == ("speech_encoder", "speech_classifier", "text_encoder", "head")
    assert b.graph_path("head") == exported / "head.onnx" and b.graph_path("head").is_file()
    assert b.tokenizer_path == exported / "tokenizer.json" and b.tokenizer_path.is_file()
    assert b.torch_checkpoint_path == exported / "model.pt" and b.torch_checkpoint_path.is_file()
    assert b.has_torch_weights
    assert b.manifest["format_version"] == BUNDLE_FORMAT_VERSION
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.modality = "text"


def test_graph_io_and_precisions(exported):
    b = load_bundle(exported)
    io = b.graph_io("text_encoder")
    assert io["inputs"]["input_ids"] == {"dtype": "int64", "shape": ["batch", "tokens"]}
    assert io["outputs"]["hidden_states"]["shape"] == ["batch", "tokens", 32]
    assert b.has_graph("head", "fp32") and not b.has_graph("head", "fp16") and not b.has_graph("nope")
    assert b.precisions() == ("fp32",)
    with pytest.raises(BundleError, match=r"no fp16 head graph; re-export with: crab-rt export .*--precision fp16"):
        b.graph_path("head", "fp16")
    with pytest.raises(BundleError, match="no fp16 speech_encoder graph"):
        b.graph_io("speech_encoder", "fp16")


def test_tokenizer_from_bundle_matches_training(exported, tiny_model_parts):
    from crab_rt.text import TextTokenizer

    b = load_bundle(exported)
    tok = TextTokenizer.from_file(b.tokenizer_path, b.max_text_tokens)
    ids, _ = tok.encode_batch(["so sad today"])
    ref, _ = tiny_model_parts[1].encode_batch(["so sad today"])
    assert ids.tolist() == ref.tolist()


def test_tampered_graph_is_refused(copy):
    head = copy / "head.onnx"
    data = bytearray(head.read_bytes())
    data[len(data) // 2] ^= 0xFF
    head.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"head\.onnx: sha256 mismatch with manifest\.json"):
        load_bundle(copy)
    assert load_bundle(copy, verify=False).graph_path("head") == head  # hashing is what catches it


def test_missing_file_is_refused(copy):
    (copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"tokenizer\.json: file listed in manifest\.json is missing"):
        load_bundle(copy, verify=False)


def test_listed_torch_weights_missing_is_refused(copy):
    (copy / "model.pt").unlink()  # only an export with --no-torch-weights may leave it out
    with pytest.raises(BundleError, match=r"model\.pt: file listed in manifest\.json is missing"):
        load_bundle(copy, verify=False)


def test_bundle_without_torch_weights_loads_and_says_so(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "model.pt").unlink()
    (copy / "manifest.json").write_text(json.dumps({**manifest, "torch": None}))
    b = load_bundle(copy)
    assert not b.has_torch_weights and b.graph_path("head").is_file()
    with pytest.raises(BundleError, match=r"no torch weights \(exported with --no-torch-weights\); use --backend "
                       r"onnxruntime or tensorrt"):
        _ = b.torch_checkpoint_path


def test_corrupt_manifest_is_refused(copy):
    (copy / "manifest.json").write_text('{"format": "crab-rt-bundle", ')
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON"):
        load_bundle(copy)


def _edit_manifest(root: Path, **changes) -> None:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_newer_format_version_is_refused(copy):
    _edit_manifest(copy, format_version=BUNDLE_FORMAT_VERSION + 1)
    with pytest.raises(BundleError, match=r"format_version 3 is newer than this crab-rt reads \(2\)"):
        load_bundle(copy)


def test_format_1_asr_path_loads_as_before_with_a_warning(copy, caplog):
    """Bundles of format_version 1 kept `--asr` as given; a path there is relative to the working directory."""
    _edit_manifest(copy, format_version=1, asr={"model": "demo/tiny-asr"})
    with caplog.at_level(logging.WARNING, logger="crab_rt"):
        assert load_bundle(copy).asr_model == "demo/tiny-asr"
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "format_version 1 records the ASR model as 'demo/tiny-asr'" in warning and "Re-export" in warning
    caplog.clear()
    _edit_manifest(copy, asr={"model": "small.en"})
    with caplog.at_level(logging.WARNING, logger="crab_rt"):
        assert load_bundle(copy).asr_model == "small.en"
    assert not caplog.records


@pytest.mark.parametrize(
    ("asr", "message"),
    [
        ({"model": "./models/tiny"}, r"asr model './models/tiny' is not a model name \(a local model is an asr folder\)"),
        ({"model": "/abs/tiny"}, r"asr model '/abs/tiny' is not a model name"),
        ({"model": 3}, r"malformed asr model 3"),
        ({"folder": "../elsewhere", "files": []}, r"asr folder '\.\./elsewhere' must be a path inside the bundle"),
        ({"folder": "/abs", "files": []}, r"asr folder '/abs' must be a path inside the bundle"),
        ({"folder": "asr", "files": []}, r"asr folder 'asr' lists no model\.bin, config\.json"),
        ({"folder": "asr", "files": [{"file": "../model.bin", "sha256": "0"}]},
         r"listed file '\.\./model\.bin' is not a path inside the bundle"),
        ({"folder": "asr", "files": [{"file": "asr/model.bin"}]}, r"malformed file entry"),
    ],
)
def test_bad_asr_entries_are_refused(copy, asr, message):
    _edit_manifest(copy, asr=asr)
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)


def test_other_sample_rate_is_refused(copy):
    _edit_manifest(copy, sample_rate=8000)
    with pytest.raises(BundleError) as info:
        load_bundle(copy)
    message = str(info.value)
    assert "\n" not in message and str(copy) in message
    assert re.search(r"sample_rate is 8000 Hz, crab-rt runs at 16000 Hz", message), message


def test_wrong_format_is_refused(copy):
    _edit_manifest(copy, format="something-else")
    with pytest.raises(BundleError, match="not a crab-rt bundle manifest"):
        load_bundle(copy)


def test_manifest_missing_fields_is_refused(copy):
    path = copy / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["labels"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="manifest lacks labels"):
        load_bundle(copy)


def test_missing_folder_and_manifest(tmp_path):
    with pytest.raises(BundleError, match="nowhere: bundle folder not found"):
        load_bundle(tmp_path / "nowhere")
    with pytest.raises(BundleError, match=r"manifest\.json: manifest not found"):
        load_bundle(tmp_path)
    (tmp_path / "file.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match="not a bundle folder"):
        load_bundle(tmp_path / "file.onnx")


def test_reader_imports_no_torch(exported):
    code = (
        "import sys; from crab_rt.bundle import load_bundle; b = load_bundle(sys.argv[1]); "
        "print(len(b.labels), 'torch' in sys.modules, 'onnx' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(exported)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["4", "False", "False"]
