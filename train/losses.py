"""Training losses: MPCL (the paper's), SCL (ablation), weighted cross-entropy.

All contrastive losses take one embedding per sample (one "view"), which is
how MLCS uses them: the other samples of the micro-batch are the candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["mpcl_loss", "scl_loss", "class_weights", "weighted_cross_entropy", "NO_POSITIVE"]

# How MPCL averages over anchors that have no positive in the batch (see `mpcl_loss`).
NO_POSITIVE = ("exclude", "zero")


def _pairwise_logits(embeddings: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-similarity logits with the anchor itself masked out, and that mask."""
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {tuple(embeddings.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = F.normalize(embeddings.float(), dim=-1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    return logits.masked_fill(self_mask, float("-inf")), self_mask


def mpcl_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    no_positive: str = "exclude",
) -> torch.Tensor:
    """Multi-positive contrastive loss (paper eq. 5-7).

    For each anchor a: q = softmax over the other samples of (a . b_i / tau)
    with L2-normalised embeddings; c = same-label indicator normalised over the
    other samples; loss_a = -sum_i c_i log q_i. An anchor whose class has no
    other sample in the batch has no target; the paper does not say how it
    counts, so `no_positive` chooses:

    - "exclude": the mean over the anchors that have at least one positive.
    - "zero": the mean over all N anchors, a lone anchor counting as 0 (what the
      official code does). Equals "exclude" times (anchors with a positive) / N.

    Args:
        embeddings: [N, D].
        labels: [N] integer class ids.
        temperature: tau (the paper uses 0.1).
        no_positive: "exclude" or "zero" (see above).

    Returns:
        A scalar. When no anchor has a positive (or N < 2) it is a zero that
        still depends on `embeddings`, so `backward()` works and gives zero grads.
    """
    if no_positive not in NO_POSITIVE:
        raise ValueError(f"no_positive must be one of {', '.join(NO_POSITIVE)}, got {no_positive!r}")
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} entries for {embeddings.shape[0]} embeddings")
    if embeddings.shape[0] < 2:
        return embeddings.sum() * 0.0
    logits, self_mask = _pairwise_logits(embeddings, temperature)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    num_pos = positives.sum(1)
    has_pos = num_pos > 0
    if not bool(has_pos.any()):
        return embeddings.sum() * 0.0
    log_q = torch.log_softmax(logits, dim=1).masked_fill(self_mask, 0.0)
    target = positives.float() / num_pos.clamp_min(1).unsqueeze(1).float()
    per_anchor = -(target * log_q).sum(1)
    if no_positive == "zero":
        return per_anchor.masked_fill(~has_pos, 0.0).mean()
    return per_anchor[has_pos].mean()


def scl_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    no_positive: str = "exclude",
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out, reference code).

    Per anchor: -(tau / tau_base) * mean over positives p of
    log(exp(a.p/tau) / sum_{b != a} exp(a.b/tau)). With one view per sample
    this is MPCL with SupCon's temperature (0.07) and its tau/tau_base scale;
    the paper's SCL ablation (Table IV) differs from MPCL in exactly these
    hyper-parameters as far as the paper states. `no_positive` as in `mpcl_loss`.
    """
    loss = mpcl_loss(embeddings, labels, temperature, no_positive)
    return loss * (temperature / base_temperature)


def class_weights(label_ids: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights w_j = N / N_j (paper eq. 9) from training labels.

    Raises:
        ValueError: a class has no sample (its weight would be infinite).
    """
    counts = torch.bincount(torch.as_tensor(list(label_ids), dtype=torch.long), minlength=num_classes).float()
    if counts.numel() > num_classes:
        raise ValueError(f"label id {counts.numel() - 1} out of range for {num_classes} classes")
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"class id(s) {empty} have no training samples; cannot weight them")
    return counts.sum() / counts


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy with per-class weights (weighted mean, as torch defines it)."""
    return F.cross_entropy(logits.float(), labels, weight=None if weights is None else weights.to(logits.device))
