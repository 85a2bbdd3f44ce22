"""Attention masks shared by the models."""

from __future__ import annotations

import torch


def build_attention_mask(
    padding_mask: torch.Tensor | None, new_length: int, past_length: int, device: torch.device
) -> torch.Tensor | None:
    """Build the bool ``(batch, 1, new, past + new)`` mask for one forward pass.

    ``padding_mask`` is ``(batch, past + new)`` with 1 for real tokens and 0 for
    left padding, or None when no sequence is padded. Returns None when plain
    causal attention is enough, which lets SDPA pick its fastest kernel.
    """
    total = past_length + new_length
    if padding_mask is None and (past_length == 0 or new_length == 1):
        return None

    # Query i sits at absolute position past_length + i and may see keys 0..that position.
    query_positions = torch.arange(past_length, total, device=device)[:, None]
    key_positions = torch.arange(total, device=device)[None, :]
    mask = (key_positions <= query_positions)[None, None, :, :]  # (1, 1, T, S)
    if padding_mask is not None:
        mask = mask & padding_mask[:, None, None, :total].bool()  # (B, 1, T, S)
        # A fully padded query row would give NaN in softmax; let it see itself.
        # Its output is never used, because padding positions produce no tokens.
        mask = mask | (key_positions == query_positions)[None, None, :, :]
    return mask
