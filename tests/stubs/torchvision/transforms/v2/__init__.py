"""``torchvision.transforms.v2`` as a package, so that ``from ... import functional`` resolves."""
