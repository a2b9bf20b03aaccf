"""SA-1B subset reader (JPEG + JSON with COCO RLE masks) and a plain image-folder dataset."""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def encode_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a binary mask, as SA-1B stores it.

    Args:
        mask: (H, W) bool or {0, 1} array.

    Returns:
        ``{"size": [H, W], "counts": str}`` (column-major run lengths, LEB128-like string).
    """
    from pycocotools import mask as mask_utils

    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    with warnings.catch_warnings():  # pycocotools' NumPy-2 copy-keyword deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def decode_rle(rle: dict) -> np.ndarray:
    """Decode a COCO RLE (compressed string counts or uncompressed list counts) to (H, W) bool.

    Args:
        rle: ``{"size": [H, W], "counts": str | bytes | list[int]}``; list counts are run
            lengths in column-major (Fortran) order starting with a run of zeros.
    """
    from pycocotools import mask as mask_utils

    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"an RLE must be a dict with 'size' and 'counts', got {rle!r:.200}")
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        if sum(counts) != h * w:
            raise ValueError(f"uncompressed RLE counts sum to {sum(counts)}, expected {h}*{w}")
        obj = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        obj = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str)
               else counts}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(obj).astype(bool)


def rle_counts(rle: dict) -> tuple[int, int, np.ndarray]:
    """Run lengths of a COCO RLE as int64 (column-major, first run = zeros): (H, W, counts).

    Decodes the compressed string form (5-bit groups + 48, continuation bit 0x20, sign bit 0x10,
    values from the fourth on stored as differences to the value two places back) without
    expanding the mask.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"an RLE must be a dict with 'size' and 'counts', got {rle!r:.200}")
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        out = np.asarray(counts, np.int64)
    else:
        data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
        out = _decode_counts_string(np.frombuffer(data, np.uint8))
    if out.sum() != h * w or (out < 0).any():
        raise ValueError(f"RLE counts sum to {int(out.sum())} (or are negative), expected "
                         f"{h}*{w}")
    return h, w, out


def _decode_counts_string(chars: np.ndarray) -> np.ndarray:
    """Vectorised COCO counts-string decoder (a Python loop over characters is ~10x slower)."""
    if chars.size == 0:
        return np.zeros(0, np.int64)
    c = chars.astype(np.int64) - 48
    if (c < 0).any() or (c > 63).any():
        raise ValueError("RLE counts string has characters outside the COCO alphabet")
    last = (c & 0x20) == 0  # a character without the continuation bit ends a value
    if not last[-1]:
        raise ValueError("truncated RLE counts string")
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1])
    group = np.repeat(np.arange(len(ends)), ends - starts + 1)
    k = np.arange(c.size) - starts[group]
    if k.max() > 11:
        raise ValueError("RLE counts string has a value longer than 60 bits")
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    neg = (c[ends] & 0x10) != 0
    x[neg] -= np.left_shift(1, 5 * (ends[neg] - starts[neg] + 1))
    # from the fourth value on, each is stored relative to the value two places back
    v = x.copy()
    v[3::2] = np.cumsum(x[1::2])[1:] if len(x) > 3 else v[3::2]
    v[4::2] = x[2] + np.cumsum(x[4::2]) if len(x) > 4 else v[4::2]
    return v


def decode_rle_at(rle: dict, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Mask values at the grid ``rows x cols`` only: equals ``decode_rle(rle)[rows][:, cols]``.

    Much cheaper than decoding a full-resolution SA-1B mask and then subsampling it.

    Args:
        rows: int (R,) row indices; cols: int (C,) column indices.
    Returns:
        bool (R, C).
    """
    h, w, counts = rle_counts(rle)
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= h) or cols.size and (
            cols.min() < 0 or cols.max() >= w):
        raise ValueError(f"sample indices outside the {h}x{w} mask")
    return _sample_runs(counts, cols[None, :] * h + rows[:, None])  # column-major pixel order


def _sample_runs(counts: np.ndarray, linear: np.ndarray) -> np.ndarray:
    # run k covers [ends[k-1], ends[k]); odd runs are foreground
    ends = np.cumsum(counts)
    return (np.searchsorted(ends, linear.ravel(), side="right").reshape(linear.shape) & 1) == 1


def _crop_indices(h: int, w: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    nh, nw, top, left = _resize_crop_params(h, w, size)
    rows = np.minimum(((np.arange(top, top + size) + 0.5) * h / nh).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(left, left + size) + 0.5) * w / nw).astype(np.int64), w - 1)
    return rows, cols


# ----------------------------------------------------------------------------- datasets

def _resize_crop_params(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """Shortest side -> ``size`` then a centred ``size`` x ``size`` crop: (new_h, new_w, top, left)."""
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    return nh, nw, round((nh - size) / 2.0), round((nw - size) / 2.0)


def resize_center_crop(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Resize so the shorter side is ``size``, then crop the centre ``size`` x ``size``.

    Args:
        image: (H, W) or (H, W, C) array (C may be large for stacked masks).
        nearest: nearest-neighbour (masks) instead of area/bilinear (photos).
    """
    import cv2

    h, w = image.shape[:2]
    if nearest:
        # pixel-centre nearest neighbour by indexing: exact, any channel count (OpenCV's resize
        # caps the channels) and only the cropped window is computed
        rows, cols = _crop_indices(h, w, size)
        return np.ascontiguousarray(image[rows][:, cols])
    nh, nw, top, left = _resize_crop_params(h, w, size)
    interp = cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR
    out = cv2.resize(image, (nw, nh), interpolation=interp)
    if image.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return np.ascontiguousarray(out[top:top + size, left:left + size])


def _find_images(folder, exts=(".jpg", ".jpeg")):
    from pathlib import Path

    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)


class _SkippingDataset:
    """Shared skip-on-corruption behaviour: a bad item is replaced by the next good one."""

    name = "dataset"

    def __init__(self) -> None:
        self.skipped: dict[str, str] = {}

    @property
    def num_skipped(self) -> int:
        """Items found corrupt so far (in this process) and skipped."""
        return len(self.skipped)

    def _load(self, i: int):
        raise NotImplementedError

    def __getitem__(self, i: int):
        n = len(self)
        if n == 0:
            raise IndexError(f"{self.name}: the dataset is empty")
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"{self.name}: index {i} out of range [0, {n})")
        i %= n
        for k in range(n):
            j = (i + k) % n
            key = self._key(j)
            if key in self.skipped:
                continue
            try:
                return self._load(j)
            except _Corrupt as e:
                self.skipped[key] = str(e)
                warnings.warn(f"{self.name}: skipping corrupt item {key}: {e} "
                              f"({self.num_skipped} skipped so far)", stacklevel=2)
        raise RuntimeError(f"{self.name}: every item is corrupt ({self.num_skipped} skipped)")

    def _key(self, i: int) -> str:
        raise NotImplementedError

    def scan(self) -> int:
        """Read every item once, drop the corrupt ones up front; returns how many were dropped."""
        bad = []
        for j in range(len(self)):
            try:
                self._load(j)
            except _Corrupt as e:
                self.skipped[self._key(j)] = str(e)
                bad.append(j)
        self._drop(bad)
        if bad:
            warnings.warn(f"{self.name}: dropped {len(bad)} corrupt item(s)", stacklevel=2)
        return len(bad)

    def _drop(self, indices) -> None:
        raise NotImplementedError


class _Corrupt(Exception):
    pass


def _read_bgr(path) -> np.ndarray:
    import cv2

    try:
        data = np.fromfile(str(path), np.uint8)
    except OSError as e:
        raise _Corrupt(f"cannot read image {path}: {e}") from e
    from probe_lib.data.is_datasets import jpeg_truncated

    if jpeg_truncated(memoryview(data)):  # OpenCV would decode it with a grey-filled bottom
        raise _Corrupt(f"truncated JPEG {path} ({data.size} bytes, no end-of-image marker)")
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise _Corrupt(f"cannot decode image {path}")
    return img


class SA1BDataset(_SkippingDataset):
    """SA-1B subset: ``<root>/sa1b/sa_<id>.jpg`` + ``sa_<id>.json`` (or the files directly in root).

    Differences from LoftUp's loader (docs/data.md, SA-1B): files are taken in **sorted** order
    (its main branch globs unsorted, so its subset depends on the file system); the JSON is the
    image path with the ``.jpg`` suffix replaced (not every ``jpg`` in the path); masks come back as
    a variable-length list, not padded with -1 masks to 150 -- :func:`collate_sa1b` pads a batch
    and returns an explicit validity flag (:func:`to_reference_padding` gives the -1 form).

    Args:
        root: folder containing ``sa1b/`` (or the image folder itself).
        size: output side S; image and masks are resized (shorter side -> S; area/bilinear for the
            image, nearest for masks) and centre-cropped.
        max_masks: keep the first ``max_masks`` annotations in JSON order.
        num_images: first N images of the sorted listing (None = all).

    Item: ``dict(image=float32 (3, S, S) RGB in [0, 1], masks=bool (M, S, S) with M <= max_masks,
    name=str)``. A corrupt JPEG or JSON (or a missing JSON) is skipped with a warning and
    counted in ``num_skipped``; the next good item is returned instead (never a crash mid-epoch).
    """

    name = "SA1B"

    def __init__(self, root: str | os.PathLike, size: int, max_masks: int = 150,
                 num_images: int | None = None):
        from pathlib import Path

        super().__init__()
        root = Path(root)
        if int(size) < 1:
            raise ValueError(f"size must be a positive int, got {size}")
        if int(max_masks) < 1:
            raise ValueError(f"max_masks must be >= 1, got {max_masks}")
        folder = root / "sa1b" if (root / "sa1b").is_dir() else root
        if not folder.is_dir():
            raise FileNotFoundError(
                f"SA-1B folder not found: {folder}. Fetch a subset with `python "
                "data_scripts/get_sa1b.py --links <links file> -n N --root <dir>`, or use the "
                "synthetic stand-in (ensure_synthetic() / 'SA1B' subfolder).")
        paths = _find_images(folder)
        if not paths:
            raise FileNotFoundError(f"no sa_*.jpg images in {folder} (expected SA-1B layout "
                                    "<root>/sa1b/sa_<id>.{jpg,json})")
        if num_images is not None:
            paths = paths[: int(num_images)]
        self.root, self.size, self.max_masks = folder, int(size), int(max_masks)
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def _key(self, i: int) -> str:
        return self.paths[i].name

    def _drop(self, indices) -> None:
        bad = set(indices)
        self.paths = [p for k, p in enumerate(self.paths) if k not in bad]

    def read_annotations(self, i: int) -> dict:
        """The parsed JSON of image ``i`` (raises on a corrupt file)."""
        import json

        jp = self.paths[i].with_suffix(".json")
        try:
            rec = json.loads(jp.read_text())
        except (OSError, ValueError) as e:
            raise _Corrupt(f"cannot read annotations {jp}: {e}") from e
        if not isinstance(rec, dict) or not isinstance(rec.get("annotations"), list):
            raise _Corrupt(f"{jp} has no 'annotations' list")
        return rec

    def _load(self, i: int) -> dict:
        import torch

        path = self.paths[i]
        rec = self.read_annotations(i)
        img = _read_bgr(path)
        h, w = img.shape[:2]
        anns = rec["annotations"][: self.max_masks]
        # masks are evaluated only at the sampled (nearest, cropped) pixels straight from the
        # run lengths: decoding ~100 full-resolution SA-1B masks would dominate loading
        masks = np.zeros((len(anns), self.size, self.size), bool)
        rows, cols = _crop_indices(h, w, self.size)
        linear = cols[None, :] * h + rows[:, None]
        try:
            for k, a in enumerate(anns):
                mh, mw, counts = rle_counts(a["segmentation"])
                if (mh, mw) != (h, w):
                    raise ValueError(f"mask {k} has size {[mh, mw]}, image is {[h, w]}")
                masks[k] = _sample_runs(counts, linear)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise _Corrupt(f"bad mask in {path.with_suffix('.json')}: {e}") from e
        image = resize_center_crop(img, self.size)[:, :, ::-1]  # BGR -> RGB after shrinking
        return {"image": torch.from_numpy(image.transpose(2, 0, 1).copy()).float() / 255.0,
                "masks": torch.from_numpy(masks),
                "name": path.stem}


def collate_sa1b(batch: list[dict], pad_to: int | None = None) -> dict:
    """Stack SA-1B items, padding the masks.

    Returns:
        ``image`` float (B, 3, S, S); ``masks`` bool (B, M, S, S) with M = ``pad_to`` or the largest
        count in the batch, padded with False; ``valid`` bool (B, M), True for real masks;
        ``names`` list of B strings.
    """
    import torch

    if not batch:
        raise ValueError("collate_sa1b needs a non-empty batch")
    m = max(int(b["masks"].shape[0]) for b in batch)
    if pad_to is not None:
        if pad_to < m:
            raise ValueError(f"pad_to={pad_to} is smaller than a sample's mask count {m}")
        m = pad_to
    s = batch[0]["image"].shape[-2:]
    masks = torch.zeros((len(batch), m, *s), dtype=torch.bool)
    valid = torch.zeros((len(batch), m), dtype=torch.bool)
    for i, b in enumerate(batch):
        k = int(b["masks"].shape[0])
        masks[i, :k] = b["masks"]
        valid[i, :k] = True
    return {"image": torch.stack([b["image"] for b in batch]), "masks": masks, "valid": valid,
            "names": [b["name"] for b in batch]}


def to_reference_padding(masks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """LoftUp's form: float masks (B, M, S, S) in {0, 1}, padding masks filled with -1."""
    import torch

    return torch.where(valid[:, :, None, None], masks.float(), torch.full_like(masks, -1.0,
                                                                                  dtype=torch.float))


class ImageFolderDataset(_SkippingDataset):
    """Plain image folder (COCO ``train2017``-style) for LiFT / FeatUp training.

    Args:
        root: folder of images (``.jpg/.jpeg/.png``; ``recursive=True`` walks sub-folders).
        size: output side S (shorter side -> S, centre crop).
        num_images: first N of the sorted listing (None = all).

    Item: ``dict(image=float32 (3, S, S) RGB in [0, 1], name=str)``; corrupt files are skipped with
    a warning and counted in ``num_skipped``.
    """

    name = "ImageFolder"

    def __init__(self, root: str | os.PathLike, size: int, num_images: int | None = None,
                 recursive: bool = False):
        from pathlib import Path

        super().__init__()
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        exts = (".jpg", ".jpeg", ".png")
        if recursive:
            paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)
        else:
            paths = _find_images(root, exts)
        if not paths:
            raise FileNotFoundError(f"no .jpg/.jpeg/.png images in {root}")
        self.paths = paths[: int(num_images)] if num_images is not None else paths
        self.root, self.size = root, int(size)

    def __len__(self) -> int:
        return len(self.paths)

    def _key(self, i: int) -> str:
        return str(self.paths[i].relative_to(self.root))

    def _drop(self, indices) -> None:
        bad = set(indices)
        self.paths = [p for k, p in enumerate(self.paths) if k not in bad]

    def _load(self, i: int) -> dict:
        import torch

        img = resize_center_crop(_read_bgr(self.paths[i]), self.size)[:, :, ::-1]
        return {"image": torch.from_numpy(img.transpose(2, 0, 1).copy()).float() / 255.0,
                "name": self.paths[i].stem}


# ----------------------------------------------------------------------------- fetching a subset

def parse_links(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Parse the SA-1B links file from Meta's download page.

    Accepts a TSV with a header ``file_name<TAB>cdn_link`` (what the page is believed to give) or
    one URL per line (file name = last path component of the URL, query string dropped). Blank
    lines and ``#`` comments are ignored.

    Returns:
        ``[(file_name, url), ...]`` in file order.
    """
    from pathlib import Path
    from urllib.parse import unquote, urlparse

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SA-1B links file not found: {path} (get it by accepting the "
                                "licence at https://ai.meta.com/datasets/segment-anything-downloads/)")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ValueError(f"SA-1B links file {path} is empty")
    out = []
    header = [c.strip().lower() for c in lines[0].split("\t")]
    if "file_name" in header and "cdn_link" in header:
        i_name, i_url = header.index("file_name"), header.index("cdn_link")
        for n, ln in enumerate(lines[1:], start=2):
            cols = ln.split("\t")
            if len(cols) <= max(i_name, i_url):
                raise ValueError(f"{path} line {n}: expected file_name<TAB>cdn_link, got {ln!r:.80}")
            out.append((cols[i_name].strip(), cols[i_url].strip()))
    else:
        for n, ln in enumerate(lines, start=1):
            u = urlparse(ln)
            name = unquote(Path(u.path).name)
            if not u.scheme or not name:
                raise ValueError(f"{path} line {n}: not a URL and no 'file_name\\tcdn_link' "
                                 f"header: {ln!r:.80}")
            out.append((name, ln))
    for name, _ in out:
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise ValueError(f"{path}: unsafe shard file name {name!r}")
    return out


def _pairs_in_tar(tf) -> list[tuple[str, object, object]]:
    """(stem, jpg member, json member) for every image with both files, in archive order."""
    import posixpath

    jpg, js, order = {}, {}, []
    for m in tf.getmembers():
        if not m.isfile():
            continue
        base = posixpath.basename(m.name)
        stem, ext = posixpath.splitext(base)
        if not stem.startswith("sa_"):
            continue
        if ext.lower() == ".jpg":
            jpg[stem] = m
            order.append(stem)
        elif ext.lower() == ".json":
            js[stem] = m
    return [(s, jpg[s], js[s]) for s in order if s in js]


def count_images(folder: str | os.PathLike) -> int:
    """Complete SA-1B pairs (``sa_*.jpg`` with its ``.json``) in ``folder``."""
    from pathlib import Path

    folder = Path(folder)
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.glob("sa_*.jpg") if p.with_suffix(".json").is_file())


def fetch_sa1b(links: str | os.PathLike, root: str | os.PathLike, num_images: int, *,
               keep_shards: bool = False,
               progress: bool = True) -> int:
    """Download SA-1B shards in links-file order until ``num_images`` images are extracted.

    Each shard is downloaded resumably to ``<root>/_downloads/<file_name>`` (sha256 recorded on
    first use under ``SA1B/<file_name>``), then only its first images (with their JSON) are
    written to ``<root>/sa1b/`` -- each file atomically, so an interruption never leaves a
    half-written image. Reruns skip what is there; shards fully extracted are listed in
    ``<root>/shards_done.json`` and never fetched again. Shards are deleted after extraction
    unless ``keep_shards``.

    Args:
        links: path of the links file (see :func:`parse_links`).
        root: destination root (``SA1BDataset(root, ...)`` reads it).
        num_images: how many images to have in ``<root>/sa1b`` in the end.

    Returns:
        The number of complete images now in ``<root>/sa1b``.
    """
    import json
    import tarfile
    import zlib
    from pathlib import Path

    from probe_lib.data.download import DownloadError, download_file

    if int(num_images) < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    root = Path(root)
    out_dir = root / "sa1b"
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = parse_links(links)
    have = count_images(out_dir)
    # shards whose every image is already extracted are never downloaded again
    state_path = root / "shards_done.json"
    try:
        done = set(json.loads(state_path.read_text()))
    except (OSError, ValueError):
        done = set()
    for name, url in shards:
        if have >= num_images:
            break
        if name in done:
            continue
        archive = root / "_downloads" / name
        try:
            download_file(url, archive, key=f"SA1B/{name}", progress=progress)
        except (OSError, DownloadError) as e:
            raise DownloadError(
                f"could not download SA-1B shard {name} from {url}: {e}. The CDN links expire: "
                "get a fresh links file from https://ai.meta.com/datasets/segment-anything-"
                "downloads/ and rerun (finished images and partial downloads are kept).") from e
        try:
            have = _extract_shard(archive, out_dir, have, num_images, name, done, state_path,
                                  keep_shards)
        except (tarfile.TarError, EOFError, zlib.error) as e:
            # a truncated shard fails deep inside gzip; name it and say what to do
            raise ValueError(f"SA-1B shard {archive} is truncated or corrupt ({type(e).__name__}:"
                             f" {e}); delete it and rerun to download it again") from e
    if have < num_images:
        print(f"only {have} images available from {len(shards)} shard(s) (asked for {num_images})")
    return have


def _extract_shard(archive, out_dir, have: int, num_images: int, name: str, done: set,
                   state_path, keep_shards: bool) -> int:
    """Extract image/JSON pairs of one shard until ``num_images`` are present; returns the new
    count (updates ``done`` and deletes the archive unless ``keep_shards``)."""
    import tarfile

    from probe_lib.utils import atomic_write_json

    with tarfile.open(archive) as tf:
        pairs = _pairs_in_tar(tf)
        used = 0
        for stem, mj, mn in pairs:
            if have >= num_images:
                break
            used += 1
            if (out_dir / f"{stem}.jpg").is_file() and (out_dir / f"{stem}.json").is_file():
                continue
            for member, ext in ((mn, ".json"), (mj, ".jpg")):  # the JPEG last: it marks done
                dest = out_dir / f"{stem}{ext}"
                tmp = dest.with_name(f".{dest.name}.tmp")
                with tf.extractfile(member) as src, open(tmp, "wb") as f:
                    while block := src.read(1 << 20):
                        f.write(block)
                os.replace(tmp, dest)
            have += 1
    if used == len(pairs):
        done.add(name)
        atomic_write_json(sorted(done), state_path)
    elif not keep_shards:
        print(f"note: {name} was only partly extracted; a later run asking for more images "
              "downloads it again (use --keep-shards to keep it)")
    if not keep_shards:
        archive.unlink()
    return have
