"""Probe training throughput: images/s for early vs late injection per upsampler, and where the
time of one training step goes (backbone, upsampler, head + click encoder).

    python benchmarks/training.py                          # small: 112 px, batch 8, lean head, CPU
    python benchmarks/training.py --preset full --device cuda   # 224 px, paper head

One *step* = encode the batch (frozen backbone [+ upsampler]) + the gradient forward/backward of
the trainable parts + Adam, without the iterative-click rounds; those add on average 1.5 no-grad
forwards per step (num_iters ~ U{0..3}), reported as ``step+clicks``. With ``early`` injection the
backbone runs *with* autograd (gradients reach the click tokens through all ViT blocks) and is
re-run in every click round (only the upsampler's image-only part is reused); with the late modes
it runs once per batch without autograd and is reused by the click rounds (as ``probe_lib.train``
does).

Learned upsamplers are timed with the frozen upsampler in float32 and as a bf16 copy
(``probe.upsampler_precision``; the ``small`` preset's ``auto`` picks bf16 where a self-benchmark
finds it >= 1.5x faster and accurate); ``× fp32`` is the bf16 row's speed-up of ``step + clicks``.

Weights do not change the cost: the backbone and learned upsamplers use random weights here.
Writes ``benchmarks/results/training.md`` and ``results_root()/benchmarks/training.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from probe_lib.clicks import MultiPointSampler
from probe_lib.config import make_config
from probe_lib.utils import (
    atomic_write_json,
    atomic_write_text,
    environment_info,
    get_device,
    results_root,
)

DEFAULT_UPSAMPLERS = ("identity", "bilinear", "lift", "featup_jbu", "loftup")


def _timed(fn, repeats: int, sync) -> float:
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _batch(b: int, size: int, device):
    import numpy as np

    g = torch.Generator().manual_seed(0)
    image = torch.rand(b, 3, size, size, generator=g)
    objects = np.zeros((size, size), np.int32)
    objects[size // 4: 3 * size // 4, size // 3: 2 * size // 3] = 1
    sampler = MultiPointSampler()
    rng = np.random.default_rng(0)
    pts, gts = zip(*(sampler(objects, rng) for _ in range(b)))
    points = torch.from_numpy(np.stack(pts))
    gt = torch.from_numpy(np.stack(gts))
    return image.to(device), torch.zeros_like(gt).to(device), points.to(device), gt.to(device)


def bench(probe, b: int, size: int, device, repeats: int) -> dict[str, float]:
    """Seconds for the parts of one training step and the whole step."""
    from probe_lib.losses import NormalizedFocalLoss

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    image, prev, points, gt = _batch(b, size, device)
    loss_fn = NormalizedFocalLoss()
    opt = torch.optim.Adam(probe.trainable_parameters(), lr=1e-5)
    probe.train()
    out: dict[str, float] = {}
    with torch.no_grad():
        feats = probe.backbone(image)
        out["backbone_fwd"] = _timed(lambda: probe.backbone(image), repeats, sync)
        out["upsampler_fwd"] = _timed(lambda: probe._upsample(feats, image), repeats, sync)
        hr = probe._upsample(feats, image)
    if probe.channels_last:
        hr = hr.contiguous(memory_format=torch.channels_last)

    def head_step():
        probe.head(hr).sum().backward()

    out["head_fwd_bwd"] = _timed(head_step, repeats, sync)

    def step():
        cache = probe.encode_image(image)
        logits = probe.forward_cached(cache, prev, points)
        loss = loss_fn(logits, gt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return cache

    step()  # warm-up
    out["step"] = _timed(step, repeats, sync)
    cache = probe.encode_image(image)
    probe.eval()

    def click_round():  # as probe_lib.train: the cache of the step's batch is reused
        with torch.no_grad():
            probe.forward_cached(cache, prev, points)

    out["click_round"] = _timed(click_round, repeats, sync)
    probe.train()
    out["step+clicks"] = out["step"] + 1.5 * out["click_round"]
    out["images_per_s"] = b / out["step+clicks"]
    out["load_average"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--device", default=None)
    p.add_argument("--upsamplers", nargs="*", default=None)
    p.add_argument("--injections", nargs="*", default=["early", "late_lowres", "late_highres"])
    p.add_argument("--precisions", nargs="*", default=["fp32", "bf16"],
                   help="frozen-upsampler precisions for learned upsamplers (fp32 only for "
                        "parameter-free ones)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "training.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1)) if args.device in (None, "cpu") else None

    from probe_lib.backbones import create_backbone
    from probe_lib.model import build_probe
    from probe_lib.upsamplers import create_upsampler, list_upsamplers

    device = get_device(args.device)
    cfg0 = make_config(args.preset)
    size, b = cfg0.probe.image_size, args.batch or cfg0.train.batch_size
    backbone = create_backbone(cfg0.backbone.name, weights="random", verbose=False).to(device)
    names = args.upsamplers or [n for n in DEFAULT_UPSAMPLERS if n in list_upsamplers()]
    rows = []
    for name in names:
        up = create_upsampler(name, dim=backbone.embed_dim, weights="random",
                              backbone=backbone).to(device)
        learned = any(True for _ in up.parameters())
        for inj in args.injections:
            if name == "identity" and inj == "late_lowres":
                continue  # identical to late_highres for identity
            for prec in (args.precisions if learned else ["fp32"]):
                cfg = make_config(args.preset, upsampler__name=name, injection=inj,
                                  probe__upsampler_precision=prec)
                torch.manual_seed(0)
                probe = build_probe(cfg, backbone=backbone, upsampler=up).to(device)
                r = bench(probe, b, size, device, args.repeats)
                row = {"upsampler": name, "injection": inj, "precision": prec,
                       **{k: round(v, 4) for k, v in r.items()}}
                ref = [x for x in rows if x["upsampler"] == name and x["injection"] == inj
                       and x["precision"] == "fp32"]
                if prec != "fp32" and ref:
                    row["speedup_vs_fp32"] = round(ref[0]["step+clicks"] / r["step+clicks"], 2)
                rows.append(row)
                print(rows[-1], flush=True)
                _write(rows, args, cfg0, size, b, device)
    print(f"wrote {args.out}")
    return 0


def _write(rows: list[dict], args, cfg0, size: int, b: int, device) -> None:
    """Table (markdown) and JSON of the rows so far."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    info = {"preset": args.preset, "size": size, "batch": b, "device": str(device),
            "head": cfg0.probe.head, "threads": torch.get_num_threads(), "load_average": load,
            "environment": environment_info(), "rows": rows}
    atomic_write_json(info, results_root() / "benchmarks" / "training.json")
    lines = [
        (f"# Probe training throughput ({args.preset}: {size} px, batch {b}, head "
        f"`{cfg0.probe.head}`, {device}, {torch.get_num_threads()} threads)"),
        "",
        ("Seconds per batch (best of "
        f"{args.repeats}). `step` = encode + gradient forward/backward + Adam; `click round` = one "
        "no-grad iterative-click forward (1.5 per step on average); images/s from "
        "`step + 1.5 × click round`. Backbone/upsampler/head columns time the parts alone."),
        (f"Machine load average at the end of the run: {load:.1f}; per row in the last column "
        "(a shared 2-core CPU: absolute numbers are noisy, compare rows of similar load)."),
        "",
        ("| upsampler | injection | precision | backbone fwd | upsampler fwd | head fwd+bwd | step "
         "| click round | images/s | × fp32 | load |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['speedup_vs_fp32']:.2f}" if "speedup_vs_fp32" in r else ""
        lines.append(f"| {r['upsampler']} | {r['injection']} | {r.get('precision', 'fp32')} | "
                     f"{r['backbone_fwd']:.3f} | "
                     f"{r['upsampler_fwd']:.3f} | {r['head_fwd_bwd']:.3f} | {r['step']:.3f} | "
                     f"{r['click_round']:.3f} | {r['images_per_s']:.2f} | {ratio} | "
                     f"{r.get('load_average', float('nan')):.1f} |")
    atomic_write_text("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    raise SystemExit(main())
