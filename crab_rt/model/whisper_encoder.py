"""Whisper's encoder as a pretrained speech encoder that can be had offline.

The demo's corpus cannot teach a random speech encoder to hear prosody (226
clips; see docs/accuracy.md), and WavLM's weights cannot be downloaded on
machines without the Hugging Face hub. Whisper tiny.en's encoder can: the
`[demo]` extra pins it as a CTranslate2 folder for the ASR. This module reads
the encoder's weights out of such a folder (`model.bin`, CTranslate2's own
binary layout) into transformers' `WhisperEncoder`, and computes Whisper's
log-mel input in torch, so that the encoder trains, exports to ONNX and runs on
every backend like the WavLM encoder.

`speech_encoder = "whisper:tiny.en"` (a name of `crab_rt.runtime.asr.PACKAGED_MODELS`
or the local Hugging Face cache) or `"whisper:/path/to/ct2-folder"` selects it.

Two changes from Whisper's own front end make the output independent of the
batch a clip is padded into, as every crab-rt encoder must be: the STFT pads
with zeros instead of reflecting (only a clip's last frame differs), and the
log-mel's dynamic-range floor (loudest bin - 8) is taken over the clip's own
frames. Frames past a clip's end are zeroed before each convolution, which is
what the convolution's own zero padding does for the clip alone.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from crab_rt.audio import SAMPLE_RATE
from crab_rt.errors import BackendError

__all__ = ["WHISPER_PREFIX", "WHISPER_HOP", "LogMel", "read_ctranslate2_encoder", "load_whisper_encoder",
           "whisper_frame_lengths"]

WHISPER_PREFIX = "whisper:"
WHISPER_HOP = 160  # samples per log-mel frame; the encoder's second conv halves the rate (320 samples a frame)
_N_FFT = 400
# CTranslate2's DataType enum (include/ctranslate2/types.h) -> numpy.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def whisper_frame_lengths(sample_lengths: torch.Tensor) -> torch.Tensor:
    """Encoder frames for each waveform length: ceil((samples // 160) / 2)."""
    mel = torch.div(sample_lengths, WHISPER_HOP, rounding_mode="floor")
    return torch.div(mel + 1, 2, rounding_mode="floor").to(torch.long)


class LogMel(nn.Module):
    """Whisper's 80-bin log-mel of `SAMPLE_RATE` (16 kHz) waveforms, as convolutions (exports to any ONNX runtime).

    The STFT is a strided Conv1d whose kernels are the Hann-windowed DFT basis; the mel filters are
    Whisper's (Slaney scale, 0-8 kHz). Output [B, n_mels, samples // 160], scaled as Whisper's
    `(log10 - 4) / 4` with the floor at the clip's loudest bin - 8 (over valid frames only).
    """

    def __init__(self, n_mels: int = 80) -> None:
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        bins = _N_FFT // 2 + 1
        n = np.arange(_N_FFT)
        k = np.arange(bins)[:, None]
        window = 0.5 - 0.5 * np.cos(2 * np.pi * n / _N_FFT)  # periodic Hann, as torch.hann_window
        basis = np.concatenate([np.cos(2 * np.pi * k * n / _N_FFT), -np.sin(2 * np.pi * k * n / _N_FFT)]) * window
        self.register_buffer("dft", torch.tensor(basis[:, None, :], dtype=torch.float32), persistent=False)
        filters = mel_filter_bank(num_frequency_bins=bins, num_mel_filters=n_mels, min_frequency=0.0,
                                  max_frequency=8000.0, sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")
        self.register_buffer("filters", torch.tensor(filters.T, dtype=torch.float32), persistent=False)  # [mels, bins]
        self.bins = bins

    def forward(self, input_values: torch.Tensor, mel_mask: torch.Tensor) -> torch.Tensor:
        padded = nn.functional.pad(input_values[:, None, :], (_N_FFT // 2, _N_FFT // 2))
        spec = nn.functional.conv1d(padded, self.dft, stride=WHISPER_HOP)[..., :-1]  # [B, 2*bins, frames]
        power = spec[:, : self.bins] ** 2 + spec[:, self.bins:] ** 2
        log_spec = torch.clamp(torch.matmul(self.filters, power), min=1e-10).log10()  # [B, mels, frames]
        valid = mel_mask[:, None, :]
        loudest = torch.where(valid, log_spec, torch.full_like(log_spec, -100.0)).amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, loudest - 8.0)
        return (log_spec + 4.0) / 4.0 * valid.to(log_spec.dtype)


def _read_string(f) -> str:
    (n,) = struct.unpack("<H", f.read(2))
    return f.read(n)[:-1].decode("utf-8")


def read_ctranslate2_encoder(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The encoder of a CTranslate2 Whisper model: (transformers WhisperConfig kwargs, state dict).

    Reads `model.bin` (CTranslate2's binary model layout, version 6: a name, then each variable's
    name, shape, dtype and bytes) and maps `encoder/...` variables onto transformers'
    `WhisperEncoder` names; the fused query/key/value projection is split (Whisper's key has no bias).

    Raises:
        BackendError: the folder has no model.bin, it is not a Whisper model, or its encoder is quantized.
    """
    path = Path(folder) / "model.bin"
    if not path.is_file():
        raise BackendError(f"speech_encoder: {folder} has no model.bin (not a CTranslate2 Whisper folder)")
    variables: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        (version,) = struct.unpack("<I", f.read(4))
        spec = _read_string(f) if version >= 2 else ""
        if spec != "WhisperSpec":
            raise BackendError(f"speech_encoder: {path} is a CTranslate2 {spec or 'v' + str(version)} model, "
                               "not Whisper")
        f.read(4)  # revision
        (count,) = struct.unpack("<I", f.read(4))
        for _ in range(count):
            name = _read_string(f)
            (ndim,) = struct.unpack("<B", f.read(1))
            shape = struct.unpack(f"<{ndim}I", f.read(4 * ndim)) if ndim else ()
            dtype_id, nbytes = struct.unpack("<BI", f.read(5))
            data = f.read(nbytes)
            if not name.startswith("encoder/"):
                continue
            if dtype_id not in _CT2_DTYPES or dtype_id == 1:
                raise BackendError(f"speech_encoder: {path}: {name} is stored as CTranslate2 type {dtype_id}; "
                                   "convert the model with --quantization float16 or float32")
            variables[name[len("encoder/"):]] = np.frombuffer(data, dtype=_CT2_DTYPES[dtype_id]).reshape(shape)
    layers = sorted({int(k.split("/")[0][len("layer_"):]) for k in variables if re.match(r"layer_\d+/", k)})
    d_model = int(variables["conv1/weight"].shape[0])
    heads = int(variables["num_heads"]) if "num_heads" in variables else max(1, d_model // 64)
    config = dict(
        d_model=d_model, encoder_layers=len(layers), encoder_attention_heads=heads,
        encoder_ffn_dim=int(variables["layer_0/ffn/linear_0/weight"].shape[0]),
        num_mel_bins=int(variables["conv1/weight"].shape[1]),
        max_source_positions=int(variables["position_encodings/encodings"].shape[0]),
        decoder_layers=1, decoder_attention_heads=heads, decoder_ffn_dim=4 * d_model, vocab_size=51864,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(variables[name].astype(np.float32))

    state = {
        "conv1.weight": t("conv1/weight"), "conv1.bias": t("conv1/bias"),
        "conv2.weight": t("conv2/weight"), "conv2.bias": t("conv2/bias"),
        "embed_positions.weight": t("position_encodings/encodings"),
        "layer_norm.weight": t("layer_norm/gamma"), "layer_norm.bias": t("layer_norm/beta"),
    }
    for i in layers:
        src, dst = f"layer_{i}/", f"layers.{i}."
        q, k, v = t(src + "self_attention/linear_0/weight").chunk(3)
        qb, _, vb = t(src + "self_attention/linear_0/bias").chunk(3)
        state.update({
            dst + "self_attn.q_proj.weight": q, dst + "self_attn.q_proj.bias": qb,
            dst + "self_attn.k_proj.weight": k,
            dst + "self_attn.v_proj.weight": v, dst + "self_attn.v_proj.bias": vb,
            dst + "self_attn.out_proj.weight": t(src + "self_attention/linear_1/weight"),
            dst + "self_attn.out_proj.bias": t(src + "self_attention/linear_1/bias"),
            dst + "self_attn_layer_norm.weight": t(src + "self_attention/layer_norm/gamma"),
            dst + "self_attn_layer_norm.bias": t(src + "self_attention/layer_norm/beta"),
            dst + "fc1.weight": t(src + "ffn/linear_0/weight"), dst + "fc1.bias": t(src + "ffn/linear_0/bias"),
            dst + "fc2.weight": t(src + "ffn/linear_1/weight"), dst + "fc2.bias": t(src + "ffn/linear_1/bias"),
            dst + "final_layer_norm.weight": t(src + "ffn/layer_norm/gamma"),
            dst + "final_layer_norm.bias": t(src + "ffn/layer_norm/beta"),
        })
    return config, state


def whisper_encoder_from_config(config: dict) -> nn.Module:
    """A randomly initialised transformers `WhisperEncoder` (the decoder is never built)."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    cfg = dict(config)
    cfg.pop("model_type", None)
    return WhisperEncoder(WhisperConfig(**cfg))


def load_whisper_encoder(spec: str) -> nn.Module:
    """`whisper:<name or folder>`: Whisper's pretrained encoder from a CTranslate2 Whisper model, offline.

    The name resolves as the ASR's model does (`crab_rt.runtime.asr.resolve_model`: a folder, the
    Hugging Face cache, or a pinned pip package such as tiny.en's, sha256 checked); nothing is downloaded.

    Raises:
        BackendError: the model cannot be found or read.
    """
    from crab_rt.runtime.asr import resolve_model

    folder = resolve_model(spec[len(WHISPER_PREFIX):], local_files_only=True)
    config, state = read_ctranslate2_encoder(folder)
    encoder = whisper_encoder_from_config(config)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BackendError(f"speech_encoder: {folder}: weights do not fit WhisperEncoder "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return encoder
