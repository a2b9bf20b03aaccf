"""Fetch the first N images (+ mask JSON) of SA-1B from the links file Meta's download page gives.

    python data_scripts/get_sa1b.py --links sa1b_links.txt -n 1000 [--root DIR] [--keep-shards]

1. Accept the licence at https://ai.meta.com/datasets/segment-anything-downloads/ and save the
   links file (TSV with header file_name<TAB>cdn_link, or one URL per line).
2. Shards (~10 GB, ~11k images each) are downloaded in order, resumably, with a progress bar and
   a sha256 recorded on first use; only the first N images are extracted to <root>/sa1b/ and a
   shard is deleted afterwards unless --keep-shards. Signed links expire: if a download fails,
   fetch a fresh links file and rerun; finished images are kept.
Default root: $PROBE_LIB_DATA/SA1B. Read it with probe_lib.data.sa1b.SA1BDataset(root, size).
"""

from __future__ import annotations

import argparse
import sys

from probe_lib.data.download import DownloadError
from probe_lib.data.sa1b import fetch_sa1b
from probe_lib.utils import data_root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--links", required=True, help="links file from Meta's download page")
    ap.add_argument("-n", "--num-images", type=int, required=True)
    ap.add_argument("--root", default=None, help="destination (default $PROBE_LIB_DATA/SA1B)")
    ap.add_argument("--keep-shards", action="store_true", help="keep the downloaded .tar files")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    root = args.root or data_root() / "SA1B"
    try:
        n = fetch_sa1b(args.links, root, args.num_images, keep_shards=args.keep_shards,
                       progress=not args.no_progress)
    except (DownloadError, FileNotFoundError, ValueError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print(f"{n} SA-1B images in {root}/sa1b")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
