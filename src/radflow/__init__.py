"""radflow: reproducible deep-learning workflow for medical images."""

__version__ = "0.1.0"

MODALITIES = ("mri", "ct", "xray")
