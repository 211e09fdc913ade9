"""The CUDA paths: torch backend on the GPU against the CPU, torch.compile (static and dynamic shapes), CUDA
graphs (torch.compile's and captured by hand), bf16 and fp16 inference, and bf16 training steps (the tiny
preset, and the paper's large encoders at micro-batch 8 with 12 s audio).

Every test here needs a CUDA device and skips without one (CI has none); `benchmarks/gpu_check.sh` runs them on
a GPU machine and keeps the JUnit XML with its results.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")

CUDA = "cuda:0"


@pytest.fixture(autouse=True)
def _no_tf32():
    """Exact fp32 on both sides of a comparison: cuDNN convolutions run TF32 by default (matrix products do not),
    which moves WavLM's CNN features by ~1e-3 relative. The benchmarks keep torch's defaults."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def tiny(tiny_model_parts):
    """The tiny model's fp32 sessions on the CPU and its own copy for the GPU tests to cast and move."""
    from crab_rt.backends.torch import torch_sessions

    model, _ = tiny_model_parts
    return torch_sessions(copy.deepcopy(model), "cpu"), model


def _gpu(model, compile="none", precision="fp32", dynamic_shapes=False):
    from crab_rt.backends.torch import torch_sessions

    return torch_sessions(copy.deepcopy(model), CUDA, compile, precision, dynamic_shapes)


def _assert_close(report: dict, atol: float, hidden_rtol: float) -> None:
    assert report["probabilities"] <= atol and report["logits"] <= 10 * atol, report
    assert report["speech_hidden"] <= hidden_rtol and report["text_hidden"] <= hidden_rtol, report
    assert report["labels_equal"], report


def test_torch_cuda_matches_cpu(tiny):
    from crab_rt.backends.torch import precision_parity

    cpu, model = tiny
    gpu = _gpu(model)
    assert {s.device for s in gpu.values()} == {CUDA} and gpu["head"].provider == f"torch {CUDA}"
    _assert_close(precision_parity(cpu, gpu), atol=1e-4, hidden_rtol=1e-3)


def test_torch_cuda_bundle_sessions_match_cpu(tiny_bundle):
    from crab_rt.backends.torch import load_torch_sessions, precision_parity
    from crab_rt.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    _assert_close(precision_parity(load_torch_sessions(bundle, "cpu"), load_torch_sessions(bundle, CUDA)),
                  atol=1e-4, hidden_rtol=1e-3)


@pytest.mark.parametrize("mode", ["inductor", "cuda-graphs", "capture"])
def test_compiled_cuda_matches_eager(tiny, mode):
    """Compiled (and, for cuda-graphs, replayed) parts reproduce eager; three rounds reach graph replay."""
    from crab_rt.backends.torch import precision_parity

    _, model = tiny
    eager, compiled = _gpu(model), _gpu(model, mode)
    assert compiled["speech_encoder"].provider == f"torch {CUDA} compile={mode}"
    for _ in range(3):  # cuda-graphs: warm-up, record, replay
        report = precision_parity(eager, compiled)
    _assert_close(report, atol=1e-4, hidden_rtol=1e-3)


def test_captured_parts_keep_one_graph_per_shape_and_drop_the_oldest(tiny):
    """"capture": a graph per input shape (two shapes of each part in precision_parity's feeds), replays equal
    eager on a new input of a captured shape (the static buffers are refilled), and max_graphs bounds the cache."""
    from crab_rt.backends.torch import precision_parity

    _, model = tiny
    eager, captured = _gpu(model), _gpu(model, "capture")
    precision_parity(eager, captured, seed=0)
    head = captured["head"]._forward
    assert head.captures == 2 and len(head.signatures) == 2, head.signatures
    _assert_close(precision_parity(eager, captured, seed=1), atol=1e-4, hidden_rtol=1e-3)  # replays only
    assert head.captures == 2
    x = torch.randn(1, 1600, device=CUDA)
    part = captured["speech_encoder"]._forward
    part.max_graphs = 1
    out, mask = part(x, torch.ones(1, 1600, dtype=torch.long, device=CUDA))  # runs under inference mode
    assert len(part.signatures) == 1 and part.captures == 3  # the two earlier shapes dropped
    with torch.inference_mode():
        ref, _ = eager["speech_encoder"]._forward(x, torch.ones(1, 1600, dtype=torch.long, device=CUDA))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("mode", ["inductor", "cuda-graphs"])
def test_dynamic_shapes_compile_matches_eager(tiny, mode):
    from crab_rt.backends.torch import precision_parity

    _, model = tiny
    eager, compiled = _gpu(model), _gpu(model, mode, dynamic_shapes=True)
    assert compiled["head"].provider == f"torch {CUDA} compile={mode} dynamic"
    for _ in range(3):
        report = precision_parity(eager, compiled)
    _assert_close(report, atol=1e-4, hidden_rtol=1e-3)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_inference_on_cuda(tiny, precision):
    """The encoders run in `precision`, the head in fp32; probabilities stay within the fp16 export's tolerance."""
    from crab_rt.backends.torch import precision_parity

    _, model = tiny
    low = _gpu(model, precision=precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert {p.dtype for p in low["speech_encoder"]._forward.parameters()} == {dtype}
    assert {p.dtype for p in low["text_encoder"]._forward.parameters()} == {dtype}
    assert {p.dtype for p in low["head"]._forward.parameters()} == {torch.float32}
    assert low["speech_encoder"].provider == f"torch {CUDA} {precision}"
    report = precision_parity(_gpu(model), low)
    assert report["probabilities"] <= 1e-2, report
    assert report["speech_hidden"] <= 0.1 and report["text_hidden"] <= 0.1, report


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_tiny_training_step_with_autocast_on_cuda(amp):
    from crab_bench.train_step import TrainStepConfig, build_model, measure_train_step

    config = TrainStepConfig(preset="tiny", device=CUDA, amp=amp, micro_batch=4, audio_s=1.0, text_tokens=16,
                             warmup_steps=0, steps=2)
    model = build_model(config)
    before = model.head.classifier_fc2.weight.detach().clone()
    row = measure_train_step(config, model, log=lambda *a: None)
    assert row["amp_dtype"] == {"bf16": "bfloat16", "fp16": "float16"}[amp]
    assert row["losses_finite"], row
    assert row["peak_memory_gib"]["allocated"] > 0
    assert not torch.equal(before, model.head.classifier_fc2.weight.detach())  # the optimizer stepped


def test_large_encoders_bf16_training_step_micro_batch_8_of_12_s():
    """The paper's sizes: WavLM Large + RoBERTa Large + head, micro-batch 8, 12 s audio, 128 tokens, bf16."""
    from crab_bench.train_step import TrainStepConfig, measure_train_step

    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("the large training step needs a GPU with 40 GiB or more")
    config = TrainStepConfig(preset="large", device=CUDA, amp="bf16", micro_batch=8, audio_s=12.0, text_tokens=128,
                             warmup_steps=0, steps=1)
    row = measure_train_step(config, log=lambda *a: None)
    assert row["amp_dtype"] == "bfloat16" and row["losses_finite"], row
    assert row["parameters"]["speech_encoder"] > 300e6 and row["parameters"]["text_encoder"] > 300e6
    torch.cuda.empty_cache()


def test_whole_chain_captured_on_two_streams_matches_eager(tmp_path):
    """benchmarks' chain probe on the tiny preset: the chain captured in one CUDA graph, on one and on two streams,
    gives eager's probabilities."""
    import json

    from crab_bench.chain_probe import WAYS, main

    assert main(["--out", str(tmp_path), "--preset", "tiny", "--precision", "fp32", "--warmup", "1",
                 "--repeat", "3"]) == 0
    ways = json.loads((tmp_path / "chain_probe.json").read_text())["ways"]
    assert [w["way"] for w in ways] == list(WAYS)
    assert all(w["n"] == 3 and w["max_abs_diff_vs_eager"] <= 1e-4 for w in ways), ways
