"""Feature upsamplers behind one interface (SPEC §7).

    >>> from probe_lib.upsamplers import create_upsampler, list_upsamplers
    >>> up = create_upsampler("bilinear", dim=384)           # frozen, eval mode
    >>> hr = up(feats, image)                                # (B,384,h,w), (B,3,H,W) -> (B,384,H,W)

Every method lives in its own file and registers itself with ``@register_upsampler``.
"""

# Method modules: importing one registers its classes (order = list_upsamplers() order).
from . import interpolation  # noqa: F401  (identity, nearest, bilinear, bicubic)
from .base import (
    ChannelNorm,
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

from . import featup, lift  # noqa: F401,E402  (lift; featup_jbu, featup_implicit)

# ---- helper C2: add `from . import loftup, featsharp` on the line below ----
from . import featsharp, loftup  # noqa: F401,E402

# ---- end of C2's imports ----

__all__ = [
    "ChannelNorm", "PretrainedWeights", "Upsampler", "create_upsampler", "fetch_pretrained",
    "fourier_features", "get_upsampler_class", "imagenet_normalize", "list_upsamplers",
    "load_state_dict_strict", "load_trained_or_random", "load_upsampler_weights",
    "register_upsampler", "resolve_upsampler_name", "save_upsampler_checkpoint",
    "upsampler_from_config", "weights_dir",
]
