"""A frozen speech encoder's hidden states, computed once per clip instead of once per epoch.

When the recipe freezes the whole speech encoder (`model.freeze_speech_encoder`, as the synthetic
recipe does with Whisper tiny.en's encoder), its output for a clip never changes, so training runs
it once per clip, in eval mode, and feeds the head from memory. The states equal what the encoder
returns inside a batch (crab-rt's encoders are independent of their batch-mates' padding), so the
training is the same, minus the encoder's cost every epoch.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from crab_rt.model.crab import CrabModel
from crab_rt.train.data import Collator, EmotionDataset

__all__ = ["FrozenSpeechStates", "speech_encoder_frozen"]


def speech_encoder_frozen(model: CrabModel) -> bool:
    """Whether the model has a speech encoder and none of its parameters trains."""
    encoder = model.speech_encoder
    return encoder is not None and not any(p.requires_grad for p in encoder.parameters())


class FrozenSpeechStates:
    """Per-clip hidden states of `model`'s frozen speech encoder for every item of `dataset`.

    Args:
        model: the model whose speech encoder is frozen (`speech_encoder_frozen`).
        dataset: the clips, indexed as the batches' `indices`.
        collate: the training collator (same waveform preparation as training).
        batch_size: clips encoded at once.
        device: where the encoder runs; the states stay there.
    """

    def __init__(self, model: CrabModel, dataset: EmotionDataset, collate: Collator, batch_size: int,
                 device: torch.device) -> None:
        encoder = model.speech_encoder
        was_training = encoder.training
        encoder.eval()
        self.states: list[torch.Tensor] = [torch.empty(0)] * len(dataset)
        # Its own generator: a DataLoader draws a seed when iterated, and training's random stream (dropout, the
        # sampler) must not depend on whether or when the states were computed (an exact resume).
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate,
                            generator=torch.Generator())
        with torch.no_grad():
            for batch in loader:
                batch = batch.to(device)
                hidden, mask = encoder(batch.input_values, batch.audio_mask)
                for i, h, n in zip(batch.indices.tolist(), hidden, mask.sum(1).tolist()):
                    self.states[i] = h[:n].clone()
        encoder.train(was_training)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden [B, F, D] zero-padded, frame mask [B, F] bool) of the clips `indices`."""
        parts = [self.states[i] for i in indices.tolist()]
        frames = max(p.shape[0] for p in parts)
        hidden = parts[0].new_zeros((len(parts), frames, parts[0].shape[1]))
        mask = torch.zeros((len(parts), frames), dtype=torch.bool, device=hidden.device)
        for row, p in enumerate(parts):
            hidden[row, : p.shape[0]] = p
            mask[row, : p.shape[0]] = True
        return hidden, mask
