"""Cost of every registered upsampler beside the backbone and bilinear, in one run.

For each output side S (224, 448 and 896 where it fits) the upsampler gets features on the
(S/14) x (S/14) token grid of a DINOv2 ViT-S/14 and an S x S guidance image, and returns S x S
features (``output_size="image"``). Goal rows add the project's targets: FeatUp-JBU 16x16 -> 256x256
(its native output) and LoftUp 32x32 -> 448x448.

Every measurement runs in its own subprocess so that memory numbers do not leak between methods:
    time   median wall time of ``--repeats`` forward passes after one warm-up pass, batch 1,
           ``torch.no_grad()``, ``--threads`` intra-op threads (CPU) or synchronised (CUDA);
    memory peak resident-set growth (CPU) of the warm-up forward over the process's resident
           set just before it (inputs and weights excluded), taken as the larger of
           ``getrusage`` peak RSS growth and a 2 ms RSS sampler; on CUDA,
           ``max_memory_allocated`` growth. tracemalloc would miss torch's allocations.
A size is skipped when the memory extrapolated linearly from the previous size exceeds
``--mem-limit`` GB; the table says so.

Usage:  python benchmarks/upsamplers.py [--sizes 224 448 896] [--threads 2] [--repeats 3]
Writes ``benchmarks/results/upsamplers.md`` (+ ``.json``) and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
PATCH = 14
IMPLICIT_STEPS = 5  # featup_implicit fits per image: timed for a short fit, stated in the table


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _maxrss() -> int:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * (1 if sys.platform == "darwin" else 1024)


def _build(name: str, device, dim: int = 384):
    import torch

    from probe_lib.upsamplers import create_upsampler, get_upsampler_class

    if name == "backbone":
        from probe_lib.backbones import create_backbone

        bb = create_backbone("dinov2_vits14", weights="random").to(device)
        return bb, sum(p.numel() for p in bb.parameters())
    cls = get_upsampler_class(name)
    cfg = {}
    import inspect

    params = inspect.signature(cls.__init__).parameters
    if name == "featup_implicit":
        cfg.update(steps=IMPLICIT_STEPS, n_views=1)
    elif "backbone" in params:
        from probe_lib.backbones import create_backbone

        cfg["backbone"] = create_backbone("dinov2_vits14", weights="random").to(device)
    up = create_upsampler(name, dim=dim, **cfg).to(device)
    n = sum(p.numel() for p in up.parameters())
    torch.manual_seed(0)
    return up, n


def worker(name: str, feat_side: int, image_side: int, output: str, threads: int,
           repeats: int, device_name: str) -> dict:
    """Measure one (method, size) in this process; returns a JSON-able dict."""
    import torch

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    model, nparams = _build(name, device)
    image = torch.rand(1, 3, image_side, image_side, device=device)
    feats = torch.randn(1, 384, feat_side, feat_side, device=device)

    def run():
        if name == "backbone":
            return model(image)
        return model(feats, image, output_size=output)

    cuda = device.type == "cuda"
    peak = [0]
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    with torch.no_grad():
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = _rss()
            maxrss_before = _maxrss()
            th = threading.Thread(target=sampler, daemon=True)
            th.start()
        t0 = time.perf_counter()
        out = run()
        if cuda:
            torch.cuda.synchronize()
        first = time.perf_counter() - t0
        if cuda:
            mem = torch.cuda.max_memory_allocated() - base
        else:
            stop.set()
            th.join()
            grew = _maxrss() - maxrss_before if _maxrss() > maxrss_before else 0
            mem = max(peak[0] - base, _maxrss() - base if grew else 0, 0)
        shape = tuple(out.shape)
        del out
        times, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    times.sort()
    cpu.sort()
    return {"name": name, "feat_side": feat_side, "image_side": image_side, "output": output,
            "params": nparams if isinstance(nparams, int) else None, "weights": str(nparams)
            if not isinstance(nparams, int) else None, "first_s": first,
            "time_s": times[len(times) // 2] if times else first,
            "cpu_s": cpu[len(cpu) // 2] if cpu else None, "peak_mb": mem / 2 ** 20,
            "out_shape": shape}


def measure(name: str, feat_side: int, image_side: int, output: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, str(feat_side),
           str(image_side), output, "--threads", str(args.threads), "--repeats",
           str(args.repeats), "--device", args.device]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                             check=False)
    except subprocess.TimeoutExpired:
        return {"name": name, "image_side": image_side, "error": f"timeout > {args.timeout}s"}
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["?"])[-1]
        return {"name": name, "image_side": image_side, "error": tail[:120]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _fmt_t(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 10 else f"{s:.1f} s"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 896])
    p.add_argument("--methods", nargs="+", default=None, help="default: every registered one")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None, help="default: cuda if available else cpu")
    p.add_argument("--mem-limit", type=float, default=4.0, help="GB; skip sizes predicted above")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    p.add_argument("--out", default=str(HERE / "results" / "upsamplers.md"))
    p.add_argument("--worker", nargs=4, metavar=("NAME", "FEAT", "IMAGE", "OUTPUT"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        name, feat, img, output = args.worker
        print(json.dumps(worker(name, int(feat), int(img), output, args.threads, args.repeats,
                                args.device)))
        return 0

    from probe_lib.upsamplers import list_upsamplers

    methods = args.methods or list_upsamplers()
    for s in args.sizes:
        if s % PATCH:
            p.error(f"--sizes must be multiples of {PATCH}, got {s}")
    load0 = os.getloadavg()
    t_start = time.time()
    rows: dict[str, dict[int, dict]] = {}
    for name in ["backbone", *methods]:
        rows[name] = {}
        prev = None
        for s in sorted(args.sizes):
            if name == "featup_implicit" and s > min(args.sizes):
                rows[name][s] = {"error": "skipped (per-image fit; timed at the smallest size)"}
                continue
            if prev and "peak_mb" in prev:
                predicted = prev["peak_mb"] * (s / prev["image_side"]) ** 2 / 1024
                if predicted > args.mem_limit:
                    rows[name][s] = {"error": f"skipped: ~{predicted:.1f} GB predicted "
                                              f"> --mem-limit {args.mem_limit} GB"}
                    continue
            r = measure(name, s // PATCH, s, "image", args)
            rows[name][s] = r
            prev = r
            print(f"{name:16s} {s:4d}: " + (r.get("error") or
                  f"{_fmt_t(r['time_s'])}, {r['peak_mb']:.0f} MB"), flush=True)
    goals = [("featup_jbu", 16, 224, "native", "FeatUp-JBU 16x16 -> 256x256 (native)",
              1.5, 1024), ("loftup", 32, 448, "image", "LoftUp 32x32 -> 448x448", None, 2048)]
    goal_rows = []
    for name, f, img, out, label, t_goal, m_goal in goals:
        if name in methods:
            r = measure(name, f, img, out, args)
            goal_rows.append((label, r, t_goal, m_goal))
            print(label, r.get("error") or f"{_fmt_t(r['time_s'])}, {r['peak_mb']:.0f} MB")
    load1 = os.getloadavg()
    md = render(rows, goal_rows, args, load0, load1, time.time() - t_start)
    out = Path(args.out)
    from probe_lib.utils import atomic_write_json, atomic_write_text, environment_info

    atomic_write_text(md, out)
    atomic_write_json({"rows": rows, "goals": [(g[0], g[1]) for g in goal_rows],
                       "args": {**vars(args), "out": out.name}, "loadavg": [load0, load1],
                       "env": environment_info()}, out.with_suffix(".json"))
    print(md)
    return 0


def render(rows, goal_rows, args, load0, load1, elapsed) -> str:
    sizes = sorted(args.sizes)
    head = ["method", "params"]
    for s in sizes:
        head += [f"{s}² wall", f"{s}² CPU", "× backbone", "× bilinear", f"{s}² peak MB"]
    if len(sizes) > 1:
        head += [f"mem ×({sizes[1]}/{sizes[0]})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, per in rows.items():
        label = name + (f" ({IMPLICIT_STEPS} fit steps)" if name == "featup_implicit" else "")
        label = "**backbone** ViT-S/14" if name == "backbone" else f"`{label}`"
        first = next((r for r in per.values() if "params" in r), {})
        cells = [label, f"{first.get('params'):,}" if first.get("params") is not None else
                 "—"]
        for s in sizes:
            r = per.get(s, {})
            if "error" in r or not r:
                cells += [r.get("error", "—"), "", "", "", ""]
                continue
            bb, bl = rows["backbone"].get(s, {}), rows.get("bilinear", {}).get(s, {})
            # ratios use CPU time: steadier than wall time when other jobs share the machine
            key = "cpu_s" if r.get("cpu_s") and bb.get("cpu_s") else "time_s"
            cells += [_fmt_t(r["time_s"]), _fmt_t(r["cpu_s"]) if r.get("cpu_s") else "—",
                      f"{r[key] / bb[key]:.2f}" if bb.get(key) else "—",
                      f"{r[key] / bl[key]:.0f}" if bl.get(key) else "—",
                      f"{r['peak_mb']:.0f}"]
        if len(sizes) > 1:
            a, b = per.get(sizes[0], {}), per.get(sizes[1], {})
            ratio = (f"{b['peak_mb'] / a['peak_mb']:.1f}" if "peak_mb" in a and "peak_mb" in b
                     and a["peak_mb"] > 1 else "—")
            cells.append(ratio)
        lines.append("| " + " | ".join(cells) + " |")
    dev = args.device
    intro = (f"Upsampler cost, batch 1, fp32, {dev}, {args.threads} threads, median of "
             f"{args.repeats} after a warm-up; features on the S/14 token grid (C = 384), "
             "output S × S. Wall = elapsed time; CPU = process CPU time summed over threads "
             "(ratios use CPU time, which a busy shared machine inflates less). Peak MB = resident-memory growth of one forward (CPU) or CUDA "
             "allocator peak growth; pixels grow 4× per size step, so linear memory shows "
             "as ≈ 4 in the last column.")
    text = [intro, "", *lines, ""]
    if goal_rows:
        text += ["Goals (the project's targets for this CPU):", "",
                 "| case | wall | CPU | peak MB | goal | met (wall) |",
                 "|---|---|---|---|---|---|"]
        for label, r, t_goal, m_goal in goal_rows:
            if "error" in r:
                text.append(f"| {label} | {r['error']} | | | |")
                continue
            goal = (f"< {t_goal} s and " if t_goal else "") + f"< {m_goal} MB"
            met = (t_goal is None or r["time_s"] < t_goal) and r["peak_mb"] < m_goal
            cpu_t = _fmt_t(r["cpu_s"]) if r.get("cpu_s") else "—"
            text.append(f"| {label} | {_fmt_t(r['time_s'])} | {cpu_t} | {r['peak_mb']:.0f} | "
                        f"{goal} | {'yes' if met else 'no'} |")
        text.append("")
    text.append(f"Load average (1/5/15 min) at start {tuple(round(x, 1) for x in load0)}, end "
                f"{tuple(round(x, 1) for x in load1)} on {os.cpu_count()} cores; total "
                f"{elapsed / 60:.1f} min. Times on a shared machine are upper bounds.")
    return "\n".join(text) + "\n"


if __name__ == "__main__":
    sys.exit(main())
