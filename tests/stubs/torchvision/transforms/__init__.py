"""The names of ``torchvision.transforms`` that sglang and transformers import at module level."""

import enum


class InterpolationMode(enum.Enum):
    """Resampling filters (names and values as in torchvision)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"
