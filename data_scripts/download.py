"""Download, verify (sha256) and unpack the interactive-segmentation datasets of the manifest.

    python data_scripts/download.py GrabCut [--root DIR] [--verify-only]
    python data_scripts/download.py all
    python data_scripts/download.py --list

Default root: $PROBE_LIB_DATA, else data/ of the source checkout; dataset NAME lands in <root>/NAME, archives stay in
<root>/_downloads (delete them after unpacking if space is short; --verify-only then has nothing
to check). Resumable: an interrupted download continues from its .part file. Sources, sizes,
licences and citations: probe_lib/data/manifest.json. The synthetic set needs no download:
python data_scripts/make_synthetic.py.
"""

from probe_lib.data.download import main

if __name__ == "__main__":
    raise SystemExit(main())
