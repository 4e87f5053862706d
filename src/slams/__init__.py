"""SLAMS: score-based latent data assimilation in a multimodal setting."""

__version__ = "0.1.0"
