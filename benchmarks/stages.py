"""Time per stage of a sweep (``make small``): upsampler training, each probe's training and
evaluation, the aggregation, and the total, read from what the sweep recorded.

    python benchmarks/stages.py [RESULTS_ROOT] [--preset small] [--out benchmarks/results/stages.md]

Reads ``<root>/sweep-<preset>.json`` (statuses and seconds of every step, written by
``probe_lib.sweep``) and each run's ``<root>/<run>/run.json`` (training and evaluation seconds).
Wall-clock seconds of the run that produced them: with ``--jobs 2`` two stages run side by side,
so the stages add up to more than the total.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path


def stage_rows(root: Path, preset: str) -> tuple[list[tuple[str, str, float | None]], float]:
    """``(stage, what, seconds)`` rows and the sweep's total seconds."""
    path = root / f"sweep-{preset}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `python -m probe_lib.sweep --preset "
                                f"{preset}` first (or pass its results root)")
    sweep = json.loads(path.read_text())
    rows = []
    for st in sweep["runs"]:
        name = st["run"]
        if name.startswith("upsampler-"):
            rows.append((name, f"train the upsampler ({st['status']})", st.get("seconds")))
        elif name == "aggregate":
            rows.append(("aggregate", "results table and plots", st.get("seconds")))
        else:
            meta = root / name / "run.json"
            secs = json.loads(meta.read_text()).get("seconds", {}) if meta.is_file() else {}
            rows.append((name, "train the probe", secs.get("train")))
            rows.append((name, "NoC evaluation", secs.get("evaluate")))
    return rows, float(sweep.get("total_seconds", 0.0))


def to_markdown(rows, total: float, preset: str) -> str:
    machine = (f"Machine: {platform.processor() or platform.machine()}, Python "
               f"{platform.python_version()}. Wall-clock seconds; with two jobs side by side "
               "the stages overlap.")
    lines = [f"# Time per stage of the `{preset}` sweep", "", machine, "",
             "| stage | what | seconds |", "|---|---|---|"]
    for stage, what, secs in rows:
        lines.append(f"| {stage} | {what} | {'—' if secs is None else f'{secs:.0f}'} |")
    lines.append(f"| **total** | whole sweep | **{total:.0f}** ({total / 60:.1f} min) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="?", default=None, help="sweep results root (default: results/)")
    p.add_argument("--preset", default="small")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "stages.md"))
    a = p.parse_args(argv)
    from probe_lib.utils import results_root

    root = Path(a.root) if a.root else results_root()
    rows, total = stage_rows(root, a.preset)
    text = to_markdown(rows, total, a.preset)
    Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
