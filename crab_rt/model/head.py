"""The Crab head: unimodal blocks, cross-modal attention, pooling, classifier.

Paper section III-B, with padding masked everywhere (the official code masks
nothing, so its output depends on batch-mates; a streaming engine that batches
utterances of different lengths cannot accept that). Every step is written so
that the legacy ONNX exporter keeps batch and time dynamic.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from crab_rt.model.config import HeadConfig

__all__ = ["CrabHead", "MaskedBiGRU", "CrossModalAttention", "AttentionPooling", "masked_mean", "masked_std"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over time of x [B, T, D] counting only mask [B, T] positions."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def masked_std(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Standard deviation over time of x [B, T, D] counting only mask [B, T] positions; `eps` is added to the
    variance under the root (a finite gradient where every valid step is equal, or there is one)."""
    centred = x - masked_mean(x, mask).unsqueeze(1)
    return torch.sqrt(masked_mean(centred * centred, mask) + eps)


class MaskedBiGRU(nn.Module):
    """A bidirectional GRU equal to running it on packed sequences.

    A plain padded bi-GRU is wrong: its backward direction reads the padding
    first. Here the backward GRU is a forward GRU run on each sample's valid
    prefix reversed in place (index `L-1-t` for t < L), and its output is
    reversed back the same way. Outputs at padded steps are zero.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.forward_gru = nn.GRU(input_size, hidden_size, batch_first=True)
        self.backward_gru = nn.GRU(input_size, hidden_size, batch_first=True)

    @staticmethod
    def _reverse_valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        t = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        lengths = lengths.unsqueeze(1)
        index = torch.where(t < lengths, lengths - 1 - t, t)
        return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.to(torch.long).sum(1)
        fwd, _ = self.forward_gru(x)
        bwd, _ = self.backward_gru(self._reverse_valid(x, lengths))
        bwd = self._reverse_valid(bwd, lengths)
        return torch.cat([fwd, bwd], dim=-1) * mask.unsqueeze(-1).to(x.dtype)


class CrossModalAttention(nn.Module):
    """Multi-head attention of `query` over `context`, padding keys masked."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q_proj(query)), self._split(self.k_proj(context)), self._split(self.v_proj(context))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        # A finite large negative (not -inf) keeps fp16 and all-masked rows NaN-free.
        scores = scores.masked_fill(~context_mask[:, None, None, :], -1e4)
        weights = self.dropout(torch.softmax(scores, dim=-1))
        out = torch.matmul(weights, v).transpose(1, 2).reshape(query.shape[0], query.shape[1], -1)
        return self.out_proj(out)


class AttentionPooling(nn.Module):
    """w_i = softmax_i(r_i . m / sqrt(D)) over valid steps; returns sum_i w_i r_i."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = (x @ self.query) * self.scale
        scores = scores.masked_fill(~mask, -1e4)
        weights = torch.softmax(scores, dim=1)
        return (weights.unsqueeze(-1) * x).sum(1)


class UnimodalBlock(nn.Module):
    """Linear(D -> h) -> LayerNorm(h) -> masked bi-GRU -> [B, T, 2h]."""

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(input_dim, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        self.gru = MaskedBiGRU(hidden_dim, hidden_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.gru(self.norm(self.proj(x)), mask)


class CrabHead(nn.Module):
    """Encoder hidden states -> emotion logits (and optionally the five taps).

    Inputs: speech [B, F, Ds] with speech_mask [B, F] (bool), text [B, L, Dt]
    with text_mask [B, L] (bool). With modality "speech" or "text" the other
    input is ignored and may be None.
    """

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config.validate()
        h, two_h = config.hidden_dim, 2 * config.hidden_dim
        self.use_speech = config.modality in ("both", "speech")
        self.use_text = config.modality in ("both", "text")
        if self.use_speech:
            self.speech_block = UnimodalBlock(config.speech_dim, h)
            self.speech_pool = AttentionPooling(two_h)
        if self.use_text:
            self.text_block = UnimodalBlock(config.text_dim, h)
            self.text_pool = AttentionPooling(two_h)
        if config.modality == "both":
            self.speech_to_text = CrossModalAttention(two_h, config.num_attention_heads, config.attention_dropout)
            self.text_to_speech = CrossModalAttention(two_h, config.num_attention_heads, config.attention_dropout)
        pooled_dim = two_h * (int(self.use_speech) + int(self.use_text) + int(self.use_speech and config.speech_spread))
        self.classifier_norm = nn.LayerNorm(pooled_dim)
        self.classifier_fc1 = nn.Linear(pooled_dim, config.classifier_dim)
        self.classifier_dropout = nn.Dropout(config.classifier_dropout)
        self.classifier_fc2 = nn.Linear(config.classifier_dim, config.num_classes)

    def _drop_modality(self, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero the speech (first half of the `modality_dropout` share) or the text of random samples."""
        draw = torch.rand(s.shape[0], device=s.device)
        share = self.config.modality_dropout
        keep_speech = draw >= share / 2
        keep_text = (draw < share / 2) | (draw >= share)
        return s * keep_speech[:, None, None].to(s.dtype), t * keep_text[:, None, None].to(t.dtype)

    def forward(
        self,
        speech: torch.Tensor | None,
        speech_mask: torch.Tensor | None,
        text: torch.Tensor | None,
        text_mask: torch.Tensor | None,
        return_taps: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        taps: dict[str, torch.Tensor] = {}
        s = self.speech_block(speech, speech_mask) if self.use_speech else None
        t = self.text_block(text, text_mask) if self.use_text else None
        if return_taps:
            if s is not None:
                taps["speech_unimodal"] = masked_mean(s, speech_mask)
            if t is not None:
                taps["text_unimodal"] = masked_mean(t, text_mask)
        if s is not None and t is not None and self.training and self.config.modality_dropout > 0:
            s, t = self._drop_modality(s, t)
        if s is not None and t is not None:
            s, t = s + self.speech_to_text(s, t, text_mask), t + self.text_to_speech(t, s, speech_mask)
        pooled = []
        if s is not None:
            pooled.append(self.speech_pool(s, speech_mask))
        if t is not None:
            pooled.append(self.text_pool(t, text_mask))
        spread = [masked_std(s, speech_mask)] if s is not None and self.config.speech_spread else []
        z = self.classifier_fc1(self.classifier_norm(torch.cat(pooled + spread, dim=-1)))
        logits = self.classifier_fc2(self.classifier_dropout(torch.relu(z)))
        if not return_taps:
            return logits
        if s is not None:
            taps["speech_pooled"] = pooled[0]
        if t is not None:
            taps["text_pooled"] = pooled[-1]
        taps["classifier"] = z
        return logits, taps
