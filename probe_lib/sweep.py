"""Batch runs: train and evaluate a grid of probes with papermill, then aggregate.

``python -m probe_lib.sweep --preset small`` (the README's ``make small``):

1. makes sure the learned upsamplers of the grid have a trained checkpoint
   (``checkpoint_path("upsampler", name, preset)``); when one is missing it executes the notebook
   that trains it (03 for LiFT / FeatUp-JBU, 06 + 07 for LoftUp, 08 for FeatSharp);
2. for every grid cell executes ``09_is_probe_training`` then ``10_noc_evaluation`` with the cell's
   parameters; executed notebooks, metrics and per-instance IoU curves go to
   ``results_root()/<run>/``;
3. executes ``11_results``, which writes ``results_root()/summary.md`` (+ CSV and plots).

A finished run (``run.json`` with status ``done`` and the same config hash) is skipped on rerun; a
run folder written with another configuration is left untouched and reported (``--force``
replaces it: the old folder is moved to ``<root>/.force-backup/`` and deleted only after the rerun
succeeded; a failed rerun puts it back); a failed run is recorded and reported without stopping
the others. The exit code is 1 when any run failed.

``--jobs N`` runs N notebooks at a time (independent upsampler trainings, then grid cells, the
costliest first), each kernel with ``cpu_count // N`` torch threads. On the 2-core CPU two
one-thread kernels beat one two-thread kernel: small CPU workloads do not scale to 2 threads
(a training step is ~1.6x, not 2x, slower on one thread) and start-up work overlaps. The CLI
default ``auto`` is 2 on a CPU with at least 2 cores and 1 with a GPU. Per-click times in the
results are then measured with the other job running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from probe_lib.utils import (
    atomic_write_json,
    cache_dir,
    checkpoint_path,
    data_root,
    results_root,
    run_name,
)

TRAIN_NOTEBOOK = "09_is_probe_training"
EVAL_NOTEBOOK = "10_noc_evaluation"
RESULTS_NOTEBOOK = "11_results"
# Which notebook(s) train each learned upsampler at a preset (in this order).
UPSAMPLER_NOTEBOOKS = {
    "lift": ("03_lift_and_featup_jbu",),
    "featup_jbu": ("03_lift_and_featup_jbu",),
    "loftup": ("06_loftup_stage1", "07_loftup_stage2_self_distillation"),
    "featsharp": ("08_featsharp_training",),
}
PARAMETER_FREE = ("identity", "nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Run:
    """One grid cell: which frozen upsampler, which click encoder, where clicks are injected."""

    upsampler: str
    click_encoder: str
    injection: str

    def name(self, preset: str) -> str:
        # the same folder notebook 10 writes to by default (one rule: probe_lib.utils.run_name)
        return run_name(preset, self.upsampler, self.click_encoder, self.injection)


# The paper's pairings: patch embedding with early injection, SimpleViT with late injection (a
# patch-embedding token only sees the clicks inside its own patch, so late patch-embedding probes
# cannot spread a click beyond it). With the frozen-feature cache SimpleViT fits the CPU budget.
SMALL_UPSAMPLERS = ("bilinear", "featup_jbu", "loftup")
SMALL_LATE_EPOCHS = 8
GRIDS: dict[str, tuple[Run, ...]] = {
    "small": tuple([Run(u, "patch_embed", "early") for u in SMALL_UPSAMPLERS]
                   + [Run(u, "simple_vit", "late_highres") for u in SMALL_UPSAMPLERS]),
    # The paper's grid (README) plus the paper-text late mode.
    "full": tuple([Run(u, "patch_embed", "early")
                   for u in ("identity", "bilinear", "lift", "featup_jbu", "loftup", "featsharp")]
                  + [Run(u, "simple_vit", inj)
                     for u in ("identity", "bilinear", "lift", "featup_jbu", "loftup",
                               "featsharp")
                     for inj in ("late_lowres", "late_highres")]),
}


def notebooks_dir() -> Path:
    """The repository's ``notebooks/`` folder (the package is installed editable)."""
    here = Path(__file__).resolve().parents[1] / "notebooks"
    if not here.is_dir():
        raise FileNotFoundError(f"notebooks folder not found at {here}; run the sweep from a "
                                "source checkout (pip install -e .)")
    return here


#: matplotlib backend for papermill kernels: figures become image/png outputs.
KERNEL_MPLBACKEND = "module://matplotlib_inline.backend_inline"


def run_parameters(preset: str, run: Run, run_dir: Path, extra: dict | None = None
                   ) -> dict[str, dict]:
    """Papermill parameters of the training and evaluation notebooks for one run."""
    common = {"PRESET": preset, "UPSAMPLER": run.upsampler, "CLICK_ENCODER": run.click_encoder,
              "INJECTION": run.injection}
    # the flat-shapes rung of notebook 09's sanity ladder trains a second probe: not per grid cell
    train = dict(common, LADDER_RUNG1=False)
    if preset == "small" and run.injection.startswith("late"):
        # cached frozen features make a late step cheap: 8 passes over the crop bank, not 2
        train["EPOCHS"] = SMALL_LATE_EPOCHS
    evaluate = dict(common, OUT_DIR=str(run_dir))
    for k, v in (extra or {}).items():
        evaluate[k] = v
    return {"train": train, "evaluate": evaluate}


def config_hash(obj: dict) -> str:
    from probe_lib.evaluate import config_hash as _h

    return _h(obj)


def _execute(stem: str, out_path: Path, parameters: dict, log) -> float:
    import papermill

    src = notebooks_dir() / f"{stem}.ipynb"
    if not src.is_file():
        raise FileNotFoundError(f"notebook {src} not found")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log(f"  running {stem} {parameters}")
    papermill.execute_notebook(str(src), str(out_path), parameters=parameters,
                               cwd=str(notebooks_dir()), kernel_name="python3",
                               progress_bar=False, log_output=False)
    return time.perf_counter() - t0


def _error_message(e: BaseException) -> str:
    # papermill's error text carries the failing cell's traceback; keep its last lines
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return " ".join(lines[-3:])[:500] if lines else type(e).__name__


def ensure_upsampler_checkpoints(preset: str, upsamplers, out_root: Path, log,
                                 jobs: int = 1) -> list[dict]:
    """Train (via their notebooks) the learned upsamplers whose checkpoint is missing.

    Each upsampler's notebooks run in order (LoftUp: 06 then 07); different upsamplers'
    notebooks are independent and run ``jobs`` at a time. A notebook shared by two upsamplers
    (03 trains LiFT and FeatUp-JBU) runs once.
    """
    status: dict[str, dict] = {}
    chains: dict[tuple[str, ...], list[str]] = {}  # notebooks -> upsamplers they train
    for up in dict.fromkeys(upsamplers):
        if up in PARAMETER_FREE:
            continue
        ckpt = checkpoint_path("upsampler", up, preset)
        if ckpt.is_file():
            log(f"upsampler {up}: using {ckpt}")
            status[up] = {"run": f"upsampler-{up}", "status": "skipped", "seconds": 0.0,
                          "message": f"checkpoint exists ({ckpt.name})"}
            continue
        chains.setdefault(UPSAMPLER_NOTEBOOKS.get(up, ()), []).append(up)

    def train(stems: tuple[str, ...]) -> dict[str, dict]:
        t0 = time.perf_counter()
        out = {}
        try:
            for stem in stems:
                _execute(stem, out_root / "upsamplers" / f"{stem}.ipynb", {"PRESET": preset}, log)
            error = None
        except Exception as e:  # noqa: BLE001 - reported, the sweep goes on with random weights
            error = _error_message(e)
        for up in chains[stems]:
            seconds = time.perf_counter() - t0
            if error is not None:
                out[up] = {"run": f"upsampler-{up}", "status": "failed", "seconds": seconds,
                           "message": "upsampler training failed, probes use RANDOM weights: "
                                      + error}
                log(f"upsampler {up}: FAILED ({error})")
                continue
            ok = checkpoint_path("upsampler", up, preset).is_file()
            msg = (f"trained by {', '.join(stems)}" if ok else
                   f"no checkpoint after {', '.join(stems) or 'no notebook'}: the probe uses "
                   "RANDOM upsampler weights (see the summary's weights column)")
            out[up] = {"run": f"upsampler-{up}", "status": "done" if ok else "missing",
                       "seconds": seconds, "message": msg}
            log(f"upsampler {up}: {msg}")
        return out

    for result in _map(train, list(chains), jobs):
        status.update(result)
    return [status[up] for up in dict.fromkeys(upsamplers) if up in status]


def _map(fn, items: list, jobs: int) -> list:
    """``[fn(x) for x in items]``, ``jobs`` at a time (threads: each item waits on a notebook
    kernel, a separate process), results in the order of ``items``."""
    if jobs <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(fn, items))


_COST = {"identity": 0, "nearest": 0, "bilinear": 0, "bicubic": 0, "lift": 1}


def _expected_cost(run: Run) -> tuple[int, int]:
    """Order for parallel runs, costliest first: learned upsamplers with the upsampler in the
    gradient path (early / late_lowres) take longest."""
    return (_COST.get(run.upsampler, 2), int(run.injection != "late_highres"))


def run_one(preset: str, run: Run, root: Path, *, force: bool = False, extra: dict | None = None,
            log=print) -> dict:
    """Train + evaluate one grid cell; returns its status dict (never raises on a failed run)."""
    name = run.name(preset)
    run_dir = root / name
    params = run_parameters(preset, run, run_dir, extra)
    # the run folder's path is not part of the identity of a configuration
    ident = {"preset": preset, "run": asdict(run),
             "train": params["train"], "evaluate": {k: v for k, v in params["evaluate"].items()
                                                    if k != "OUT_DIR"}}
    h = config_hash(ident)
    meta_path = run_dir / "run.json"
    backup = force_backup_dir(root, name)
    if backup.exists():  # an earlier --force rerun was killed before it finished
        if run_dir.exists():
            shutil.rmtree(run_dir)
        os.replace(backup, run_dir)
        log(f"{name}: restored the results kept aside by an interrupted --force rerun")
    moved_aside = False
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("config_hash") != h and not force:
            msg = (f"{run_dir} holds results of another configuration (hash "
                   f"{old.get('config_hash')!r}, this run {h!r}); left untouched — delete the "
                   "folder or pass --force to replace it")
            log(f"{name}: STALE: {msg}")
            return {"run": name, "status": "stale", "seconds": 0.0, "message": msg}
        if old.get("config_hash") == h and old.get("status") == "done" and not force:
            log(f"{name}: already done, skipped")
            return {"run": name, "status": "skipped", "seconds": old.get("total_seconds", 0.0),
                    "message": "finished earlier (same config hash)"}
    if force and run_dir.exists():
        # keep the old results until the rerun has succeeded
        backup.parent.mkdir(parents=True, exist_ok=True)
        os.replace(run_dir, backup)
        moved_aside = True
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = {"run": name, "config_hash": h, "identity": ident, "status": "running",
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": {}}
    atomic_write_json(doc, meta_path)
    t0 = time.perf_counter()
    try:
        doc["seconds"]["train"] = _execute(TRAIN_NOTEBOOK, run_dir / f"{TRAIN_NOTEBOOK}.ipynb",
                                           params["train"], log)
        doc["seconds"]["evaluate"] = _execute(EVAL_NOTEBOOK, run_dir / f"{EVAL_NOTEBOOK}.ipynb",
                                              params["evaluate"], log)
        doc["status"], msg = "done", ""
    except Exception as e:  # noqa: BLE001 - one failed run must not stop the others
        doc["status"], msg = "failed", _error_message(e)
        doc["error"] = traceback.format_exc()[-4000:]
        log(f"{name}: FAILED: {msg}")
    doc["total_seconds"] = time.perf_counter() - t0
    if moved_aside and doc["status"] != "done":
        # the rerun failed: put the old results back, keep the failed attempt's report beside
        failed = root / f"{name}.force-failed.json"
        atomic_write_json(doc, failed)
        shutil.rmtree(run_dir)
        os.replace(backup, run_dir)
        msg += f" (--force rerun failed: previous results restored in {run_dir}; report {failed})"
        log(f"{name}: previous results restored")
        return {"run": name, "status": "failed", "seconds": doc["total_seconds"], "message": msg}
    atomic_write_json(doc, meta_path)
    if moved_aside:
        shutil.rmtree(backup)
    return {"run": name, "status": doc["status"], "seconds": doc["total_seconds"],
            "message": msg}


def force_backup_dir(root: Path, name: str) -> Path:
    """Where ``--force`` keeps a run's previous folder until the rerun succeeds (outside the
    ``<root>/*/`` pattern that the results table reads)."""
    return root / ".force-backup" / name


def select_runs(preset: str, only: list[str] | None = None) -> list[Run]:
    """The runs of ``preset``'s grid that ``only`` names (run or upsampler names; None or empty =
    all). A name that matches no run raises a ValueError listing the valid names: a typo must
    not silently run a subset."""
    grid = GRIDS[preset]
    if not only:
        return list(grid)
    valid = [r.name(preset) for r in grid] + list(dict.fromkeys(r.upsampler for r in grid))
    unknown = [n for n in only if n not in valid]
    if unknown:
        raise ValueError(f"--only {' '.join(unknown)}: no such run or upsampler in the "
                         f"{preset} grid; valid names: {', '.join(valid)}")
    return [r for r in grid if r.name(preset) in only or r.upsampler in only]


def default_jobs() -> int:
    """``--jobs auto``: 2 on a CPU-only machine with >= 2 cores, else 1."""
    import torch

    return 1 if torch.cuda.is_available() or (os.cpu_count() or 1) < 2 else 2


def sweep(preset: str = "small", *, root: Path | None = None, only: list[str] | None = None,
          force: bool = False, aggregate: bool = True, train_upsamplers: bool = True,
          extra: dict | None = None, jobs: int = 1, log=print) -> list[dict]:
    """Run the grid of ``preset``; returns one status dict per step (see module docstring).

    ``jobs``: notebooks run at a time (each kernel gets ``cpu_count // jobs`` torch threads).
    """
    if preset not in GRIDS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(GRIDS)}")
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    select_runs(preset, only)  # names checked before anything is touched
    saved = {k: os.environ.get(k) for k in ("PROBE_LIB_RESULTS", "PROBE_LIB_DATA",
                                            "PROBE_LIB_CACHE", "HF_HUB_OFFLINE", "MPLBACKEND",
                                            "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        if jobs > 1:  # the kernels inherit these: share the cores instead of oversubscribing
            threads = str(max(1, (os.cpu_count() or 1) // jobs))
            os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads
        return _sweep(preset, root=root, only=only, force=force, aggregate=aggregate,
                      train_upsamplers=train_upsamplers, extra=extra, jobs=jobs, log=log)
    finally:  # the notebooks' kernels inherit these; the caller's process gets its own back
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _sweep(preset, *, root, only, force, aggregate, train_upsamplers, extra, jobs, log
           ) -> list[dict]:
    # notebooks run in their own folder: make every location absolute first
    for var, where in (("PROBE_LIB_RESULTS", results_root), ("PROBE_LIB_DATA", data_root),
                       ("PROBE_LIB_CACHE", cache_dir)):
        os.environ[var] = str(where().resolve())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # the kernels draw inline so executed notebooks keep their figures (ipykernel only picks
    # the inline backend itself when MPLBACKEND is unset; an inherited "Agg" drops them all)
    os.environ["MPLBACKEND"] = KERNEL_MPLBACKEND
    root = Path(root).resolve() if root else results_root().resolve()
    os.environ["PROBE_LIB_RESULTS"] = str(root)
    root.mkdir(parents=True, exist_ok=True)
    runs = select_runs(preset, only)
    t0 = time.perf_counter()
    status: list[dict] = []
    if train_upsamplers:
        status += ensure_upsampler_checkpoints(preset, [r.upsampler for r in runs], root, log,
                                               jobs=jobs)
    order = sorted(runs, key=_expected_cost, reverse=True) if jobs > 1 else runs

    def one(run: Run) -> dict:
        log(f"[{order.index(run) + 1}/{len(runs)}] {run.name(preset)}")
        st = run_one(preset, run, root, force=force, extra=extra, log=log)
        if jobs > 1:
            log(f"{st['run']}: {st['status']} ({st['seconds']:.0f} s)")
        return st

    by_run = dict(zip(order, _map(one, order, jobs), strict=True))
    status += [by_run[r] for r in runs]  # grid order
    if aggregate:
        t1 = time.perf_counter()
        # the aggregation notebook reads the statuses (and the total) from this file
        atomic_write_json({"preset": preset, "runs": status,
                           "seconds_so_far": time.perf_counter() - t0},
                          root / f"sweep-{preset}.json")
        try:
            _execute(RESULTS_NOTEBOOK, root / f"{RESULTS_NOTEBOOK}-{preset}.ipynb",
                     {"PRESET": preset}, log)
            status.append({"run": "aggregate", "status": "done",
                           "seconds": time.perf_counter() - t1, "message": "summary.md written"})
        except Exception as e:  # noqa: BLE001
            status.append({"run": "aggregate", "status": "failed",
                           "seconds": time.perf_counter() - t1, "message": _error_message(e)})
    total = time.perf_counter() - t0
    atomic_write_json({"preset": preset, "runs": status, "total_seconds": total},
                      root / f"sweep-{preset}.json")
    log(f"sweep {preset}: {total / 60:.1f} min; "
        + ", ".join(f"{s['run']}={s['status']}" for s in status))
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m probe_lib.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", choices=sorted(GRIDS))
    p.add_argument("--results", default=None, help="results folder (default $PROBE_LIB_RESULTS, "
                   "else results/ of the source checkout, else ./results)")
    p.add_argument("--only", nargs="*", default=None,
                   help="run names or upsampler names to run (default: the whole grid)")
    p.add_argument("--force", action="store_true",
                   help="rerun finished runs and replace folders of other configurations (the old "
                        "folder is kept aside and restored if the rerun fails)")
    p.add_argument("--no-upsampler-training", action="store_true",
                   help="do not run notebooks 03/06/07/08 for missing upsampler checkpoints "
                        "(probes then use random upsampler weights, marked in the summary)")
    p.add_argument("--eval-instances", type=int, default=None,
                   help="evaluate only this many instances per dataset (a quick smoke run; part "
                        "of the run's config hash)")
    p.add_argument("--jobs", default="auto",
                   help="notebooks run at a time: a number or 'auto' (2 on a CPU with >= 2 "
                        "cores, 1 with a GPU)")
    p.add_argument("--list", action="store_true", help="print the grid and exit")
    a = p.parse_args(argv)
    if a.jobs == "auto":
        jobs = default_jobs()
    else:
        try:
            jobs = int(a.jobs)
        except ValueError:
            p.error(f"--jobs must be a positive number or 'auto', got {a.jobs!r}")
        if jobs < 1:
            p.error(f"--jobs must be a positive number or 'auto', got {a.jobs!r}")
    if a.list:
        for r in GRIDS[a.preset]:
            print(r.name(a.preset))
        return 0
    if a.eval_instances is not None and a.eval_instances < 1:
        p.error(f"--eval-instances must be >= 1 (leave it out to evaluate every instance), got "
                f"{a.eval_instances}")
    try:
        select_runs(a.preset, a.only)
    except ValueError as e:
        p.error(str(e))
    extra = {"NUM_INSTANCES": a.eval_instances} if a.eval_instances is not None else None
    status = sweep(a.preset, root=Path(a.results) if a.results else None, only=a.only,
                   force=a.force, train_upsamplers=not a.no_upsampler_training, extra=extra,
                   jobs=jobs)
    bad = [s for s in status if s["status"] in ("failed", "stale")]
    if bad:
        print(f"{len(bad)} step(s) failed or stale: " + ", ".join(s["run"] for s in bad),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
