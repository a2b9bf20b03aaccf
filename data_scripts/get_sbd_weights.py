"""Fetch sbd_weights (see probe_lib/data/manifest.json): python data_scripts/get_sbd_weights.py [--root DIR] [--verify-only]."""

import sys

from probe_lib.data.download import main

if __name__ == "__main__":
    raise SystemExit(main(["sbd_weights", *sys.argv[1:]]))
