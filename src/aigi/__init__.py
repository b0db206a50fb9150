"""aigi: detect AI-generated images with CLIP."""

__version__ = "0.1.0"
