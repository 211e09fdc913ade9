"""Named encoder architectures for random-weight models.

`random:<name>` in a config builds the architecture from these settings with
random weights and downloads nothing. The large and base presets have the real
published sizes (same compute as the pretrained models, for benchmarks); the
tiny presets exist so tests and the demo train in seconds on a CPU.

Note: encoders whose CNN uses GroupNorm (`feat_extract_norm="group"`, e.g.
wavlm-base-plus, wav2vec2-base) normalise over the whole padded waveform, so
their output for a sample depends on the batch's padding. LayerNorm CNNs
(WavLM Large and the tiny presets) do not.
"""

from __future__ import annotations

from crab_rt.errors import ConfigError

__all__ = ["SPEECH_PRESETS", "TEXT_PRESETS", "RANDOM_PREFIX", "preset_config"]

RANDOM_PREFIX = "random:"

_WAVLM_CONV = dict(
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
)

# (model_type, transformers config kwargs)
SPEECH_PRESETS: dict[str, tuple[str, dict]] = {
    "wavlm-large": (
        "wavlm",
        dict(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
            conv_dim=(512,) * 7, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
            **_WAVLM_CONV,
        ),
    ),
    "wavlm-base-plus": (
        "wavlm",
        dict(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            conv_dim=(512,) * 7, feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False,
            **_WAVLM_CONV,
        ),
    ),
    "wavlm-tiny": (
        "wavlm",
        dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            conv_dim=(16,) * 7, feat_extract_norm="layer", do_stable_layer_norm=False, conv_bias=True,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_buckets=32,
            max_bucket_distance=100, layerdrop=0.0, mask_time_prob=0.0, **_WAVLM_CONV,
        ),
    ),
    "hubert-tiny": (
        "hubert",
        dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            conv_dim=(32,) * 7, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, layerdrop=0.0,
            mask_time_prob=0.0, **_WAVLM_CONV,
        ),
    ),
    "wav2vec2-tiny": (
        "wav2vec2",
        dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            conv_dim=(32,) * 7, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, layerdrop=0.0,
            mask_time_prob=0.0, **_WAVLM_CONV,
        ),
    ),
}

_ROBERTA_COMMON = dict(
    vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
    eos_token_id=2, layer_norm_eps=1e-5,
)

TEXT_PRESETS: dict[str, tuple[str, dict]] = {
    "roberta-large": (
        "roberta",
        dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, **_ROBERTA_COMMON),
    ),
    "roberta-base": (
        "roberta",
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, **_ROBERTA_COMMON),
    ),
    "roberta-tiny": (
        "roberta",
        dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            **{**_ROBERTA_COMMON, "vocab_size": 1024, "max_position_embeddings": 192},
        ),
    ),
}


def preset_config(name: str, kind: str) -> tuple[str, dict]:
    """Look up a preset.

    Args:
        name: preset name without the `random:` prefix.
        kind: "speech" or "text".

    Returns:
        (model_type, config kwargs), a copy safe to modify.

    Raises:
        ConfigError: unknown preset, naming the known ones.
    """
    table = SPEECH_PRESETS if kind == "speech" else TEXT_PRESETS
    if name not in table:
        raise ConfigError(f"unknown {kind} preset {name!r} (known: {', '.join(sorted(table))})")
    model_type, kwargs = table[name]
    return model_type, dict(kwargs)
