"""The voice-only classifier: emotion from the speech encoder's states alone, before the words are known.

Masked mean and standard deviation of the speech encoder's hidden states over the utterance's frames (the
spread carries how much pitch, loudness and rate move), LayerNorm, one Linear to the classes. It is trained
beside Crab on detached states (`crab_rt.train.trainer`), so Crab's own training is unchanged, and exported as
its own graph (`speech_classifier`): the runtime runs it on the speech encoder's output the moment that is
ready and sends a provisional event while ASR still runs.
"""

from __future__ import annotations

import torch
from torch import nn

from crab_rt.model.head import masked_mean, masked_std

__all__ = ["SpeechClassifier", "VOICE_INIT_SEED", "mean_and_spread"]

# Its weights are drawn from their own seed, so adding the classifier leaves the rest of a model's
# initialisation (and every later random draw) as it was.
VOICE_INIT_SEED = 1234


def mean_and_spread(speech: torch.Tensor, speech_mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """[mean, standard deviation] over the valid frames of speech [B, F, D] (mask [B, F]) -> [B, 2D]; `eps` is
    added to the variance under the root (a finite gradient for one frame)."""
    return torch.cat([masked_mean(speech, speech_mask), masked_std(speech, speech_mask, eps)], dim=-1)


class SpeechClassifier(nn.Module):
    """hidden states [B, F, D] and a frame mask [B, F] -> logits [B, C].

    Args:
        dim: the speech encoder's hidden size D.
        num_classes: C.
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.dim, self.num_classes = int(dim), int(num_classes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(VOICE_INIT_SEED)
            self.norm = nn.LayerNorm(2 * self.dim)
            self.out = nn.Linear(2 * self.dim, self.num_classes)

    def config(self) -> dict:
        return {"dim": self.dim, "num_classes": self.num_classes}

    def forward(self, speech: torch.Tensor, speech_mask: torch.Tensor, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits; `text` and `text_mask` are ignored (the head's call signature, for the backends)."""
        return self.out(self.norm(mean_and_spread(speech, speech_mask)))
