"""Generate the synthetic teaching set (SBD, DAVIS and SA-1B layouts) offline.

    python data_scripts/make_synthetic.py [--root DIR] [--num-images 200] [--size 224] [--seed 0]

Default root: <data root>/synthetic, the data root being $PROBE_LIB_DATA, else data/ of the
source checkout. Idempotent: nothing is done when a set with the same parameters is already
there.
"""

from __future__ import annotations

import argparse
import json
import time

from probe_lib.data.synthetic import ensure_synthetic


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None, help="destination (default $PROBE_LIB_DATA/synthetic)")
    ap.add_argument("--num-images", type=int, default=200)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    root = ensure_synthetic(args.root, args.num_images, args.size, args.seed)
    man = json.loads((root / "manifest.json").read_text())
    print(f"synthetic set at {root} ({time.perf_counter() - t0:.1f} s): {man['stats']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
