"""The training loss every model family shares (the built-in GPT and `slwtune.hf_model`).

Its own module so that the two model modules never import each other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slwtune.errors import ModelError

__all__ = ["masked_cross_entropy"]


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                         loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of (B, T, V) logits against (B, T) targets over positions where
    loss_mask is 1; an all-zero mask gives 0 (nothing to learn), not NaN."""
    flat = logits.reshape(-1, logits.size(-1)).float()  # (B*T, V); fp32 softmax under autocast
    if loss_mask is None:
        return F.cross_entropy(flat, targets.reshape(-1))
    if loss_mask.shape != targets.shape:
        raise ModelError(f"loss_mask shape {tuple(loss_mask.shape)} != targets shape {tuple(targets.shape)}")
    mask = loss_mask.reshape(-1).to(flat.dtype)  # (B*T,)
    losses = F.cross_entropy(flat, targets.reshape(-1), reduction="none")  # (B*T,)
    return (losses * mask).sum() / mask.sum().clamp(min=1.0)
