"""Neural networks: periodic convolutions, the score U-Net and the autoencoder."""

from slams.nn.autoencoder import AutoEncoder
from slams.nn.layers import ChannelLayerNorm, PeriodicConv2d, ResidualBlock, SinusoidalEmbedding
from slams.nn.unet import ScoreUNet

__all__ = [
    "AutoEncoder",
    "ChannelLayerNorm",
    "PeriodicConv2d",
    "ResidualBlock",
    "ScoreUNet",
    "SinusoidalEmbedding",
]
