"""Layers robustopt adds to ``torch.nn``: only what the canonical network form needs to know about."""
from __future__ import annotations

import torch
from torch import nn


def flat_layers(model: nn.Module):
    """The layers of a model in order, nested ``nn.Sequential`` containers flattened."""
    if isinstance(model, nn.Sequential):
        for child in model:
            yield from flat_layers(child)
    else:
        yield model


class Normalize(nn.Module):
    """Input normalization ``(x - mean) / std`` as a layer, so that models take raw inputs in [0, 1].

    ``mean`` and ``std`` broadcast against one example (without the batch dimension): a scalar,
    a per-channel vector of length C (applied to (C, H, W) inputs as ``(C, 1, 1)``), or a full
    tensor of the input's shape. Stored as buffers, so ``state_dict`` round-trips them.
    """

    def __init__(self, mean, std):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.get_default_dtype())
        std = torch.as_tensor(std, dtype=torch.get_default_dtype())
        if not torch.isfinite(mean).all() or not torch.isfinite(std).all():
            raise ValueError("Normalize: mean and std must be finite")
        if (std == 0).any():
            raise ValueError("Normalize: std must be non-zero")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def _view(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if t.dim() == 1 and t.numel() > 1 and x.dim() == 4:
            return t.view(1, -1, 1, 1)
        return t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._view(self.mean, x)) / self._view(self.std, x)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist() if self.mean.numel() <= 8 else tuple(self.mean.shape)}, " \
               f"std={self.std.tolist() if self.std.numel() <= 8 else tuple(self.std.shape)}"
