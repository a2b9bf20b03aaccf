"""Fetch DAVIS (see probe_lib/data/manifest.json): python data_scripts/get_davis.py [--root DIR] [--verify-only]."""

import sys

from probe_lib.data.download import main

if __name__ == "__main__":
    raise SystemExit(main(["DAVIS", *sys.argv[1:]]))
