"""Contrastive Supervision Legs (MLCS): small projection heads on the taps.

Each leg is Linear -> ReLU -> Linear into a `leg_dim` space (512 in the
paper). Legs exist only during training; export never sees them. For the
MLS+CE ablation the legs project to the class count and use cross-entropy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = ["ContrastiveLegs"]


class ContrastiveLegs(nn.Module):
    """One leg per tap name.

    Args:
        tap_dims: width of each tap the legs attach to.
        legs: which taps get a leg (a subset of `tap_dims`).
        hidden_dim: width of the first Linear (512 in the paper).
        out_dim: output width (512 for contrastive legs, the class count for CE legs).
    """

    def __init__(self, tap_dims: Mapping[str, int], legs: Sequence[str], hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        unknown = [name for name in legs if name not in tap_dims]
        if unknown:
            raise ValueError(f"no tap named {unknown} (taps: {', '.join(tap_dims)})")
        self.names = list(legs)
        self.legs = nn.ModuleDict(
            {
                name: nn.Sequential(nn.Linear(tap_dims[name], hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))
                for name in self.names
            }
        )

    def forward(self, taps: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: self.legs[name](taps[name]) for name in self.names}
