"""Score-based assimilation in pixel space (SDA): the state is the standardised temperature
anomaly (``pixel``) or, beyond the paper, the joint stack of temperature, precipitation and OLR
(``pixel-both``), which observes all three directly: the control that tells whether
multimodality needs the latent space.
"""

from __future__ import annotations

from slams.assimilation import assimilate_states, sampler_attrs
from slams.data.dataset import from_anomaly
from slams.diffusion import MarkovBlanketDenoiser
from slams.models import for_sampling, load_model

# Channels of the pixel-both state after the temperature levels, in order.
JOINT_FIELDS = ("precip", "olr")


def state_fields(method: str, levels: int):
    """The observed fields of a pixel state ``(B, n, C, H, W)``: its channels, split."""

    def split(x):
        out = {"t": x[:, :, :levels]}
        if method == "pixel-both":
            for k, name in enumerate(JOINT_FIELDS):
                out[name] = x[:, :, levels + k : levels + k + 1]
        return out

    return split


def analyse(method, observations, context):
    net, meta = load_model(context.paths["score"], context.device)
    for_sampling(net)
    levels = context.climatology_k.shape[1]
    channels = int(meta["state_channels"])
    expected = levels + len(JOINT_FIELDS) * (method == "pixel-both")
    if channels != expected:
        raise ValueError(
            f"{context.paths['score']} models {channels} channels, {method} needs {expected}"
        )
    ensemble = assimilate_states(
        MarkovBlanketDenoiser(net, window=context.blanket_days, chunk=context.windows_per_call),
        observations,
        state_fields(method, levels),
        (channels, *context.climatology_k.shape[-2:]),
        context,
    )
    temperature = ensemble[:, :, :levels].numpy()  # a view: converted in place
    analysis_k = from_anomaly(temperature, context.climatology_k, context.stats, out=temperature)
    return analysis_k, sampler_attrs(context)
