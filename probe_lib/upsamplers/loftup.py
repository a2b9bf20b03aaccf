"""LoftUp (arXiv 2504.14032): coordinate + colour Fourier queries that cross-attend
to the low-res backbone tokens. Laid out so that the official checkpoint
``haiwen/loftup-dinov2s/pytorch_model.bin`` loads with ``strict=True`` unchanged.

* ``LoftUpNet`` (the wrapper's ``.upsampler``): Fourier queries -> 3x3 conv stem -> 2
  cross-attention blocks over the low-res tokens (+ sine PE) -> 1x1 conv -> channel LayerNorm.
* ``LoftUp`` (registered as ``"loftup"``): ``.channelnorm`` on the input features, ImageNet
  normalisation of the guidance image, checkpoint handling.

Memory: the reference computes attention with explicit weights (heads x H*W x h*w floats, ~3.3 GB
for 32x32 -> 448x448). Here the high-res map is processed in bands of rows (the 3x3 stem gets a
2-row halo so the result is exact) and each band's queries in chunks through
``F.scaled_dot_product_attention``, so peak memory is the output plus one band, linear in H*W.

Speed: with few low-res tokens (heads x h*w < width + h*w, e.g. 8x8 tokens at 112 px) the query
and output projections are folded into per-image key/value matrices (:meth:`CrossAttention.fold`),
which is fewer multiply-adds per high-res pixel than projecting every query; exact up to float
rounding, and the scores then take heads x h*w floats per pixel, about one more activation.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .base import (
    ChannelNorm,
    PretrainedWeights,
    Upsampler,
    fourier_features,
    imagenet_normalize,
    register_upsampler,
)


class ChannelLayerNorm(nn.Module):
    """Channel LayerNorm with its own ``weight``/``bias`` (no ``.norm`` level), as LoftUp's final
    layer has them; eps 1e-6 in the released model (docs/loftup_featsharp.md)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def coordinate_grid(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(2, H, W) grid in [-1, 1]; channel 0 = row, channel 1 = column (meshgrid 'ij')."""
    rows = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    cols = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"))


def minmax_scale(image: torch.Tensor, scope: Literal["batch", "sample"] = "batch") -> torch.Tensor:
    """Per-channel min-max scaling to [-0.5, 0.5] as LoftUp's queries use it.

    ``scope="batch"`` takes min/max over the whole batch and all pixels (the reference; outputs then
    depend on the batch composition, docs/loftup_featsharp.md); ``"sample"`` per image.
    """
    if scope == "batch":
        dims = (0, 2, 3)
    elif scope == "sample":
        dims = (2, 3)
    else:
        raise ValueError(f"minmax_scope must be 'batch' or 'sample', got {scope!r}")
    lo = image.amin(dim=dims, keepdim=True)
    hi = image.amax(dim=dims, keepdim=True)
    return (image - lo) / (hi - lo).clamp_min(1e-4) - 0.5


class FourierFeatures(nn.Module):
    """sin/cos Fourier features with learned phases.

    Input x (B, D, H, W); frequencies f_k = exp(linspace(-2, 10, K)); flat channel j = k*D + d
    carries x_d * f_k. Phases ``biases`` (2, D, K) are used through a *raw* reshape to (K*D,)
    (not a transpose; this is how the released weights were trained). Output
    [sin(x f + b0) (K*D), cos(x f + b1) (K*D), x[:, n_coords:] (appended colour, if any)].
    """

    def __init__(self, in_dim: int, num_freqs: int, append_from: int | None = None):
        super().__init__()
        self.in_dim = in_dim
        self.num_freqs = num_freqs
        self.append_from = append_from
        self.biases = nn.Parameter(torch.randn(2, in_dim, num_freqs))

    @property
    def freqs(self) -> torch.Tensor:
        """(K,) float32 multipliers, made on the fly: they must not be lowered with the module."""
        return torch.exp(torch.linspace(-2.0, 10.0, self.num_freqs,
                                        device=self.biases.device))

    @property
    def out_dim(self) -> int:
        extra = 0 if self.append_from is None else self.in_dim - self.append_from
        return 2 * self.in_dim * self.num_freqs + extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, D, H, W) -> (B, out_dim, H, W) in the dtype of x (arguments in float32)."""
        out = fourier_features(x, self.freqs, self.biases)
        if self.append_from is not None:
            out = torch.cat([out, x[:, self.append_from:]], dim=1)
        return out


class _Identity(nn.Module):
    # Placeholder at index 0 of ``fourier_feat`` so the phases sit at ``fourier_feat.1``.
    def forward(self, x):
        return x


class CrossAttention(nn.Module):
    """Pre-norm cross-attention: ``q + MHA(norm_q(q), norm_kv(kv), norm_kv(kv))``.

    ``attention`` is a real ``nn.MultiheadAttention`` (packed q/k/v ``in_proj``), so its parameters
    carry the official names; the default path reads those weights and runs
    ``scaled_dot_product_attention`` on query chunks, never holding a full weights matrix.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, dropout=0.0, bias=True)
        self.num_heads = num_heads

    def project_kv(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """kv (B, N, D) -> per-head keys and values (B, heads, N, D/heads)."""
        d = kv.shape[-1]
        w, bias = self.attention.in_proj_weight, self.attention.in_proj_bias
        kvn = self.norm_kv(kv)
        k = F.linear(kvn, w[d:2 * d], bias[d:2 * d])
        v = F.linear(kvn, w[2 * d:], bias[2 * d:])
        return self._heads(k), self._heads(v)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, M, D) raw queries; k, v from :meth:`project_kv`. Returns q + attention (B, M, D)."""
        d = q.shape[-1]
        w, bias = self.attention.in_proj_weight, self.attention.in_proj_bias
        qh = self._heads(F.linear(self.norm_q(q), w[:d], bias[:d]))
        out = F.scaled_dot_product_attention(qh, k, v)
        out = out.transpose(1, 2).reshape(q.shape)
        return q + self.attention.out_proj(out)

    def fold(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fold the query and output projections into the keys and values of ``kv`` (B, N, D).

        Per head h: ``scale * (x Wq_h + bq_h) k_h^T = x (scale Wq_h k_h^T) + scale bq_h k_h^T`` and
        ``sum_h P_h v_h Wo_h = [P_1 .. P_H] [v_1 Wo_1; ..; v_H Wo_H]``. Returns
        ``A`` (B, D, heads*N), ``c`` (B, 1, heads*N) and ``Vo`` (B, heads*N, D) for
        :meth:`forward_folded`.
        """
        b, n, d = kv.shape
        heads = self.num_heads
        dh = d // heads
        k, v = self.project_kv(kv)  # (B, heads, N, dh)
        w, bias = self.attention.in_proj_weight, self.attention.in_proj_bias
        scale = dh ** -0.5
        a = torch.einsum("hed,bhne->bdhn", w[:d].view(heads, dh, d), k) * scale
        c = torch.einsum("he,bhne->bhn", bias[:d].view(heads, dh), k) * scale
        vo = torch.einsum("bhne,ohe->bhno", v, self.attention.out_proj.weight.view(d, heads, dh))
        return a.reshape(b, d, heads * n), c.reshape(b, 1, heads * n), vo.reshape(b, heads * n, d)

    def forward_folded(self, q: torch.Tensor, folded) -> torch.Tensor:
        """Same as :meth:`forward` with ``folded = self.fold(kv)``; q (B, M, D) contiguous."""
        a, c, vo = folded
        scores = torch.baddbmm(c, self.norm_q(q), a)  # (B, M, heads*N)
        b, m, hn = scores.shape
        p = scores.view(b, m, self.num_heads, hn // self.num_heads).softmax(-1).view(b, m, hn)
        return torch.baddbmm(q, p, vo) + self.attention.out_proj.bias

    def forward_explicit(self, q: torch.Tensor, kv: torch.Tensor) -> tuple[torch.Tensor,
                                                                             torch.Tensor]:
        """Reference path: nn.MultiheadAttention with explicit weights (sequence-first).

        Returns (q + attention (B, M, D), weights (B, heads, M, N)). Memory grows with M*N.
        """
        kvn = self.norm_kv(kv).transpose(0, 1)
        out, weights = self.attention(self.norm_q(q).transpose(0, 1), kvn, kvn,
                                      need_weights=True, average_attn_weights=False)
        return q + out.transpose(0, 1), weights


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(),
                                 nn.Dropout(0.0), nn.Linear(hidden, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class CATransformer(nn.Module):
    """``layers.i.0`` = cross-attention, ``layers.i.1`` = feed-forward, then ``norm``."""

    def __init__(self, dim: int, depth: int, num_heads: int, hidden: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([CrossAttention(dim, num_heads), FeedForward(dim, hidden)])
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)


class LoftUpNet(nn.Module):
    """LoftUp: high-res queries from coordinates + colour cross-attend to low-res tokens.

    Args:
        dim: feature channels C (384 for DINOv2-S/14).
        num_freqs: Fourier frequencies of the query encoding (20).
        num_heads, depth: cross-attention heads (4) and blocks (2).
        lr_pe_freqs: frequencies of the low-res sine PE (5).
        minmax_scope: ``"batch"`` (reference) or ``"sample"`` (see :func:`minmax_scale`).
        query_chunk: queries per attention call; memory per call is heads x chunk x h*w.
        row_band: high-res rows processed at once (``None`` = all); bounds the stem's memory.

    Attribute ``attention_path``: ``"auto"`` (default: ``"folded"`` when
    heads x h*w < width + h*w, fewer multiply-adds per pixel, else ``"sdpa"``), ``"folded"``
    (:meth:`CrossAttention.forward_folded`) or ``"sdpa"`` (chunked
    ``F.scaled_dot_product_attention``). All three give the same result up to float rounding.
    """

    ATTENTION_PATHS = ("auto", "folded", "sdpa")

    def __init__(self, dim: int = 384, num_freqs: int = 20, num_heads: int = 4, depth: int = 2,
                 lr_pe_freqs: int = 5, minmax_scope: str = "batch", query_chunk: int = 4096,
                 row_band: int | None = 64):
        super().__init__()
        if minmax_scope not in ("batch", "sample"):
            raise ValueError(f"minmax_scope must be 'batch' or 'sample', got {minmax_scope!r}")
        self.dim = dim
        self.minmax_scope = minmax_scope
        self.query_chunk = int(query_chunk)
        self.row_band = row_band
        self.attention_path = "auto"
        n_pe = 2 * 2 * lr_pe_freqs
        width = dim + n_pe
        if width % num_heads:
            raise ValueError(f"dim + 4*lr_pe_freqs = {width} must be divisible by "
                             f"num_heads={num_heads}")
        self.lr_pe = FourierFeatures(2, lr_pe_freqs)
        self.fourier_feat = nn.Sequential(_Identity(), FourierFeatures(5, num_freqs,
                                                                       append_from=2))
        q_in = self.fourier_feat[1].out_dim
        self.first_conv = nn.Sequential(
            ChannelNorm(q_in),
            nn.Conv2d(q_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.ca_transformer = CATransformer(width, depth, num_heads, dim)
        self.final_conv = nn.Sequential(nn.Conv2d(width, dim, 1), ChannelLayerNorm(dim, eps=1e-6))

    # ----------------------------------------------------------------------------------------
    def keys_values(self, lr_feats: torch.Tensor) -> torch.Tensor:
        """lr_feats (B, C, h, w) -> tokens (B, h*w, C + PE) row-major."""
        b, _, h, w = lr_feats.shape
        pe = self.lr_pe(coordinate_grid(h, w, lr_feats.device).unsqueeze(0)).to(lr_feats.dtype)
        kv = torch.cat([lr_feats, pe.expand(b, -1, -1, -1)], dim=1)
        return kv.flatten(2).transpose(1, 2)

    def query_inputs(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) -> [row, col, scaled r, g, b] (B, 5, H, W), always float32 (the
        Fourier features multiply them by up to e^10)."""
        b, _, h, w = image.shape
        grid = coordinate_grid(h, w, image.device).unsqueeze(0).expand(b, -1, -1, -1)
        return torch.cat([grid, minmax_scale(image.float(), self.minmax_scope)], dim=1)

    def _stem(self, inputs: torch.Tensor) -> torch.Tensor:
        ff = self.fourier_feat(inputs)  # float32
        return self.first_conv(ff.to(self.first_conv[1].weight.dtype))

    def _tokens_out(self, q: torch.Tensor, kvs, explicit_kv=None) -> torch.Tensor:
        """q (B, M, width) stem tokens -> (B, M, dim) output tokens (the transformer, then
        ``final_conv`` as a per-token linear map and LayerNorm). ``kvs``: :meth:`_attention_inputs`."""
        folded = kvs is not None and kvs[0] == "folded"
        for i, (attn, ff) in enumerate(self.ca_transformer.layers):
            if explicit_kv is not None:
                q, _ = attn.forward_explicit(q, explicit_kv)
            elif folded:
                q = attn.forward_folded(q, kvs[1][i])
            else:
                chunks = [attn(qc, *kvs[1][i]) for qc in q.split(self.query_chunk, dim=1)]
                q = torch.cat(chunks, dim=1) if len(chunks) > 1 else chunks[0]
            q = ff(q)
        q = self.ca_transformer.norm(q)
        conv, norm = self.final_conv
        q = F.linear(q, conv.weight.flatten(1), conv.bias)  # the 1x1 conv
        return F.layer_norm(q, (q.shape[-1],), norm.weight, norm.bias, norm.eps)

    def _attention_inputs(self, kv: torch.Tensor):
        n, width = kv.shape[1:]
        path = self.attention_path
        if path not in self.ATTENTION_PATHS:
            raise ValueError(f"attention_path must be one of {self.ATTENTION_PATHS}, got {path!r}")
        if path == "auto":
            heads = self.ca_transformer.layers[0][0].num_heads
            path = "folded" if heads * n < width + n else "sdpa"
        layers = [layer[0] for layer in self.ca_transformer.layers]
        if path == "folded":
            return path, [attn.fold(kv) for attn in layers]
        return path, [attn.project_kv(kv) for attn in layers]

    def _band(self, hh: int) -> int:
        # Bands of rows bound memory in eval mode. Two 3x3 convs see 2 rows each way, so a 2-row
        # halo keeps interior rows exact; BatchNorm must then be per-pixel affine (eval mode),
        # hence whole images in training mode.
        return hh if (self.row_band is None or self.training) else max(1, int(self.row_band))

    def _stem_rows(self, inputs: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """Stem output rows r0:r1, computed on those rows plus the 2-row halo the convs need."""
        hh = inputs.shape[-2]
        a0, a1 = max(0, r0 - 2), min(hh, r1 + 2)
        return self._stem(inputs[:, :, a0:a1])[:, :, r0 - a0:r1 - a0]

    def stem(self, image: torch.Tensor) -> torch.Tensor:
        """The query stem (Fourier features -> ``first_conv``) for the whole image,
        (B, C + PE, H, W); it depends on the image only, so it can be reused across features."""
        inputs = self.query_inputs(image)
        hh = inputs.shape[-2]
        band = self._band(hh)
        cl = torch.channels_last  # pixels as rows of channels: the transformer's token layout
        if band >= hh:
            return self._stem(inputs).contiguous(memory_format=cl)
        out = None
        for r0 in range(0, hh, band):
            r1 = min(hh, r0 + band)
            x = self._stem_rows(inputs, r0, r1)
            if out is None:
                out = x.new_empty(*x.shape[:2], hh, x.shape[-1]).contiguous(memory_format=cl)
            out[:, :, r0:r1] = x
        return out

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor,
                explicit: bool = False, stem: torch.Tensor | None = None) -> torch.Tensor:
        """lr_feats (B, C, h, w) (already ChannelNorm-ed), image (B, 3, H, W) (any affine colour
        normalisation: the min-max scaling removes it). Returns (B, C, H, W).

        ``explicit=True`` runs the unchunked reference path (nn.MultiheadAttention with explicit
        weights); memory then grows with H*W*h*w. ``stem``: :meth:`stem` of ``image`` when
        already computed (the explicit path ignores it).
        """
        b, _, hh, ww = image.shape
        kv = self.keys_values(lr_feats)
        if explicit:
            x = self._stem(self.query_inputs(image))
            q = self._tokens_out(x.flatten(2).transpose(1, 2), None, explicit_kv=kv)
            return q.transpose(1, 2).reshape(b, -1, hh, ww)
        kvs = self._attention_inputs(kv)
        inputs = self.query_inputs(image) if stem is None else None
        band = self._band(hh)
        out = None  # output tokens (B, H*W, C), row-major: a band of rows is a slice of tokens
        for r0 in range(0, hh, band):
            r1 = min(hh, r0 + band)
            if stem is not None:
                x = stem[:, :, r0:r1]
            elif band >= hh:
                x = self._stem(inputs)
            else:
                x = self._stem_rows(inputs, r0, r1)
            y = self._tokens_out(x.flatten(2).transpose(1, 2).contiguous(), kvs)
            if band >= hh:
                out = y
                break
            if out is None:
                out = y.new_empty(b, hh * ww, y.shape[-1])
            out[:, r0 * ww:r1 * ww] = y
        # (B, H*W, C) -> (B, C, H, W) as a view: the result is channels-last in memory
        return out.view(b, hh, ww, -1).permute(0, 3, 1, 2)

    def attention_map(self, lr_feats: torch.Tensor, image: torch.Tensor, row: int, col: int,
                      layer: int = 0) -> torch.Tensor:
        """Attention weights of one high-res pixel (row, col) over the low-res grid.

        Returns (B, heads, h, w) (softmax weights; each head sums to 1) of cross-attention block
        ``layer``. Only the needed image rows are run through the stem (plus a 2-row halo).
        """
        b, _, hh, ww = image.shape
        h, w = lr_feats.shape[-2:]
        if not (0 <= row < hh and 0 <= col < ww):
            raise ValueError(f"(row, col)=({row}, {col}) outside the image of size {hh}x{ww}")
        kv = self.keys_values(lr_feats)
        inputs = self.query_inputs(image)
        x = self._stem_rows(inputs, row, row + 1)[:, :, 0, col]
        q = x.unsqueeze(1)
        for i, (attn, ff) in enumerate(self.ca_transformer.layers):
            q_new, weights = attn.forward_explicit(q, kv)
            if i == layer:
                return weights.reshape(b, -1, h, w)
            q = ff(q_new)
        raise ValueError(f"layer must be < {len(self.ca_transformer.layers)}, got {layer}")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def explicit_attention_bytes(num_heads: int, out_hw: int, lr_hw: int, batch: int = 1) -> int:
    """Bytes of the float32 weights matrix the explicit path materialises per attention call."""
    return 4 * batch * num_heads * out_hw * lr_hw


# --------------------------------------------------------------------------------------------
# Registered wrapper
# --------------------------------------------------------------------------------------------


def remap_loftup_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official LoftUp layouts -> our wrapper keys (``channelnorm.norm.*``, ``upsampler.*``).

    * HF ``pytorch_model.bin``: already wrapper keys (``module.`` prefixes stripped).
    * iSegProbe / training Lightning ``state_dict``: ``upsampler.*`` kept, ``model.1.norm.*``
      -> ``channelnorm.norm.*``; the frozen backbone copy (``model.0.*``) and training-only heads
      (downsampler, scale net, EMA teacher, ...) are dropped.
    Anything else is passed through so that the strict loader reports it.
    """
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if any(k.startswith("model.1.norm.") for k in sd):
        out = {}
        for k, v in sd.items():
            if k.startswith("upsampler."):
                out[k] = v
            elif k.startswith("model.1.norm."):
                out["channelnorm.norm." + k.removeprefix("model.1.norm.")] = v
        return out
    return sd


@register_upsampler("loftup")
class LoftUp(Upsampler):
    """``out = LoftUpNet(ChannelNorm(feats), normalised image)`` at the guidance size (any H x W).

    Args:
        dim: feature channels C (384 for DINOv2-S/14; the official checkpoint needs 384).
        minmax_scope / loftup_minmax_scope: ``"batch"`` (reference: colour min/max over the whole
            batch, so outputs depend on batch composition) or ``"sample"``.
        query_chunk: queries per ``scaled_dot_product_attention`` call (memory per call is
            heads x chunk x h*w floats).
        row_band: high-res rows run through the stem at once in eval mode (``None`` = all).
        num_freqs, num_heads, depth, lr_pe_freqs: architecture (official: 20, 4, 2, 5).

    Attributes ``channelnorm`` (ChannelNorm(C), eps 1e-5) and ``upsampler`` (:class:`LoftUpNet`)
    are what training code (stage 1/2) works with.
    """

    pretrained = PretrainedWeights(
        filename="loftup-dinov2s-pytorch_model.bin", hf_repo="haiwen/loftup-dinov2s",
        hf_filename="pytorch_model.bin",
        manual=("download pytorch_model.bin from huggingface.co/haiwen/loftup-dinov2s (or the "
                "iSegProbe Lightning checkpoint, Google Drive id 1Sse4gq2dCSNT-rnTVja7pG9ogIGfT0Ue)"),
        description="LoftUp for DINOv2-S/14 (stage 2, self-distilled), wrapper keys")

    # lowered to bf16 (probe_lib.upsamplers.precision), it still takes the float32 image: the
    # colour Fourier features multiply pixel values by up to e^10
    float32_image = True

    def __init__(self, dim: int = 384, minmax_scope: str | None = None,
                 loftup_minmax_scope: str = "batch", query_chunk: int = 4096,
                 row_band: int | None = 64, num_freqs: int = 20, num_heads: int = 4,
                 depth: int = 2, lr_pe_freqs: int = 5):
        super().__init__(dim)
        scope = minmax_scope or loftup_minmax_scope
        if scope not in ("batch", "sample"):
            raise ValueError(f"minmax_scope must be 'batch' or 'sample', got {scope!r}")
        if not isinstance(query_chunk, int) or query_chunk <= 0:
            raise ValueError(f"query_chunk must be a positive int, got {query_chunk!r}")
        if row_band is not None and (not isinstance(row_band, int) or row_band <= 0):
            raise ValueError(f"row_band must be a positive int or None, got {row_band!r}")
        self.channelnorm = ChannelNorm(dim)
        self.upsampler = LoftUpNet(dim, num_freqs=num_freqs, num_heads=num_heads, depth=depth,
                                   lr_pe_freqs=lr_pe_freqs, minmax_scope=scope,
                                   query_chunk=query_chunk, row_band=row_band)

    @property
    def minmax_scope(self) -> str:
        return self.upsampler.minmax_scope

    def upsample(self, feats: torch.Tensor, image: torch.Tensor,
                 guidance: torch.Tensor | None = None) -> torch.Tensor:
        return self.upsampler(self.channelnorm(feats), imagenet_normalize(image), stem=guidance)

    def prepare_guidance(self, image, feats_hw):
        """The query stem (Fourier features and two 3x3 convs at full resolution, about half of
        the forward cost) depends on the image only. With ``minmax_scope="batch"`` it also
        depends on the batch composition, so it is valid for exactly this ``image`` batch."""
        with torch.no_grad():
            return self._guidance(image, feats_hw, self.upsampler.stem(imagenet_normalize(image)))

    def forward(self, feats: torch.Tensor, image: torch.Tensor,
                output_size: str | tuple[int, int] = "image",
                guidance=None) -> torch.Tensor:
        """feats (B, C, h, w), image (B, 3, H, W) RGB in [0, 1] -> (B, C, H, W).

        LoftUp's native grid is the guidance size, so ``"image"`` and ``"native"`` agree; an
        explicit ``(H_out, W_out)`` resizes the *guidance* (bilinear, align_corners=False) and
        evaluates the queries there instead of resizing features afterwards.
        """
        if isinstance(output_size, (tuple, list)) and len(output_size) == 2 and all(
                isinstance(s, int) and s > 0 for s in output_size) and \
                tuple(output_size) != tuple(image.shape[-2:]):
            if guidance is not None:
                raise ValueError("guidance cannot be combined with an explicit output_size "
                                 "(the guidance image is resized); prepare it at that size")
            self.check_inputs(feats, image)
            image = F.interpolate(image, size=tuple(output_size), mode="bilinear",
                                  align_corners=False)
            return self.upsample(feats, image)
        return super().forward(feats, image, output_size, guidance=guidance)

    def forward_explicit(self, feats: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Unchunked reference path (explicit attention weights; memory ~ H*W*h*w)."""
        self.check_inputs(feats, image)
        return self.upsampler(self.channelnorm(feats), imagenet_normalize(image), explicit=True)

    def attention_map(self, feats: torch.Tensor, image: torch.Tensor, row: int, col: int,
                      layer: int = 0) -> torch.Tensor:
        """(B, heads, h, w) attention of guidance pixel (row, col) over the low-res grid."""
        self.check_inputs(feats, image)
        return self.upsampler.attention_map(self.channelnorm(feats), imagenet_normalize(image),
                                            row, col, layer)

    def remap_official_state_dict(self, state_dict):
        return remap_loftup_state_dict(state_dict)


__all__ = [
    "ChannelLayerNorm",
    "FourierFeatures",
    "LoftUp",
    "LoftUpNet",
    "coordinate_grid",
    "count_parameters",
    "explicit_attention_bytes",
    "minmax_scale",
    "remap_loftup_state_dict",
]
