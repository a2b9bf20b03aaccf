"""Interactive-segmentation datasets in their official on-disk layouts (docs/data.md).

``get_dataset(name, split, root)`` returns an :class:`ISDataset` with

* ``len(ds)`` images and ``ds.get_sample(i) -> ISSample`` (image, instance label map, ignore map);
* ``ds.instances() -> [(sample_index, object_id), ...]`` -- every evaluable instance in file order;
  empty or all-ignore instances are skipped and counted in ``ds.num_skipped_instances``;
* ``ds.get_instance(k) -> (image, gt, name)`` with ``gt`` int8: 1 object, 0 background, -1 ignore.

Decoding rules (docs/data.md): SBD ``.mat`` ``GTinst.Segmentation`` (0 bg, 1..K); GrabCut/Berkeley
mask channel 0 with 128 -> ignore, > 128 -> object, else background; DAVIS/COCO_MVal any channel
> 0 -> object; PascalVOC ``SegmentationObject`` palette index (255 void), or the reference's
gray-value decoding (gray value = instance id, 220 void) with ``voc_mode="reference_gray"``.

Files among the images whose extension is not an image type (``.txt``, ``Thumbs.db``, ...) are
skipped with a warning (listed in ``ds.skipped_files``); an image-typed file that cannot be
decoded, or a truncated JPEG (which OpenCV would decode with a grey-filled bottom), raises a
ValueError naming it when it is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from probe_lib.utils import atomic_write_json, banner, cache_dir, data_root

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".ppm")
DATASETS = ("SBD", "GrabCut", "Berkeley", "DAVIS", "COCO_MVal", "PascalVOC", "synthetic")
_FETCH = {
    "SBD": "python data_scripts/download.py SBD",
    "GrabCut": "python data_scripts/download.py GrabCut",
    "Berkeley": "python data_scripts/download.py Berkeley",
    "DAVIS": "python data_scripts/download.py DAVIS",
    "COCO_MVal": "python data_scripts/download.py COCO_MVal",
    "PascalVOC": "python data_scripts/download.py PascalVOC",
    "synthetic": "python data_scripts/make_synthetic.py",
}


@dataclass
class ISSample:
    """One image with all its instances.

    Attributes:
        image: uint8 (H, W, 3) RGB.
        objects: int32 (H, W) label map, 0 = background, 1..K instance ids (ids may have gaps).
        ignore: bool (H, W), True where the annotation is void / ignored.
        name: image identifier (file stem).
    """

    image: np.ndarray
    objects: np.ndarray
    ignore: np.ndarray
    name: str


# After a JPEG's start-of-scan header the entropy-coded data runs until the next marker: 0xFF
# followed by anything but 0x00 (byte stuffing), 0xFF (fill) or 0xD0-0xD7 (restart markers).
_JPEG_NEXT_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")


def jpeg_truncated(data: bytes) -> bool:
    """True when ``data`` is a JPEG whose segments run out before the end-of-image marker.

    OpenCV (and PIL with ``LOAD_TRUNCATED_IMAGES``) decode such a file without an error and fill
    the missing rows with grey. The check walks the marker segments (skipping embedded
    thumbnails by their lengths) and the entropy-coded scans; it never decodes. Non-JPEG data
    and JPEGs whose structure is unusual in another way return False (left to the decoder).
    """
    n = len(data)
    if data[:2] != b"\xff\xd8":
        return False
    i = 2
    while True:
        if i >= n:
            return True
        if data[i] != 0xFF:
            return False
        while i < n and data[i] == 0xFF:
            i += 1
        if i >= n:
            return True
        marker = data[i]
        i += 1
        if marker == 0xD9:  # end of image
            return False
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            continue
        if i + 2 > n:
            return True
        i += int.from_bytes(data[i:i + 2], "big")
        if i > n:
            return True
        if marker == 0xDA:  # start of scan: skip the entropy-coded data
            m = _JPEG_NEXT_MARKER.search(data, i)
            if m is None:
                return True
            i = m.start()


def _decode(path: Path, flags: int, what: str) -> np.ndarray:
    data = path.read_bytes()
    if jpeg_truncated(data):
        raise ValueError(f"{what} file {path} is truncated ({len(data)} bytes, the JPEG data ends "
                         "before its end-of-image marker; decoding would fill the missing rows "
                         "with grey). Download or copy it again.")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if img is None:
        raise ValueError(f"cannot decode {what} file {path} (not a valid image?)")
    return img


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB; a ValueError names a file that cannot be decoded
    or that is a truncated JPEG."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    img = _decode(path, cv2.IMREAD_COLOR, "image")
    return np.ascontiguousarray(img[:, :, ::-1])


def _read_mask_raw(path: Path, flags=cv2.IMREAD_UNCHANGED) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    return _decode(path, flags, "mask")


def _check_size(mask: np.ndarray, image: np.ndarray, mask_path: Path, image_path: Path) -> None:
    if mask.shape[:2] != image.shape[:2]:
        raise ValueError(
            f"mask {mask_path} has size {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
            f"{image_path} is {image.shape[1]}x{image.shape[0]}; they must match")


def _missing_data(name: str, path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{name} data not found: {what} (looked in {path}). Fetch it with "
        f"`{_FETCH[name]} --root {path.parent if path.name == name else path}` or pass "
        f"root= pointing at the dataset folder; the data root is $PROBE_LIB_DATA (now {data_root()}).")


def _list_images(folder: Path, name: str) -> tuple[list[Path], list[Path]]:
    """Image files in ``folder`` sorted by name, and the non-image files skipped (with a warning)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
    skipped = [p for p in files if p.suffix.lower() not in IMAGE_EXTS]
    if skipped:
        warnings.warn(f"{name}: skipping {len(skipped)} non-image file(s) in {folder}: "
                      f"{', '.join(p.name for p in skipped[:5])}", stacklevel=3)
    return images, skipped


class ISDataset:
    """Base class; subclasses implement ``__len__``, ``_load(i)`` and optionally ``_object_ids``."""

    name: str = "dataset"

    def __init__(self) -> None:
        self._instances: list[tuple[int, int]] | None = None
        self.num_skipped_instances = 0
        self.skipped_instances: list[tuple[int, int]] = []
        self.skipped_files: list[Path] = []

    def __len__(self) -> int:
        raise NotImplementedError

    def _load(self, i: int) -> ISSample:
        raise NotImplementedError

    def get_sample(self, i: int) -> ISSample:
        """Sample ``i`` (0 <= i < len(self)); see :class:`ISSample`."""
        if not 0 <= int(i) < len(self):
            raise IndexError(f"{self.name}: sample index {i} out of range [0, {len(self)})")
        return self._load(int(i))

    def instances(self) -> list[tuple[int, int]]:
        """Every evaluable ``(sample_index, object_id)`` in file order (computed once, cached).

        An instance with no pixel, or whose pixels are all ignored, is skipped and counted in
        ``num_skipped_instances`` (listed in ``skipped_instances``).
        """
        if self._instances is None and not self._load_instance_cache():
            from tqdm.auto import tqdm

            inst, skipped = [], []
            for i in tqdm(range(len(self)), desc=f"{self.name}: listing instances",
                          disable=len(self) < 200):
                smp = self.get_sample(i)
                for obj in self._object_ids(smp):
                    m = smp.objects == obj
                    if not (m & ~smp.ignore).any():
                        skipped.append((i, obj))
                    else:
                        inst.append((i, obj))
            self._instances = inst
            self.skipped_instances = skipped
            self.num_skipped_instances = len(skipped)
            self._save_instance_cache()
            if skipped:
                warnings.warn(f"{self.name}: skipped {len(skipped)} empty or all-ignore "
                              "instance(s)", stacklevel=2)
        return list(self._instances)

    # The instance list needs every mask read once (minutes for SBD val); it is cached in
    # $PROBE_LIB_CACHE/datasets keyed by the annotation files' paths, sizes and mtimes.
    def _annotation_files(self) -> list[Path]:
        return []

    def _options(self) -> dict:
        return {}

    def _instance_cache_file(self) -> Path | None:
        files = self._annotation_files()
        if not files:
            return None
        h = hashlib.sha1(repr((type(self).__name__, self.name, self._options())).encode())
        try:
            for f in files:
                st = f.stat()
                h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            return None  # a missing file: let the scan raise its clear error
        return cache_dir() / "datasets" / f"{self.name}-{h.hexdigest()[:20]}.json"

    def _load_instance_cache(self) -> bool:
        path = self._instance_cache_file()
        if path is None or not path.is_file():
            return False
        try:
            data = json.loads(path.read_text())
            inst = [(int(i), int(o)) for i, o in data["instances"]]
            skipped = [(int(i), int(o)) for i, o in data["skipped"]]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        self._instances, self.skipped_instances = inst, skipped
        self.num_skipped_instances = len(skipped)
        return True

    def _save_instance_cache(self) -> None:
        path = self._instance_cache_file()
        if path is not None:
            try:
                atomic_write_json({"instances": self._instances,
                                   "skipped": self.skipped_instances}, path)
            except OSError:  # a read-only cache only costs the rescan next time
                pass

    def _object_ids(self, smp: ISSample) -> list[int]:
        ids = np.unique(smp.objects)
        return [int(v) for v in ids if v > 0]

    def get_instance(self, k: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Instance ``k`` of :meth:`instances`.

        Returns:
            image uint8 (H, W, 3) RGB; gt int8 (H, W) with 1 object, 0 background, -1 ignore;
            name ``"<image name>"`` (with ``"#<object id>"`` appended when the image has several).
        """
        inst = self.instances()
        if not 0 <= int(k) < len(inst):
            raise IndexError(f"{self.name}: instance index {k} out of range [0, {len(inst)})")
        i, obj = inst[int(k)]
        smp = self.get_sample(i)
        gt = (smp.objects == obj).astype(np.int8)
        gt[smp.ignore] = -1
        many = len(self._object_ids(smp)) > 1
        return smp.image, gt, f"{smp.name}#{obj}" if many else smp.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, images={len(self)})"


# ----------------------------------------------------------------------------- SBD

def _find_dir(root: Path, candidates: list[str], required: list[str]) -> Path | None:
    for c in candidates:
        d = root / c if c else root
        if all((d / r).exists() for r in required):
            return d
    return None


def load_sbd_mat(path: str | os.PathLike) -> np.ndarray:
    """``GTinst.Segmentation`` of an SBD ``inst/*.mat`` file as int32 (H, W) (0 bg, 1..K)."""
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SBD instance file not found: {path}")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several types for corrupt files
        raise ValueError(f"cannot read MATLAB file {path}: {e}") from e
    if "GTinst" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path} has no struct 'GTinst' (found {found}); expected an SBD "
                         "inst/*.mat file")
    st = mat["GTinst"]
    names = st.dtype.names or ()
    if "Segmentation" not in names:
        raise ValueError(f"{path}: struct GTinst has no field 'Segmentation' (fields: "
                         f"{list(names)}); expected an SBD inst/*.mat file")
    seg = np.asarray(st["Segmentation"][0, 0])
    if seg.ndim != 2:
        raise ValueError(f"{path}: GTinst.Segmentation should be 2-D, got shape {seg.shape}")
    return seg.astype(np.int32)


class SBDDataset(ISDataset):
    """SBD ``dataset/{img/*.jpg, inst/*.mat, train.txt, val.txt}``.

    Args:
        root: folder holding ``dataset/`` or ``benchmark_RELEASE/dataset/`` or the dataset folder.
        split: ``"train"`` or ``"val"`` (images listed in ``<split>.txt``, in file order).
        min_area_ratio: iSegProbe's SBD training filter -- on the full image, an object whose mask
            area / bounding-box area is below this becomes background. None (default, evaluation)
            keeps every object.
        label: name used in messages (``"SBD"`` or ``"synthetic"``).

    Pixels equal to 255 in ``Segmentation`` (not present in the official release) are treated as
    ignore rather than as an instance.
    """

    def __init__(self, root: str | os.PathLike, split: str = "val",
                 min_area_ratio: float | None = None, label: str = "SBD") -> None:
        super().__init__()
        self.name = label
        if split not in ("train", "val"):
            raise ValueError(f"{label}: split must be 'train' or 'val', got {split!r}")
        root = Path(root)
        d = _find_dir(root, ["", "dataset", "benchmark_RELEASE/dataset", "SBD/dataset",
                             "SBD/benchmark_RELEASE/dataset"], ["img", "inst"])
        if d is None:
            raise _missing_data(label if label in _FETCH else "SBD", root,
                                "no folder with img/ and inst/")
        lst = d / f"{split}.txt"
        if not lst.is_file():
            raise _missing_data(label if label in _FETCH else "SBD", root, f"missing {lst}")
        self.root = d
        self.split = split
        self.min_area_ratio = min_area_ratio
        self.names = [ln.strip() for ln in lst.read_text().splitlines() if ln.strip()]
        if not self.names:
            raise ValueError(f"{label}: split file {lst} lists no images")

    def __len__(self) -> int:
        return len(self.names)

    def _annotation_files(self) -> list[Path]:
        return [self.root / "inst" / f"{stem}.mat" for stem in self.names]

    def _options(self) -> dict:
        return {"split": self.split, "min_area_ratio": self.min_area_ratio}

    def _load(self, i: int) -> ISSample:
        stem = self.names[i]
        img_path = self.root / "img" / f"{stem}.jpg"
        mat_path = self.root / "inst" / f"{stem}.mat"
        image = read_image(img_path)
        seg = load_sbd_mat(mat_path)
        _check_size(seg, image, mat_path, img_path)
        ignore = seg == 255
        seg = np.where(ignore, 0, seg).astype(np.int32)
        if self.min_area_ratio is not None:
            seg = filter_thin_objects(seg, self.min_area_ratio)
        return ISSample(image, seg, ignore, stem)


def filter_thin_objects(objects: np.ndarray, min_ratio: float = 0.08) -> np.ndarray:
    """Turn objects whose mask area / bounding-box area < ``min_ratio`` into background (0).

    Args:
        objects: int (H, W) label map, 0 background.
    Returns:
        A new int32 label map (ids of kept objects unchanged).
    """
    out = np.asarray(objects).astype(np.int32).copy()
    for obj in np.unique(out):
        if obj <= 0:
            continue
        ys, xs = np.nonzero(out == obj)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        if len(ys) / box < min_ratio:
            out[out == obj] = 0
    return out


# ----------------------------------------------------------------------------- paired folders

class _PairedFolderDataset(ISDataset):
    """Images in one folder, one mask per image (same stem) in another; one instance per image."""

    image_dir = "images"
    mask_dir = "masks"
    candidates = ("",)

    def __init__(self, root: str | os.PathLike, name: str) -> None:
        super().__init__()
        self.name = name
        root = Path(root)
        d = _find_dir(root, list(self.candidates), [self.image_dir, self.mask_dir])
        if d is None:
            raise _missing_data(name, root, f"no folder with {self.image_dir}/ and "
                                            f"{self.mask_dir}/")
        self.root = d
        images, skipped = _list_images(d / self.image_dir, name)
        self.skipped_files = skipped
        if not images:
            raise _missing_data(name, d / self.image_dir, "the image folder is empty")
        masks = {}
        for p in sorted((d / self.mask_dir).iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
                masks.setdefault(p.stem, p)
        missing = [p.name for p in images if p.stem not in masks]
        if missing:
            raise FileNotFoundError(
                f"{name}: {len(missing)} image(s) in {d / self.image_dir} have no mask with the "
                f"same stem in {d / self.mask_dir}, e.g. {missing[:3]}")
        self.image_paths = images
        self.mask_paths = [masks[p.stem] for p in images]

    def __len__(self) -> int:
        return len(self.image_paths)

    def _annotation_files(self) -> list[Path]:
        return list(self.mask_paths)

    def _decode(self, raw: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _load(self, i: int) -> ISSample:
        image = read_image(self.image_paths[i])
        raw = _read_mask_raw(self.mask_paths[i])
        _check_size(raw, image, self.mask_paths[i], self.image_paths[i])
        objects, ignore = self._decode(raw, self.mask_paths[i])
        return ISSample(image, objects, ignore, self.image_paths[i].stem)

    def _object_ids(self, smp: ISSample) -> list[int]:
        return [1]  # one instance per image, even when empty (it is then skipped and counted)


def decode_grabcut_mask(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GrabCut/Berkeley rule on channel 0: 128 -> ignore, > 128 -> object (1), else background.

    Args:
        raw: uint8 (H, W) or (H, W, C) as read by OpenCV (channel 0 = blue; masks are gray).
    Returns:
        objects int32 (H, W) in {0, 1}; ignore bool (H, W).
    """
    ch0 = raw[:, :, 0] if raw.ndim == 3 else raw
    ch0 = ch0.astype(np.int32)
    return (ch0 > 128).astype(np.int32), ch0 == 128


def decode_davis_mask(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DAVIS/COCO_MVal rule: any channel > 0 -> object (1); nothing is ignored."""
    m = raw.max(axis=2) if raw.ndim == 3 else raw
    return (m > 0).astype(np.int32), np.zeros(m.shape, bool)


class GrabCutDataset(_PairedFolderDataset):
    """GrabCut: ``data_GT/*`` images + ``boundary_GT/*.bmp`` masks (same stem)."""

    image_dir, mask_dir = "data_GT", "boundary_GT"
    candidates = ("", "GrabCut")

    def _decode(self, raw, path):
        return decode_grabcut_mask(raw)


class BerkeleyDataset(_PairedFolderDataset):
    """Berkeley: ``images/*`` + ``masks/*`` (same stem), GrabCut decoding."""

    image_dir, mask_dir = "images", "masks"
    candidates = ("", "Berkeley")

    def _decode(self, raw, path):
        return decode_grabcut_mask(raw)


class DavisDataset(_PairedFolderDataset):
    """DAVIS345 / COCO_MVal: ``img/*.jpg`` + ``gt/*.png`` (same stem), any channel > 0 = object."""

    image_dir, mask_dir = "img", "gt"
    candidates = ("", "DAVIS", "COCO_MVal")

    def _decode(self, raw, path):
        return decode_davis_mask(raw)


# ----------------------------------------------------------------------------- Pascal VOC

class PascalVOCDataset(ISDataset):
    """Pascal VOC 2012 ``SegmentationObject`` instances of ``ImageSets/Segmentation/<split>.txt``.

    Args:
        root: folder holding ``VOCdevkit/VOC2012`` (or ``VOC2012``, or the VOC2012 folder itself).
        split: ``"val"`` (default; the reference's ``test`` pickle is unpublished) or ``"train"``.
        mode: ``"palette"`` (project default: palette index = instance id, 255 = void) or
            ``"reference_gray"`` (iSegProbe/RITM: the colour PNG converted to gray, gray value =
            instance id, 220 = void).
    """

    def __init__(self, root: str | os.PathLike, split: str = "val", mode: str = "palette") -> None:
        super().__init__()
        self.name = "PascalVOC"
        if mode not in ("palette", "reference_gray"):
            raise ValueError(f"PascalVOC mode must be 'palette' or 'reference_gray', got {mode!r}")
        root = Path(root)
        d = _find_dir(root, ["", "VOC2012", "VOCdevkit/VOC2012", "PascalVOC/VOCdevkit/VOC2012"],
                      ["JPEGImages", "SegmentationObject"])
        if d is None:
            raise _missing_data("PascalVOC", root, "no folder with JPEGImages/ and "
                                                   "SegmentationObject/")
        lst = d / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not lst.is_file():
            raise _missing_data("PascalVOC", root, f"missing {lst}")
        self.root, self.split, self.mode = d, split, mode
        self.names = [ln.strip() for ln in lst.read_text().splitlines() if ln.strip()]
        if not self.names:
            raise ValueError(f"PascalVOC: split file {lst} lists no images")

    def __len__(self) -> int:
        return len(self.names)

    def _annotation_files(self) -> list[Path]:
        return [self.root / "SegmentationObject" / f"{stem}.png" for stem in self.names]

    def _options(self) -> dict:
        return {"split": self.split, "mode": self.mode}

    def _load(self, i: int) -> ISSample:
        from PIL import Image

        stem = self.names[i]
        img_path = self.root / "JPEGImages" / f"{stem}.jpg"
        mask_path = self.root / "SegmentationObject" / f"{stem}.png"
        image = read_image(img_path)
        if not mask_path.is_file():
            raise FileNotFoundError(f"PascalVOC mask file not found: {mask_path}")
        if self.mode == "palette":
            with Image.open(mask_path) as im:
                if im.mode != "P":
                    raise ValueError(f"{mask_path} is not a palette PNG (mode {im.mode}); use "
                                     "mode='reference_gray' for colour-converted masks")
                raw = np.asarray(im).astype(np.int32)
            void = 255
        else:
            raw = _read_mask_raw(mask_path, cv2.IMREAD_GRAYSCALE).astype(np.int32)
            void = 220
        _check_size(raw, image, mask_path, img_path)
        ignore = raw == void
        return ISSample(image, np.where(ignore, 0, raw).astype(np.int32), ignore, stem)


# ----------------------------------------------------------------------------- entry point

def _synthetic_root(root: str | os.PathLike | None) -> Path:
    from probe_lib.data.synthetic import ensure_synthetic, read_manifest

    if root is not None:
        if read_manifest(root) is None:
            raise FileNotFoundError(
                f"no synthetic set at {root} (no manifest.json). Create it with `python "
                f"data_scripts/make_synthetic.py --root {root}` or ensure_synthetic({str(root)!r})")
        return Path(root)
    r = data_root() / "synthetic"
    if read_manifest(r) is None:
        banner("Synthetic dataset not found: generating the default set (200 images, 224 px)\n"
               f"at {r} -- offline stand-in built from packaged sample photos, not a benchmark.")
        ensure_synthetic(r)
    return r


def get_dataset(name: str, split: str = "val", root: str | os.PathLike | None = None,
                **kwargs) -> ISDataset:
    """An interactive-segmentation dataset by name.

    Args:
        name: one of ``SBD, GrabCut, Berkeley, DAVIS, COCO_MVal, PascalVOC, synthetic``
            (case-insensitive).
        split: ``"train"`` or ``"val"`` for SBD / PascalVOC / synthetic; GrabCut, Berkeley, DAVIS
            and COCO_MVal have a single evaluation split (any value other than ``"val"``/``"test"``
            is an error). ``synthetic`` train = the SBD layout's train split (several objects per
            image, for probe training); val = the DAVIS layout (one instance per file).
        root: dataset folder; default ``data_root() / name`` (``data_root() / "synthetic"`` for the
            synthetic set, generated with default parameters when absent).
        **kwargs: ``min_area_ratio`` (SBD/synthetic train filter, docs/probe.md), ``mode``
            (PascalVOC decoding).
    """
    canon = {n.lower(): n for n in DATASETS}
    key = canon.get(str(name).lower())
    if key is None:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if key == "synthetic":
        r = _synthetic_root(root)
        if split == "train":
            return SBDDataset(r / "SBD", "train", label="synthetic", **kwargs)
        if split in ("val", "test"):
            if kwargs:
                raise ValueError(f"synthetic val takes no options, got {sorted(kwargs)}")
            return DavisDataset(r / "DAVIS", "synthetic")
        raise ValueError(f"synthetic split must be 'train' or 'val', got {split!r}")
    r = Path(root) if root is not None else data_root() / key
    if key == "SBD":
        return SBDDataset(r, split, **kwargs)
    if key == "PascalVOC":
        return PascalVOCDataset(r, split, **kwargs)
    if split not in ("val", "test"):
        raise ValueError(f"{key} has a single evaluation split; use split='val', got {split!r}")
    if kwargs:
        raise ValueError(f"{key} takes no options, got {sorted(kwargs)}")
    cls = {"GrabCut": GrabCutDataset, "Berkeley": BerkeleyDataset, "DAVIS": DavisDataset,
           "COCO_MVal": DavisDataset}[key]
    return cls(r, key)
