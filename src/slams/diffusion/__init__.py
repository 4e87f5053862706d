"""Score-based diffusion: schedule, Markov blanket, guidance and sampler."""

from slams.diffusion.blanket import MarkovBlanketDenoiser, windows
from slams.diffusion.guidance import GaussianGuidance, MomentMatchingGuidance
from slams.diffusion.sampler import sample
from slams.diffusion.sde import VPSDE, denoising_loss

__all__ = [
    "VPSDE",
    "GaussianGuidance",
    "MarkovBlanketDenoiser",
    "MomentMatchingGuidance",
    "denoising_loss",
    "sample",
    "windows",
]
