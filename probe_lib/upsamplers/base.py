"""Upsampler registry, base class, input checks and checkpoint loading shared by every method.

A new method is one file with a class that subclasses :class:`Upsampler` and is decorated with
``@register_upsampler("name")``; it implements :meth:`Upsampler.upsample` (features at the
method's *native* grid, docs/upsamplers.md) and, when it has official checkpoints,
:meth:`Upsampler.remap_official_state_dict` and the ``pretrained`` class attribute.

Conventions: features ``(B, C, h, w)`` float; guidance images ``(B, 3, H, W)`` RGB in [0, 1]
(never ImageNet-normalised by the caller: learned modules normalise inside, docs/upsamplers.md).
"""

from __future__ import annotations

import inspect
import math
import os
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from probe_lib.utils import IMAGENET_MEAN, IMAGENET_STD, banner, cache_dir, check_image_batch

# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Upsampler]] = {}
_ALIASES: dict[str, str] = {}


def register_upsampler(name: str, aliases: tuple[str, ...] = ()) -> Callable[[type], type]:
    """Class decorator adding an :class:`Upsampler` subclass to the registry under ``name``.

    ``aliases`` resolve to ``name`` in :func:`create_upsampler` but are not listed by
    :func:`list_upsamplers`. Registering a name (or alias) twice raises a ``ValueError``.
    """

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Upsampler)):
            raise ValueError(  # noqa: TRY004
                f"@register_upsampler({name!r}) must decorate an Upsampler subclass")
        for n in (name, *aliases):
            if n in _REGISTRY or n in _ALIASES:
                raise ValueError(f"upsampler name {n!r} is already registered "
                                 f"(by {_REGISTRY.get(n) or _ALIASES.get(n)!r})")
        _REGISTRY[name] = cls
        for a in aliases:
            _ALIASES[a] = name
        cls.name = name
        return cls

    return deco


# Display order of the methods the paper benchmarks; others follow in registration order.
_ORDER = ("identity", "nearest", "bilinear", "bicubic", "lift", "featup_jbu", "featup_implicit",
          "loftup", "featsharp")


def list_upsamplers() -> list[str]:
    """Canonical names of the registered upsamplers (aliases excluded), baselines first."""
    known = [n for n in _ORDER if n in _REGISTRY]
    return known + [n for n in _REGISTRY if n not in _ORDER]


def resolve_upsampler_name(name: str) -> str:
    """Canonical name for ``name`` or an alias; unknown names raise a ``ValueError``."""
    if not isinstance(name, str):
        raise ValueError(  # noqa: TRY004
            f"upsampler name must be a string, got {type(name).__name__}")
    if name in _REGISTRY:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    raise ValueError(f"unknown upsampler {name!r}; valid names: {', '.join(list_upsamplers())} "
                     f"(aliases: {', '.join(sorted(_ALIASES)) or 'none'})")


def get_upsampler_class(name: str) -> type[Upsampler]:
    return _REGISTRY[resolve_upsampler_name(name)]


# --------------------------------------------------------------------------------------------
# Small building blocks shared by several methods
# --------------------------------------------------------------------------------------------


class ChannelNorm(nn.Module):
    """LayerNorm over the channel dimension of a ``(B, C, H, W)`` map.

    The parameters live in ``.norm`` so that keys read ``<prefix>.norm.weight/bias``, as in the
    FeatUp and LoftUp checkpoints.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def fourier_features(x: torch.Tensor, freqs: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
    """Sine/cosine Fourier features with learned phases, channels ordered frequency-major.

    Args:
        x: ``(B, D, H, W)`` inputs (e.g. [row, col, r, g, b], each roughly in [-1, 1]).
        freqs: ``(K,)`` angular multipliers.
        phases: ``(2, D, K)`` learned phases; the sin/cos phase of flat output channel
            ``j = k * D + d`` is ``phases[0 or 1].reshape(-1)[j]`` — a raw reshape of the
            ``(D, K)`` table, *not* a transpose (matters for strict loading).

    Returns:
        ``(B, 2 * K * D, H, W)``: ``[sin (K*D), cos (K*D)]`` in the dtype of ``x``.

    The arguments are always formed in float32: with multipliers up to e^10 a bf16 input (3
    significant digits) would turn the high-frequency channels into noise.
    """
    b, d, h, w = x.shape
    k = freqs.numel()
    if phases.shape != (2, d, k):
        raise ValueError(f"phases must have shape (2, {d}, {k}), got {tuple(phases.shape)}")
    f32 = torch.float32
    arg = (x.to(f32).unsqueeze(1) * freqs.view(1, k, 1, 1, 1).to(x.device, f32))
    arg = arg.reshape(b, k * d, h, w)
    ps = phases[0].reshape(1, k * d, 1, 1).to(f32)
    pc = phases[1].reshape(1, k * d, 1, 1).to(f32)
    return torch.cat([torch.sin(arg + ps), torch.cos(arg + pc)], dim=1).to(x.dtype)


def imagenet_normalize(image: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] ``(B, 3, H, W)`` -> ImageNet-standardised.

    Constants are made on the fly rather than kept as buffers, so state_dicts stay official.
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return (image - mean) / std


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainedWeights:
    """Where a method's official checkpoint comes from.

    ``filename`` is the name inside ``cache_dir()/"weights"``; a download goes either through
    ``url`` (torch.hub) or ``hf_repo``/``hf_filename`` (Hugging Face Hub). ``manual`` explains how
    to get the file by hand when there is no direct link (e.g. a Google Drive id).
    """

    filename: str
    url: str | None = None
    hf_repo: str | None = None
    hf_filename: str | None = None
    manual: str | None = None
    description: str = ""


@dataclass(frozen=True)
class Guidance:
    """Image-only intermediate results of one upsampler for one image batch and feature grid
    (see :meth:`Upsampler.prepare_guidance`); ``data`` is the method's own business."""

    method: str
    image_shape: tuple[int, ...]
    feats_hw: tuple[int, int]
    training: bool
    data: Any
    image: torch.Tensor | None = field(default=None, repr=False, compare=False)


class Upsampler(nn.Module):
    """Base class: input checks, output-size policy, freezing and the checkpoint hooks.

    Subclasses set:
        ``learned``: has trainable parameters / weights to load.
        ``resize_to_image``: whether ``output_size="image"`` resizes the native output to the
            guidance size (False only for ``identity``).
        ``pretrained``: a :class:`PretrainedWeights` or ``None`` (no official checkpoint).
    and implement :meth:`upsample`.
    """

    name: str = "?"
    learned: bool = True
    resize_to_image: bool = True
    pretrained: PretrainedWeights | None = None

    def __init__(self, dim: int = 384):
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive int (feature channels), got {dim!r}")
        self.dim = dim
        self.weights_id = "random (untrained) weights" if self.learned else "none (parameter-free)"
        self._frozen = False
        self._frozen_bn_mode = "eval"

    # -- freezing -----------------------------------------------------------------------------

    def freeze(self, bn_mode: str = "eval") -> Upsampler:
        """No gradients; ``bn_mode="eval"`` (project default) also pins eval mode for good.

        ``bn_mode="reference"`` only disables gradients, so that a later ``.train()`` puts
        BatchNorm/Dropout in train mode as the reference code does (docs/upsamplers.md).
        """
        if bn_mode not in ("eval", "reference"):
            raise ValueError(f"bn_mode must be 'eval' or 'reference', got {bn_mode!r}")
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen = True
        self._frozen_bn_mode = bn_mode
        nn.Module.train(self, False)
        return self

    @property
    def frozen(self) -> bool:
        return self._frozen

    def train(self, mode: bool = True) -> Upsampler:
        if self._frozen and self._frozen_bn_mode == "eval":
            mode = False  # a frozen upsampler never uses batch statistics or dropout
        return nn.Module.train(self, mode)

    # -- forward ------------------------------------------------------------------------------

    def forward(self, feats: torch.Tensor, image: torch.Tensor,
                output_size: str | tuple[int, int] = "image",
                guidance: Guidance | None = None) -> torch.Tensor:
        """Upsample ``feats`` guided by ``image``.

        Args:
            feats: ``(B, C, h, w)`` float low-res features, ``C == self.dim``.
            image: ``(B, 3, H, W)`` float RGB in [0, 1] (the network input; guidance).
            output_size: ``"image"`` -> ``(B, C, H, W)`` (native output resized bilinearly with
                align_corners=True when it differs); ``"native"`` -> the method's own grid
                (docs/upsamplers.md); or an explicit ``(H_out, W_out)``. ``identity`` ignores it.
            guidance: optional output of :meth:`prepare_guidance` for this ``image`` and feature
                grid: the image-only part of the computation, reused instead of recomputed
                (same result).

        Returns:
            ``(B, C, H_out, W_out)`` float features.
        """
        self.check_inputs(feats, image)
        if isinstance(output_size, str):
            if output_size not in ("image", "native"):
                raise ValueError(f"output_size must be 'image', 'native' or (H, W), "
                                 f"got {output_size!r}")
            size = tuple(image.shape[-2:]) if output_size == "image" else None
        else:
            if (not isinstance(output_size, (tuple, list)) or len(output_size) != 2
                    or not all(isinstance(s, int) and s > 0 for s in output_size)):
                raise ValueError(f"output_size must be 'image', 'native' or (H, W) positive ints, "
                                 f"got {output_size!r}")
            size = tuple(output_size)
        guide = self._usable_guidance(guidance, feats, image)
        out = self.upsample(feats, image) if guide is None else \
            self.upsample(feats, image, guidance=guide)
        if not self.resize_to_image or size is None:
            return out
        if tuple(out.shape[-2:]) != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
        return out

    def upsample(self, feats: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Method-specific: ``(B, C, h, w)`` -> ``(B, C, h', w')`` at the native grid.

        Methods that override :meth:`prepare_guidance` also accept ``guidance=`` (its ``data``).
        """
        raise NotImplementedError

    # -- image-only work, reusable across clicks ------------------------------------------------

    def prepare_guidance(self, image: torch.Tensor, feats_hw: tuple[int, int]
                         ) -> Guidance | None:
        """The part of the forward pass that depends on the image alone (not on the features).

        In interactive segmentation the image stays fixed while clicks change the features
        (early injection) or are added after them; computing this part once per image and
        passing it to :meth:`forward` as ``guidance=`` saves that work on every click and every
        training-time click round. ``None`` (the default) means the method has no such part.
        Computed without gradients: use it only while the upsampler is frozen.
        """
        return None

    def _guidance(self, image: torch.Tensor, feats_hw: tuple[int, int], data: Any) -> Guidance:
        return Guidance(self.name, tuple(image.shape), tuple(int(v) for v in feats_hw),
                        self.training, data, image=image)

    def _usable_guidance(self, guidance: Guidance | None, feats: torch.Tensor,
                         image: torch.Tensor) -> Any:
        if guidance is None:
            return None
        if not isinstance(guidance, Guidance):
            raise ValueError(  # noqa: TRY004 - bad input is a ValueError here
                f"guidance must come from {self.name}.prepare_guidance(), got "
                f"{type(guidance).__name__}")
        want = (self.name, tuple(image.shape), tuple(feats.shape[-2:]))
        have = (guidance.method, guidance.image_shape, guidance.feats_hw)
        if have != want:
            raise ValueError(f"guidance was prepared for (method, image shape, feature grid) "
                             f"{have}, this call has {want}")
        if guidance.image is not None and guidance.image is not image and \
                not torch.equal(guidance.image, image):
            raise ValueError("guidance was prepared for another image (same shape, other pixels)")
        if guidance.training != self.training:
            return None  # prepared in the other train/eval mode (BatchNorm, dropout): recompute
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            raise ValueError(f"{self.name}: guidance holds no gradients; do not reuse it while "
                             "training the upsampler itself (freeze it first)")
        return guidance.data

    def native_size(self, feats_hw: tuple[int, int], image_hw: tuple[int, int]) -> tuple[int, int]:
        """Native output grid for a given feature and image size (override where it differs)."""
        return tuple(image_hw)

    # -- input checks -------------------------------------------------------------------------

    def check_inputs(self, feats: torch.Tensor, image: torch.Tensor) -> None:
        """Clear ``ValueError`` for malformed inputs; warning for a likely double normalisation."""
        if not isinstance(feats, torch.Tensor):
            raise ValueError(  # noqa: TRY004
                f"feats must be a torch.Tensor (B, C, h, w), got {type(feats).__name__}")
        if feats.ndim != 4:
            raise ValueError(f"feats must be 4-D (B, C, h, w), got shape {tuple(feats.shape)}")
        if not feats.is_floating_point():
            raise ValueError(f"feats must be a float tensor, got {feats.dtype}")
        if feats.shape[1] != self.dim:
            raise ValueError(f"{self.name}: feats have {feats.shape[1]} channels but the upsampler "
                             f"was built for dim={self.dim} (shape {tuple(feats.shape)})")
        check_image_batch(image, "image")
        if image.shape[0] != feats.shape[0]:
            raise ValueError(f"image batch {image.shape[0]} does not match feats batch "
                             f"{feats.shape[0]}")
        (h, w), (H, W) = feats.shape[-2:], image.shape[-2:]
        if H < h or W < w:
            raise ValueError(f"guidance image {H}x{W} is smaller than the feature grid {h}x{w}; "
                             "pass the network input image (RGB in [0, 1])")
        # Token grids are floor(H/p) x floor(W/p): aspect ratios agree up to one token.
        if abs(math.log((H / h) / (W / w))) > math.log(1.5) and min(h, w) > 1:
            raise ValueError(f"guidance image {H}x{W} does not match the feature grid {h}x{w} "
                             "(aspect ratios differ); pass the image the features were computed on")
        if not torch.isfinite(feats).all():
            raise ValueError("feats contain NaN or Inf")
        if not torch.isfinite(image).all():
            raise ValueError("image contains NaN or Inf")
        if self.learned:
            lo, hi = float(image.min()), float(image.max())
            if lo < -0.05 or hi > 1.05:
                warnings.warn(
                    f"{self.name}: image values lie in [{lo:.2f}, {hi:.2f}], outside [0, 1]. "
                    "Pass RGB in [0, 1]; the upsampler normalises with ImageNet mean/std itself "
                    "(normalising twice silently degrades the output).", stacklevel=3)

    # -- checkpoints --------------------------------------------------------------------------

    def remap_official_state_dict(self, state_dict: dict[str, torch.Tensor]
                                  ) -> dict[str, torch.Tensor]:
        """Map an official checkpoint's keys to ours (default: strip ``module.`` prefixes)."""
        return strip_prefix(state_dict, "module.")


def strip_prefix(sd: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Remove ``prefix`` from every key that starts with it (others unchanged)."""
    return {(k.removeprefix(prefix)): v for k, v in sd.items()}


# --------------------------------------------------------------------------------------------
# Checkpoint loading
# --------------------------------------------------------------------------------------------

OUR_CHECKPOINT_KEYS = ("state_dict", "name", "config", "backbone", "step", "metrics")


class ForeignPickledObject:
    """Inert stand-in for a non-tensor object pickled into an official checkpoint.

    Lightning checkpoints may store hyper-parameters as omegaconf containers or an
    ``AttributeDict``. We only need the tensors, so those few names (and only those) are mapped to
    this class while unpickling: it records its arguments and state and runs none of the original
    code. Any other global in a file is refused by ``torch.load(weights_only=True)``.
    """

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = super().__new__(cls)
        obj.args = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return "<foreign pickled object (ignored)>"


# Qualified names that Lightning/omegaconf-based reference checkpoints can contain besides tensors.
FOREIGN_PICKLE_ALLOWLIST = (
    "omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata", "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode", "omegaconf.nodes.StringNode", "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode", "omegaconf.nodes.BooleanNode", "typing.Any",
    "argparse.Namespace", "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict", "lightning.fabric.utilities.data.AttributeDict",
)


def safe_torch_load(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` with only :data:`FOREIGN_PICKLE_ALLOWLIST` mapped to the
    inert :class:`ForeignPickledObject`; never falls back to full unpickling.

    Raises:
        ValueError: naming the file when it holds anything else (e.g. a code-running payload).
    """
    path = Path(path)
    allow = [(ForeignPickledObject, name) for name in FOREIGN_PICKLE_ALLOWLIST]
    try:
        with torch.serialization.safe_globals(allow):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise ValueError(
            f"refusing to load {what} {path}: it contains Python objects other than tensors and "
            f"plain containers ({detail[:300]}). probe_lib never unpickles arbitrary objects, "
            "because a pickle can run code. If you trust the file, re-save only its tensors "
            "(the state_dict) in a separate session and pass that file.") from None
    except Exception as err:  # truncated / not a torch file
        raise ValueError(f"could not read {what} {path}: {type(err).__name__}: {err}") from err


def _torch_load(path: Path) -> Any:
    return safe_torch_load(path, "upsampler weights")


def load_state_dict_strict(module: nn.Module, state_dict: dict[str, torch.Tensor],
                           source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with a readable error listing every mismatch.

    Raises:
        ValueError: naming missing keys, unexpected keys and keys whose shapes differ.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shaped = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs module {tuple(own[k].shape)}"
              for k in own if k in state_dict and hasattr(state_dict[k], "shape")
              and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shaped:

        def fmt(items: list[str]) -> str:
            if not items:
                return "none"
            more = f" ... (+{len(items) - 12} more)" if len(items) > 12 else ""
            return ", ".join(items[:12]) + more

        name = getattr(module, "name", type(module).__name__)
        hint = ""
        if shaped and hasattr(module, "dim"):
            hint = f" (module built with dim={module.dim}; does the checkpoint match that width?)"
        raise ValueError(
            f"{source} does not match upsampler {name!r}{hint}:\n"
            f"  missing keys ({len(missing)}): {fmt(missing)}\n"
            f"  unexpected keys ({len(unexpected)}): {fmt(unexpected)}\n"
            f"  mis-shaped keys ({len(shaped)}): {fmt(shaped)}")
    module.load_state_dict(state_dict, strict=True)


def is_our_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and "state_dict" in obj and "name" in obj and "config" in obj


def load_upsampler_weights(module: Upsampler, path: str | os.PathLike) -> Upsampler:
    """Load an official checkpoint or one of our training checkpoints into ``module`` (strict).

    Accepted files: our dict ``{"state_dict", "name", "config", "backbone", "step", "metrics"}``
    (:func:`save_upsampler_checkpoint`); a Lightning checkpoint (``{"state_dict": ...}``); or a
    plain state_dict. Official layouts go through ``module.remap_official_state_dict``.
    Sets ``module.weights_id`` to describe what was loaded.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"upsampler weights file not found: {path}")
    obj = _torch_load(path)
    if is_our_checkpoint(obj):
        ck_name = resolve_upsampler_name(obj["name"]) if obj["name"] in _REGISTRY or \
            obj["name"] in _ALIASES else obj["name"]
        if ck_name != module.name:
            raise ValueError(f"{path} is a {obj['name']!r} checkpoint, not {module.name!r}")
        load_state_dict_strict(module, obj["state_dict"], f"checkpoint {path}")
        module.weights_id = (f"trained {module.name} ({path.name}, step {obj.get('step')}, "
                             f"backbone: {obj.get('backbone')})")
        module.checkpoint_info = {k: obj.get(k) for k in OUR_CHECKPOINT_KEYS if k != "state_dict"}
        return module
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        sd = obj["state_dict"]
    elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    else:
        what = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: not a state_dict, a Lightning checkpoint or a probe_lib "
                         f"upsampler checkpoint (found: {what})")
    load_state_dict_strict(module, module.remap_official_state_dict(sd), f"checkpoint {path}")
    module.weights_id = f"official {module.name} checkpoint ({path.name})"
    return module


def save_upsampler_checkpoint(module: Upsampler, path: str | os.PathLike, *, config: Any = None,
                              backbone: str | None = None, step: int | None = None,
                              metrics: dict | None = None) -> Path:
    """Write our checkpoint format atomically (what :func:`load_upsampler_weights` reads).

    ``config`` may be a ``probe_lib.config.Config`` (stored via ``to_dict``) or a plain dict;
    ``backbone`` is the backbone's ``weights_id``.
    """
    from probe_lib.utils import atomic_torch_save

    if hasattr(config, "to_dict"):
        config = config.to_dict()
    obj = {"state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
           "name": module.name, "config": config or {}, "backbone": backbone, "step": step,
           "metrics": metrics or {}}
    return atomic_torch_save(obj, path)


def weights_dir() -> Path:
    """Where official checkpoints are cached: ``cache_dir()/"weights"``."""
    return cache_dir() / "weights"


def fetch_pretrained(cls: type[Upsampler]) -> Path:
    """Path to ``cls``'s official checkpoint, downloading it into :func:`weights_dir` if needed.

    Raises:
        ValueError: the method has no official checkpoint.
        FileNotFoundError: not cached and cannot be downloaded (offline or no direct link); the
            message says where to put the file.
    """
    pw = cls.pretrained
    if pw is None:
        raise ValueError(f"{cls.name!r} has no official pretrained checkpoint; use "
                         "weights='trained' (our checkpoint, notebook "
                         f"{TRAINING_NOTEBOOK.get(cls.name, '?')}), a path to a checkpoint "
                         "trained with probe_lib, or weights='random'")
    target = weights_dir() / pw.filename
    if target.is_file():
        return target
    where = (f"put the file at {target} (or pass its path as weights=...)")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if pw.hf_repo and not offline:
        try:
            from huggingface_hub import hf_hub_download

            got = Path(hf_hub_download(pw.hf_repo, pw.hf_filename or pw.filename,
                                       cache_dir=str(cache_dir() / "huggingface")))
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.link(got, target) if got.stat().st_dev == target.parent.stat().st_dev \
                    else target.write_bytes(got.read_bytes())
            return target
        except Exception as err:  # network or auth
            raise FileNotFoundError(
                f"could not download {cls.name} weights from Hugging Face {pw.hf_repo}/"
                f"{pw.hf_filename or pw.filename}: {err}\n{where}") from err
    if pw.url and not offline:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(pw.url, str(target), progress=True)
            return target
        except Exception as err:
            raise FileNotFoundError(f"could not download {cls.name} weights from {pw.url}: {err}\n"
                                    f"{where}") from err
    source = pw.url or (f"huggingface.co/{pw.hf_repo} ({pw.hf_filename or pw.filename})"
                        if pw.hf_repo else None)
    how = pw.manual or (f"download {source} on a connected machine" if source else "")
    state = "offline (HF_HUB_OFFLINE is set)" if offline and source else "no direct download"
    raise FileNotFoundError(f"{cls.name} official weights are not cached and cannot be fetched "
                            f"({state}). {how}; then {where}.")


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------

# Config fields of ``probe_lib.config.UpsamplerConfig`` that are meant for specific methods; a
# caller may pass them to any upsampler and the ones a method does not take are ignored.
_SHARED_CONFIG_KEYS = {"featup_channelnorm", "loftup_recipe", "loftup_minmax_scope",
                       "featsharp_factor", "backbone"}


def _accepted_kwargs(cls: type) -> tuple[set[str], bool]:
    params = inspect.signature(cls.__init__).parameters
    names = {n for n, p in params.items() if n != "self" and p.kind in
             (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    has_var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    return names, has_var_kw


def create_upsampler(name: str, dim: int = 384, weights: str | os.PathLike = "random",
                     trainable: bool = False, frozen_bn_mode: str = "eval",
                     **cfg: Any) -> Upsampler:
    """Build a registered upsampler.

    Args:
        name: a name from :func:`list_upsamplers` (or the alias ``jbu_featup``).
        dim: feature channels ``C`` of the backbone (384 for DINOv2 ViT-S/14).
        weights: ``"random"``, ``"pretrained"`` (official checkpoint, downloaded into
            ``cache_dir()/"weights"`` when online) or a path to an official checkpoint or to one
            of our training checkpoints. Parameter-free methods accept any of these and ignore it.
        trainable: ``False`` (default) returns a frozen module: ``requires_grad=False`` and
            (with ``frozen_bn_mode="eval"``) permanently in eval mode.
        frozen_bn_mode: ``"eval"`` (project) or ``"reference"`` (docs/upsamplers.md).
        **cfg: method settings (e.g. ``featup_channelnorm``, ``steps``, ``backbone``). Keys that
            are ``UpsamplerConfig`` fields for *other* methods are ignored; anything else the
            method does not take raises a ``ValueError``.

    Returns:
        An :class:`Upsampler` with a ``weights_id`` string naming its weights.
    """
    cls = get_upsampler_class(name)
    accepted, var_kw = _accepted_kwargs(cls)
    kwargs = {}
    for k, v in cfg.items():
        if k in accepted or var_kw:
            kwargs[k] = v
        elif k not in _SHARED_CONFIG_KEYS:
            raise ValueError(f"upsampler {cls.name!r} does not take setting {k!r}; it takes: "
                             f"{', '.join(sorted(accepted - {'dim'})) or 'no settings'}")
    module = cls(dim=dim, **kwargs)
    if cls.learned:
        if isinstance(weights, (str, os.PathLike)) and str(weights) == "pretrained":
            load_upsampler_weights(module, fetch_pretrained(cls))
        elif isinstance(weights, str) and weights == "random":
            module.weights_id = "random (untrained) weights"
        elif isinstance(weights, str) and weights == "trained":
            raise ValueError("weights='trained' needs a preset: use "
                             "load_trained_or_random(name, preset) or upsampler_from_config(cfg)")
        elif isinstance(weights, (str, os.PathLike)):
            load_upsampler_weights(module, weights)
        else:
            raise ValueError(f"weights must be 'random', 'pretrained' or a file path, "
                             f"got {weights!r}")
    elif not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights must be 'random', 'pretrained' or a file path, got {weights!r}")
    if not trainable:
        module.freeze(frozen_bn_mode)
    return module


def load_trained_or_random(name: str, preset: str, backbone: Any = None, dim: int = 384,
                           trainable: bool = False, strict: bool = False,
                           **cfg: Any) -> Upsampler:
    """Our trained ``<name>-<preset>.pt`` checkpoint if present, else random weights + a banner.

    Parameter-free methods (interpolation) are returned as is. ``backbone`` is passed through to
    methods that hold one (``featsharp``). ``strict=True`` (the ``full`` preset) raises a
    FileNotFoundError saying how to get the checkpoint instead of falling back to random weights.
    """
    from probe_lib.utils import checkpoint_path

    cls = get_upsampler_class(name)
    if backbone is not None:
        cfg["backbone"] = backbone
    if not cls.learned:
        return create_upsampler(cls.name, dim=dim, trainable=trainable, **cfg)
    path = checkpoint_path("upsampler", cls.name, preset)
    if path.is_file():
        return create_upsampler(cls.name, dim=dim, weights=path, trainable=trainable, **cfg)
    nb = TRAINING_NOTEBOOK.get(cls.name, "the upsampler training notebook")
    if strict:
        raise FileNotFoundError(
            f"{cls.name}: no trained checkpoint at {path} (upsampler.weights='trained', preset "
            f"{preset!r}); train it with notebook {nb}, or use upsampler.weights='pretrained' "
            "for the official checkpoint")
    banner(f"{cls.name}: no trained checkpoint at {path}\n"
           f"random weights — results not meaningful; run notebook {nb} to train")
    return create_upsampler(cls.name, dim=dim, weights="random", trainable=trainable, **cfg)


# Which notebook trains which method (for the banner above).
TRAINING_NOTEBOOK = {
    "lift": "03_lift_and_featup_jbu",
    "featup_jbu": "03_lift_and_featup_jbu",
    "featup_implicit": "03_lift_and_featup_jbu (fitted per image; no checkpoint needed)",
    "loftup": "06_loftup_stage1 / 07_loftup_stage2_self_distillation",
    "featsharp": "08_featsharp_training",
}


def upsampler_from_config(cfg: Any, backbone: Any = None, dim: int | None = None,
                          trainable: bool = False) -> Upsampler:
    """Build ``cfg.upsampler`` (a ``probe_lib.config.Config``): ``weights="trained"`` means our
    checkpoint for ``cfg.preset`` (missing: an error at ``full``, random + banner at ``small``);
    otherwise as :func:`create_upsampler` (``"pretrained"``: a missing official checkpoint is an
    error saying where to get it)."""
    uc = cfg.upsampler
    dim = dim or getattr(backbone, "embed_dim", None) or 384
    extra = {"featup_channelnorm": uc.featup_channelnorm, "loftup_minmax_scope":
             uc.loftup_minmax_scope, "featsharp_factor": uc.featsharp_factor}
    if backbone is not None:
        extra["backbone"] = backbone
    if uc.weights == "trained":
        return load_trained_or_random(uc.name, cfg.preset, dim=dim, trainable=trainable,
                                      strict=cfg.preset == "full",
                                      frozen_bn_mode=uc.frozen_bn_mode, **extra)
    return create_upsampler(uc.name, dim=dim, weights=uc.weights, trainable=trainable,
                            frozen_bn_mode=uc.frozen_bn_mode, **extra)
