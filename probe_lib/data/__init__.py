"""Datasets: the synthetic teaching set, interactive-segmentation benchmarks, SA-1B.

* :mod:`probe_lib.data.synthetic` -- ``ensure_synthetic()``: offline collage images from packaged
  sample photos, written in SBD, DAVIS and SA-1B layouts.
* :mod:`probe_lib.data.is_datasets` -- ``get_dataset(name, split, root)`` for SBD, GrabCut,
  Berkeley, DAVIS, COCO_MVal, PascalVOC and ``synthetic``.
* :mod:`probe_lib.data.sa1b` -- ``SA1BDataset``, ``ImageFolderDataset``, COCO RLE helpers,
  SA-1B subset fetching.
* :mod:`probe_lib.data.download` -- the resumable, checksummed downloader behind
  ``data_scripts/``; :mod:`probe_lib.data.sbd_weights` -- RITM's SBD sampling weights as JSON.

Submodules are imported on demand (nothing heavy happens at ``import probe_lib.data``).
"""
