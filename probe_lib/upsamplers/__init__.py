"""Feature upsamplers behind one interface (docs/upsamplers.md).

    >>> from probe_lib.upsamplers import create_upsampler, list_upsamplers
    >>> up = create_upsampler("bilinear", dim=384)           # frozen, eval mode
    >>> hr = up(feats, image)                                # (B,384,h,w), (B,3,H,W) -> (B,384,H,W)

Every method lives in its own file and registers itself with ``@register_upsampler``.
"""

# Method modules: importing one registers its classes (list_upsamplers() puts the paper's
# methods in a fixed order whatever the import order).
from . import featsharp, featup, interpolation, lift, loftup  # noqa: F401
from .base import (
    ChannelNorm,
    Guidance,
    PretrainedWeights,
    Upsampler,
    create_upsampler,
    fetch_pretrained,
    fourier_features,
    get_upsampler_class,
    imagenet_normalize,
    list_upsamplers,
    load_state_dict_strict,
    load_trained_or_random,
    load_upsampler_weights,
    register_upsampler,
    resolve_upsampler_name,
    save_upsampler_checkpoint,
    upsampler_from_config,
    weights_dir,
)

__all__ = [
    "ChannelNorm", "Guidance", "PretrainedWeights", "Upsampler", "create_upsampler",
    "fetch_pretrained", "fourier_features", "get_upsampler_class", "imagenet_normalize", "list_upsamplers",
    "load_state_dict_strict", "load_trained_or_random", "load_upsampler_weights",
    "register_upsampler", "resolve_upsampler_name", "save_upsampler_checkpoint",
    "upsampler_from_config", "weights_dir",
]
