"""Fetch PascalVOC (see probe_lib/data/manifest.json): python data_scripts/get_pascalvoc.py [--root DIR] [--verify-only]."""

import sys

from probe_lib.data.download import main

if __name__ == "__main__":
    raise SystemExit(main(["PascalVOC", *sys.argv[1:]]))
