"""``torchvision.transforms.functional`` names imported at module level by transformers."""

import numpy as np
import torch

from torchvision.transforms import InterpolationMode

__all__ = ["InterpolationMode", "pil_to_tensor"]


def pil_to_tensor(pic) -> torch.Tensor:
    """PIL image -> uint8 tensor [C, H, W] (what the real function returns)."""
    array = np.asarray(pic, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
