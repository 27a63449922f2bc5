"""``torchvision.transforms.v2.functional``: imported by transformers, never called by the tests."""
