"""Per-click cost of NoC evaluation with and without feature reuse.

For each upsampler and injection mode, a probe predicts a sequence of clicks on one image twice:
recomputing everything at every click (``probe(image, prev_mask, points)``), and reusing the
click-independent part (``cache = probe.encode_image(image)`` once, then
``probe.forward_cached(cache, ...)`` per click). What can be reused depends on the injection:
``early`` only the upsampler's image-only part (JBU kernels, LoftUp's query stem; clicks enter
before the backbone), ``late_lowres`` also the backbone output (the upsampler re-runs on clicked
tokens), ``late_highres`` backbone + upsampler output. Both paths must give the same logits; the
table reports ms per click and the speed-up.

    python benchmarks/evaluation.py                    # small: 112 px, 10 clicks, CPU
    python benchmarks/evaluation.py --size 224 --clicks 20 --device cuda

Weights do not change the cost, so learned upsamplers use random weights here (no banner
spam; nothing is evaluated). Results go to ``results_root()/benchmarks/evaluation.json``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from probe_lib.clicks import clicks_to_tensor
from probe_lib.config import make_config
from probe_lib.utils import atomic_write_json, environment_info, get_device, results_root


def _clicks(k: int, size: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    seq, out = [], []
    for i in range(k):
        r, c = torch.randint(0, size, (2,), generator=g).tolist()
        seq.append((r, c, i % 3 != 1))
        out.append(clicks_to_tensor(seq))
    return out


def bench_one(probe, image: torch.Tensor, points: list[torch.Tensor], repeats: int = 1) -> dict:
    """ms per click recomputing vs reusing the cache, and their max |logit difference|."""
    dev = image.device
    prev = torch.zeros(1, 1, *image.shape[-2:], device=dev)
    with torch.no_grad():
        probe(image, prev, points[0].to(dev))  # warm-up
        best = {"recompute": float("inf"), "reuse": float("inf")}
        diff = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            a = [probe(image, prev, p.to(dev)) for p in points]
            best["recompute"] = min(best["recompute"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            cache = probe.encode_image(image)
            b = [probe.forward_cached(cache, prev, p.to(dev)) for p in points]
            best["reuse"] = min(best["reuse"], time.perf_counter() - t0)
            diff = max(diff, max(float((x - y).abs().max()) for x, y in zip(a, b)))
    n = len(points)
    return {"ms_per_click_recompute": 1000 * best["recompute"] / n,
            "ms_per_click_reuse": 1000 * best["reuse"] / n,
            "speedup": best["recompute"] / best["reuse"], "max_abs_diff": diff}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--size", type=int, default=None, help="network input side (default: preset)")
    p.add_argument("--clicks", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--backbone", default=None, help="backbone name (default: the preset's)")
    p.add_argument("--upsamplers", nargs="*", default=["bilinear", "featup_jbu", "loftup"])
    p.add_argument("--injections", nargs="*", default=["early", "late_lowres", "late_highres"])
    p.add_argument("--device", default=None)
    a = p.parse_args(argv)

    from probe_lib.backbones import create_backbone
    from probe_lib.model import build_probe
    from probe_lib.upsamplers import create_upsampler, list_upsamplers, resolve_upsampler_name

    torch.set_num_threads(min(2, os.cpu_count() or 1)) if a.device in (None, "cpu") else None
    dev = get_device(a.device)
    base = make_config(a.preset)
    size = a.size or base.probe.image_size
    bb_name = a.backbone or base.backbone.name
    backbone = create_backbone(bb_name, weights=base.backbone.weights).to(dev)
    image = torch.rand(1, 3, size, size, device=dev)
    points = _clicks(a.clicks, size)
    rows = []
    for up_name in a.upsamplers:
        try:
            canon = resolve_upsampler_name(up_name)
        except ValueError:
            canon = None
        if canon not in list_upsamplers():
            print(f"skipping {up_name}: not registered (have {', '.join(list_upsamplers())})")
            continue
        up = create_upsampler(canon, dim=backbone.embed_dim, weights="random",
                              backbone=backbone).to(dev)
        for inj in a.injections:
            cfg = make_config(a.preset, upsampler__name=canon, injection=inj,
                              backbone__name=bb_name, probe__image_size=size)
            probe = build_probe(cfg, backbone=backbone, upsampler=up).to(dev).eval()
            r = {"upsampler": canon, "injection": inj, "size": size, "clicks": a.clicks,
                 **bench_one(probe, image, points, a.repeats)}
            rows.append(r)
            print(f"{canon:12s} {inj:13s} recompute {r['ms_per_click_recompute']:8.1f} ms/click"
                  f"  reuse {r['ms_per_click_reuse']:8.1f} ms/click  x{r['speedup']:.2f}"
                  f"  (max |diff| {r['max_abs_diff']:.1e})")
    print("\n| upsampler | injection | recompute ms/click | reuse ms/click | speed-up |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['upsampler']} | {r['injection']} | {r['ms_per_click_recompute']:.1f} | "
              f"{r['ms_per_click_reuse']:.1f} | {r['speedup']:.2f}x |")
    out = results_root() / "benchmarks" / "evaluation.json"
    atomic_write_json({"rows": rows, "device": str(dev), "backbone": backbone.weights_id,
                       "environment": environment_info()}, out)
    print(f"saved {out}")
    return rows


if __name__ == "__main__":
    main()
