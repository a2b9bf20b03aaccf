"""Where backbone weights come from: local files (timm or torch.hub layout) and the public caches.

Every route is explicit: timm models are built with ``pretrained=False`` and the state_dict is
loaded here, so the code says which file was read and a failure says how to get the weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils import cache_dir

# Keys a checkpoint may carry that the feature extractor does not use.
_UNUSED_KEYS = ("mask_token",)  # DINOv2 torch.hub: the iBOT mask token (timm drops it too)
_UNUSED_PREFIXES = ("head.", "fc_norm.")  # classifier / projection heads (num_classes=0 here)
_WRAPPER_KEYS = ("state_dict", "model", "teacher", "module")


def hf_offline() -> bool:
    """True when Hugging Face offline mode is requested (read at call time, not import time)."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def hf_cache_dirs() -> list[Path]:
    """Hugging Face hub caches searched for timm weights: ours first, then HF's default."""
    default = os.environ.get("HF_HUB_CACHE")
    if not default:
        hf_home = os.environ.get("HF_HOME")
        if not hf_home:
            xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
            hf_home = str(Path(xdg) / "huggingface")
        default = str(Path(hf_home) / "hub")
    dirs = [cache_dir() / "hf", Path(default).expanduser()]
    return list(dict.fromkeys(dirs))


def torch_hub_checkpoint_dirs() -> list[Path]:
    """Folders searched for the official torch.hub ``*_pretrain.pth`` files."""
    dirs = [cache_dir() / "weights", Path(torch.hub.get_dir()) / "checkpoints"]
    return list(dict.fromkeys(dirs))


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (``.safetensors``, ``.pth``/``.pt``/``.bin``) into a flat state_dict.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` containers (our own training checkpoints
    and most public ones). Raises FileNotFoundError / ValueError naming the file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"could not read backbone weights from {path}: {e}") from e
    for _ in range(3):
        if isinstance(obj, dict):
            inner = next((obj[k] for k in _WRAPPER_KEYS
                          if k in obj and isinstance(obj[k], dict)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state_dict of tensors (got {type(obj).__name__})")
    return obj


def to_timm_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a ViT state_dict in timm or official DINOv2 torch.hub layout to timm keys.

    The two layouts share key names for ViT-S/B/L; the hub file adds ``mask_token``.
    Prefixes ``module.`` (DDP), ``backbone.`` and ``vit.`` (our :class:`Backbone`) are stripped;
    classifier heads are dropped.
    """
    out = {}
    for k, v in state_dict.items():
        for prefix in ("module.", "backbone.", "vit."):
            k = k.removeprefix(prefix)
        if k in _UNUSED_KEYS or k.startswith(_UNUSED_PREFIXES):
            continue
        out[k] = v
    return out


def strict_load(module: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)``; one error lists missing, unexpected, mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or shapes:
        def _fmt(items):
            return ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")

        raise ValueError(
            f"checkpoint does not match {what}: "
            f"missing keys [{_fmt(missing)}]; unexpected keys [{_fmt(unexpected)}]; "
            f"mis-shaped [{_fmt(shapes)}]")
    module.load_state_dict(state_dict, strict=True)


def find_cached_pretrained(hf_hub_id: str | None, hub_filename: str | None) -> Path | None:
    """A locally cached copy of the pretrained weights, or None (never touches the network)."""
    if hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for d in hf_cache_dirs():
            if not d.is_dir():
                continue
            for fname in ("model.safetensors", "pytorch_model.bin"):
                try:
                    hit = try_to_load_from_cache(hf_hub_id, fname, cache_dir=str(d))
                except Exception:  # noqa: BLE001 - a broken cache entry is just a miss
                    hit = None
                if isinstance(hit, str) and Path(hit).is_file():
                    return Path(hit)
    if hub_filename:
        for d in torch_hub_checkpoint_dirs():
            if (d / hub_filename).is_file():
                return d / hub_filename
    return None


def download_pretrained(hf_hub_id: str | None, hub_url: str | None) -> Path:
    """Download pretrained weights into ``cache_dir()``: Hugging Face first, then torch.hub URL."""
    errors = []
    if hf_hub_id:
        try:
            from huggingface_hub import hf_hub_download

            for fname in ("model.safetensors", "pytorch_model.bin"):
                try:
                    local = hf_hub_download(hf_hub_id, fname, cache_dir=str(cache_dir() / "hf"))
                    return Path(local)
                except Exception as e:  # noqa: BLE001 - try the next file / route
                    errors.append(f"huggingface {hf_hub_id}/{fname}: {type(e).__name__}: {e}")
        except ImportError as e:  # pragma: no cover
            errors.append(f"huggingface_hub unavailable: {e}")
    if hub_url:
        dest = cache_dir() / "weights" / hub_url.rsplit("/", 1)[-1]
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        try:
            torch.hub.download_url_to_file(hub_url, str(tmp), progress=True)
            os.replace(tmp, dest)
            return dest
        except Exception as e:  # noqa: BLE001
            errors.append(f"{hub_url}: {type(e).__name__}: {e}")
            if tmp.exists():
                tmp.unlink()
    raise OSError("; ".join(errors) or "no download route known")


def how_to_get_pretrained(name: str, hf_hub_id: str | None, hub_url: str | None) -> str:
    """The instructions printed when pretrained weights are unavailable."""
    lines = [f"Pretrained weights for backbone {name!r} are not available on this machine."]
    lines.append("Ways to get them:")
    if hf_hub_id:
        lines.append(
            f"  1. On a connected machine run (with the same PROBE_LIB_CACHE):\n"
            f"       python -c \"from probe_lib.backbones import create_backbone; "
            f"create_backbone('{name}', weights='pretrained')\"\n"
            f"     which downloads https://huggingface.co/{hf_hub_id} into "
            f"{cache_dir() / 'hf'} (or unset HF_HUB_OFFLINE here if you are online).")
        lines.append(
            f"  2. Copy a Hugging Face cache that holds {hf_hub_id} into one of: "
            + ", ".join(str(d) for d in hf_cache_dirs()) + ".")
    if hub_url:
        fname = hub_url.rsplit("/", 1)[-1]
        lines.append(
            f"  3. Download {hub_url} and put {fname} into one of: "
            + ", ".join(str(d) for d in torch_hub_checkpoint_dirs())
            + f", or pass weights='/path/to/{fname}'.")
    else:
        lines.append("  3. Pass weights='/path/to/checkpoint' (timm key layout).")
    return "\n".join(lines)
