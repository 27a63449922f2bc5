"""Import-time stand-in for torchvision in the CPU plugin tests (never installed).

PyPI's torchvision cannot load against the CPU torch build; sglang only imports
``torchvision.transforms`` (and ``InterpolationMode`` from it) at module level.
"""

# A version string, because transformers parses torchvision's version when it has no metadata.
__version__ = "0.0.0+stub"
