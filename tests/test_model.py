"""The Crab model: exact head size, padding invariance, taps, GRU and WavLM encoder equivalence."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from crab_rt.errors import ConfigError  # noqa: E402
from crab_rt.model.config import HeadConfig, ModelConfig  # noqa: E402
from crab_rt.model.crab import CrabModel, count_parameters  # noqa: E402
from crab_rt.model.encoders import SpeechEncoder, hf_model_from_config  # noqa: E402
from crab_rt.model.head import CrabHead, MaskedBiGRU  # noqa: E402
from crab_rt.model.presets import preset_config  # noqa: E402


def test_head_parameter_count_at_paper_sizes():
    h, d, two_h, c = 512, 1024, 1024, 4
    gru = 3 * (h * h + h * h + 2 * h)  # one direction: input and hidden weights and biases for 3 gates
    unimodal = (d * h + h) + 2 * h + 2 * gru + two_h  # proj, LayerNorm, 2 GRUs, pooling vector
    cross = 2 * 4 * (two_h * two_h + two_h)  # two attentions, q/k/v/out projections
    classifier = 2 * (2 * two_h) + (2 * two_h * 512 + 512) + (512 * c + c)
    expected = 2 * unimodal + cross + classifier
    assert expected == 16_809_476
    assert count_parameters(CrabHead(HeadConfig(num_classes=c))) == expected


def test_masked_bigru_equals_packed_sequences():
    torch.manual_seed(0)
    gru = MaskedBiGRU(6, 5)
    ref = torch.nn.GRU(6, 5, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for suffix, src in (("", gru.forward_gru), ("_reverse", gru.backward_gru)):
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                getattr(ref, name + suffix).copy_(getattr(src, name))
    x = torch.randn(3, 9, 6)
    lengths = torch.tensor([9, 4, 1])
    mask = torch.arange(9)[None] < lengths[:, None]
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    expected, _ = torch.nn.utils.rnn.pad_packed_sequence(ref(packed)[0], batch_first=True, total_length=9)
    got = gru(x, mask)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.count_nonzero(got[1, 4:]) == 0


def _inputs(tokenizer):
    g = torch.Generator().manual_seed(1)
    audio = [torch.randn(16000, generator=g), torch.randn(5200, generator=g)]
    texts = ["i love this so much and more", "sad"]
    ids, tmask = tokenizer.encode_batch(texts)
    values = torch.zeros(2, 16000)
    amask = torch.zeros(2, 16000, dtype=torch.long)
    for i, a in enumerate(audio):
        values[i, : a.numel()] = a
        amask[i, : a.numel()] = 1
    return values, amask, torch.from_numpy(ids), torch.from_numpy(tmask)


def test_padding_invariance_both_modalities(tiny_model_parts):
    model, tokenizer = tiny_model_parts
    values, amask, ids, tmask = _inputs(tokenizer)
    with torch.no_grad():
        batched = model(values, amask, ids, tmask)
        # Sample 1 alone: its audio is shorter and its text shorter than sample 0's.
        n_audio, n_text = int(amask[1].sum()), int(tmask[1].sum())
        alone = model(values[1:, :n_audio], amask[1:, :n_audio], ids[1:, :n_text], tmask[1:, :n_text])
        # Sample 0 alone (it is the longest in both modalities already): no change either.
        first = model(values[:1], amask[:1], ids[:1], tmask[:1])
    assert torch.allclose(batched[1], alone[0], atol=1e-5)
    assert torch.allclose(batched[0], first[0], atol=1e-5)


def test_inference_has_no_legs_and_computes_no_taps(tiny_model_parts):
    model, tokenizer = tiny_model_parts
    assert not any("leg" in name for name in model.state_dict())
    values, amask, ids, tmask = _inputs(tokenizer)
    with torch.no_grad():
        logits = model(values, amask, ids, tmask)
        logits2, taps = model(values, amask, ids, tmask, return_taps=True)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 4)
    assert torch.equal(logits, logits2)
    h2 = 2 * model.head.config.hidden_dim
    assert {k: tuple(v.shape) for k, v in taps.items()} == {
        "speech_unimodal": (2, h2), "text_unimodal": (2, h2), "speech_pooled": (2, h2),
        "text_pooled": (2, h2), "classifier": (2, model.head.config.classifier_dim),
    }


@pytest.mark.parametrize("stable", [True, False])
# the reference here is transformers' own WavLM encoder, which warns where ours (SpeechEncoder) silences it
@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask and attn_mask is deprecated:UserWarning")
def test_wavlm_encoder_matches_transformers(stable):
    torch.manual_seed(0)
    _, cfg = preset_config("wavlm-tiny", "speech")
    cfg.update(do_stable_layer_norm=stable, feat_extract_norm="layer" if stable else "group")
    encoder = SpeechEncoder(hf_model_from_config("wavlm", cfg)).eval()
    x = torch.randn(2, 8000)
    mask = torch.ones(2, 8000, dtype=torch.long)
    mask[1, 5000:] = 0
    with torch.no_grad():
        ours, frame_mask = encoder(x, mask)
        ref = encoder.model(x, attention_mask=mask).last_hidden_state
    assert frame_mask.sum(1).tolist() == encoder.frame_lengths(torch.tensor([8000, 5000])).tolist()
    valid = frame_mask.unsqueeze(-1)
    assert torch.allclose(ours * valid, ref * valid, atol=1e-5)


@pytest.mark.parametrize("modality,taps", [("speech", {"speech_unimodal", "speech_pooled", "classifier"}),
                                           ("text", {"text_unimodal", "text_pooled", "classifier"})])
def test_unimodal_ablations(modality, taps, tiny_model_parts):
    _, tokenizer = tiny_model_parts
    config = ModelConfig(speech_encoder="random:hubert-tiny", text_encoder="random:roberta-tiny",
                         head=HeadConfig(hidden_dim=8, classifier_dim=8, modality=modality))
    model = CrabModel.build(config, ["x", "y"]).eval()
    assert (model.speech_encoder is None) == (modality == "text")
    assert (model.text_encoder is None) == (modality == "speech")
    values, amask, ids, tmask = _inputs(tokenizer)
    with torch.no_grad():
        logits, got = model(values, amask, ids, tmask, return_taps=True)
    assert logits.shape == (2, 2) and set(got) == taps


def test_architecture_round_trip(tiny_model_parts):
    model, tokenizer = tiny_model_parts
    rebuilt = CrabModel.from_architecture(model.architecture())
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    values, amask, ids, tmask = _inputs(tokenizer)
    with torch.no_grad():
        assert torch.equal(model(values, amask, ids, tmask), rebuilt(values, amask, ids, tmask))


def test_feature_encoder_is_frozen(tiny_model_parts):
    model, _ = tiny_model_parts
    assert not any(p.requires_grad for p in model.speech_encoder.model.feature_extractor.parameters())
    assert all(p.requires_grad for p in model.speech_encoder.model.encoder.parameters())


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="head.modality must be one of"):
        HeadConfig(modality="video").validate()
    with pytest.raises(ConfigError, match="must divide 2\\*hidden_dim"):
        HeadConfig(hidden_dim=5, num_attention_heads=3).validate()
    with pytest.raises(ConfigError, match="unknown speech preset 'wavlm-huge'"):
        CrabModel.build(ModelConfig(speech_encoder="random:wavlm-huge"), ["a", "b"])
    with pytest.raises(ConfigError, match="model.max_audio_s"):
        ModelConfig(max_audio_s=0.1).validate()


def test_modality_dropout_drops_one_modality_of_a_share_of_samples_in_training_only():
    """With modality_dropout 0.5, a quarter of the samples' logits ignore their text and another quarter their
    speech (each modality's unimodal output is zeroed), never both; in eval mode every sample hears both."""
    torch.manual_seed(0)
    head = CrabHead(HeadConfig(speech_dim=6, text_dim=5, hidden_dim=4, classifier_dim=4, num_classes=3,
                               attention_dropout=0.0, classifier_dropout=0.0, modality_dropout=0.5))
    n = 400
    speech, speech2, text, text2 = torch.randn(n, 7, 6), torch.randn(n, 7, 6), torch.randn(n, 3, 5), torch.randn(n, 3, 5)
    smask, tmask = torch.ones(n, 7, dtype=torch.bool), torch.ones(n, 3, dtype=torch.bool)

    def run(s, t):
        torch.manual_seed(1)  # the same draw of dropped samples each time
        with torch.no_grad():
            return head(s, smask, t, tmask)

    head.train()
    base = run(speech, text)
    ignores_text = (run(speech, text2) - base).abs().amax(1) < 1e-6
    ignores_speech = (run(speech2, text) - base).abs().amax(1) < 1e-6
    assert 70 <= int(ignores_text.sum()) <= 130 and 70 <= int(ignores_speech.sum()) <= 130  # 100 expected
    assert not bool((ignores_text & ignores_speech).any())
    head.eval()
    base = run(speech, text)
    assert bool(((run(speech, text2) - base).abs().amax(1) > 1e-6).all())
    assert bool(((run(speech2, text) - base).abs().amax(1) > 1e-6).all())
    with pytest.raises(ConfigError, match="head.modality_dropout must be in"):
        HeadConfig(modality_dropout=1.0).validate()


def test_wavlm_keeps_its_first_layers_and_round_trips(tiny_model_parts):
    _, tokenizer = tiny_model_parts
    config = ModelConfig(speech_encoder="random:wavlm-tiny", text_encoder="random:roberta-tiny",
                         head=HeadConfig(hidden_dim=8, classifier_dim=8), speech_encoder_layers=1)
    model = CrabModel.build(config, ["x", "y"]).eval()
    assert len(model.speech_encoder.model.encoder.layers) == 1
    rebuilt = CrabModel.from_architecture(model.architecture())
    assert len(rebuilt.speech_encoder.model.encoder.layers) == 1
    rebuilt.load_state_dict(model.state_dict())
    values, amask, ids, tmask = _inputs(tokenizer)
    with torch.no_grad():
        assert torch.equal(model(values, amask, ids, tmask), rebuilt.eval()(values, amask, ids, tmask))
    with pytest.raises(ConfigError, match="speech_encoder_layers=3: the speech encoder has 2 layers"):
        CrabModel.build(ModelConfig(speech_encoder="random:wavlm-tiny", speech_encoder_layers=3,
                                    head=HeadConfig(modality="speech")), ["x", "y"])


def test_speech_spread_feeds_the_classifier_the_frames_standard_deviation():
    """With speech_spread the classifier's LayerNorm reads [speech pool, text pool, std of the speech frames
    over the valid steps]: the std equals numpy's over the unpadded frames, padding changes nothing, and the
    paper's head (False) keeps its width; a non-bool is refused."""
    torch.manual_seed(0)
    config = HeadConfig(speech_dim=6, text_dim=5, hidden_dim=4, classifier_dim=4, num_classes=3,
                        attention_dropout=0.0, classifier_dropout=0.0, speech_spread=True)
    head = CrabHead(config).eval()
    assert head.classifier_norm.normalized_shape == (3 * 8,)
    assert CrabHead(HeadConfig(speech_dim=6, text_dim=5, hidden_dim=4)).classifier_norm.normalized_shape == (16,)
    speech, text = torch.randn(2, 9, 6), torch.randn(2, 3, 5)
    smask = torch.tensor([[True] * 9, [True] * 5 + [False] * 4])
    tmask = torch.ones(2, 3, dtype=torch.bool)
    seen = {}
    head.classifier_norm.register_forward_hook(lambda _m, args, _out: seen.update(x=args[0]))
    with torch.no_grad():
        logits = head(speech, smask, text, tmask)
        frames = head.speech_block(speech, smask)
        frames = frames + head.speech_to_text(frames, head.text_block(text, tmask), tmask)
    for b, n in enumerate((9, 5)):
        expected = np.sqrt(frames[b, :n].numpy().astype(np.float64).var(0) + 1e-6)
        np.testing.assert_allclose(seen["x"][b, 16:24].numpy(), expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the second sample alone, unpadded: the same logits
        alone = head(speech[1:, :5], smask[1:, :5], text[1:], tmask[1:])
    torch.testing.assert_close(alone, logits[1:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="head.speech_spread must be true or false"):
        HeadConfig(speech_spread=1).validate()
