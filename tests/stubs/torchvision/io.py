"""``torchvision.io`` names imported at module level by transformers (decoding is not available)."""

import enum


class ImageReadMode(enum.Enum):
    """Colour modes of the image decoder (names as in torchvision)."""

    UNCHANGED = 0
    GRAY = 1
    GRAY_ALPHA = 2
    RGB = 3
    RGB_ALPHA = 4


def decode_image(*args, **kwargs):
    """Not available in the test stand-in: the plugin tests decode no images."""
    raise RuntimeError("torchvision.io.decode_image is not available in the test stand-in for torchvision")
