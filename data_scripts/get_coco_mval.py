"""Fetch COCO_MVal (see probe_lib/data/manifest.json): python data_scripts/get_coco_mval.py [--root DIR] [--verify-only]."""

import sys

from probe_lib.data.download import main

if __name__ == "__main__":
    raise SystemExit(main(["COCO_MVal", *sys.argv[1:]]))
