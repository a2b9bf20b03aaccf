"""Train one learned upsampler from the command line (the work of notebooks 03, 06-08).

    python -m probe_lib.upsampler_training --method loftup --preset full
    python -m probe_lib.upsampler_training --method lift --set upsampler__train_steps=200

The checkpoint goes to the cache as ``<name>-<preset>.pt`` (``probe_lib.utils.checkpoint_path``),
where notebooks, the sweep and ``create_upsampler(<method>, weights="trained")`` find it, or to
``--out``. An interrupted run resumes from its ``.resume.pt``; ``--overwrite`` starts afresh.
"""

from __future__ import annotations

import argparse
import json
import sys

# method -> recipe function name in .recipes; "loftup" runs stage 1 then stage 2
METHODS = {"lift": "train_lift", "featup_jbu": "train_featup",
           "loftup_stage1": "train_loftup_stage1", "loftup_stage2": "train_loftup_stage2",
           "loftup": None, "featsharp": "train_featsharp"}


def main(argv: list[str] | None = None) -> int:
    from probe_lib.cli import add_config_args, parse_overrides

    p = argparse.ArgumentParser(prog="python -m probe_lib.upsampler_training",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=list(METHODS),
                   help="what to train (loftup = stage 1, then stage 2 from it)")
    add_config_args(p)
    p.add_argument("--steps", type=int, default=None,
                   help="training steps (default: upsampler.train_steps of the config)")
    p.add_argument("--out", default=None,
                   help="checkpoint path (default: the cache, <name>-<preset>.pt); with "
                        "--method loftup this is the stage 2 file")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh even if a checkpoint or resume state exists")
    p.add_argument("--device", default=None, help="torch device (default: cuda, mps, cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.steps is not None and a.steps < 1:
        p.error(f"--steps must be >= 1, got {a.steps}")

    from probe_lib.backbones import create_backbone
    from probe_lib.config import make_config
    from probe_lib.utils import get_device

    from . import recipes

    try:
        cfg = make_config(a.preset, **parse_overrides(p, a.overrides))
    except ValueError as e:  # unknown key or bad value: a usage error, not a traceback
        p.error(str(e))
    backbone = create_backbone(cfg.backbone.name, weights=cfg.backbone.weights)
    backbone = backbone.to(get_device(a.device)).eval()
    kw = {"steps": a.steps, "overwrite": a.overwrite, "progress": not a.no_progress}
    stages = ["train_loftup_stage1", "train_loftup_stage2"] if a.method == "loftup" \
        else [METHODS[a.method]]
    results = []
    for i, fn in enumerate(stages):
        out = a.out if i == len(stages) - 1 else None
        _, res = getattr(recipes, fn)(cfg, backbone, checkpoint=out, **kw)
        results.append({"stage": fn.removeprefix("train_"), "checkpoint": str(res.checkpoint),
                        "seconds": round(res.seconds, 1), "metrics": res.metrics})
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
