"""IS dataset loaders on tiny fixtures written in each official layout; exact decoding; bad input."""

import warnings

import cv2
import numpy as np
import pytest
import scipy.io
from PIL import Image

from probe_lib.data.is_datasets import (
    decode_grabcut_mask,
    filter_thin_objects,
    get_dataset,
    load_sbd_mat,
)

RNG = np.random.default_rng(0)


def _img(h=20, w=24):
    return RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)


def _write_rgb(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])


def _grabcut_mask():
    m = np.zeros((20, 24), np.uint8)
    m[5:15, 6:18] = 255
    m[4, :] = 128   # ignore band
    m[0, 0] = 50    # below 128: background
    m[19, 23] = 200  # above 128: object
    return m


def test_grabcut_exact_decoding_and_non_image_file(tmp_path):
    root = tmp_path / "GrabCut"
    img = _img()
    _write_rgb(root / "data_GT" / "b.bmp", img)  # lossless so the pixels can be compared
    _write_rgb(root / "data_GT" / "a.bmp", _img())
    (root / "data_GT" / "notes.txt").write_text("not an image")
    m = _grabcut_mask()
    (root / "boundary_GT").mkdir()
    for stem in "ab":
        cv2.imwrite(str(root / "boundary_GT" / f"{stem}.bmp"), np.dstack([m, m, m]))
    with pytest.warns(UserWarning, match="notes.txt"):
        ds = get_dataset("GrabCut", root=tmp_path)  # finds the GrabCut/ folder inside
    assert len(ds) == 2 and [p.name for p in ds.skipped_files] == ["notes.txt"]
    smp = ds.get_sample(1)
    assert smp.name == "b" and np.array_equal(smp.image, img)
    _image, gt, name = ds.get_instance(1)
    expected = np.zeros((20, 24), np.int8)
    expected[5:15, 6:18] = 1
    expected[4, :] = -1
    expected[19, 23] = 1
    assert name == "b" and gt.dtype == np.int8 and np.array_equal(gt, expected)
    assert ds.instances() == [(0, 1), (1, 1)]


def test_grabcut_rule_channel0_only():
    raw = np.zeros((2, 2, 3), np.uint8)
    raw[0, 0] = (128, 255, 255)  # channel 0 decides: ignore
    raw[0, 1] = (0, 255, 255)    # background despite other channels
    raw[1, 0] = (129, 0, 0)
    obj, ign = decode_grabcut_mask(raw)
    assert obj.tolist() == [[0, 0], [1, 0]] and ign.tolist() == [[True, False], [False, False]]


def test_berkeley_layout(tmp_path):
    root = tmp_path / "Berkeley"
    _write_rgb(root / "images" / "x1.png", _img())
    (root / "masks").mkdir()
    m = _grabcut_mask()
    cv2.imwrite(str(root / "masks" / "x1.png"), m)
    ds = get_dataset("berkeley", root=root)
    _, gt, _ = ds.get_instance(0)
    assert (gt == -1).sum() == 24 and (gt == 1).sum() == 10 * 12 + 1


@pytest.mark.parametrize("name", ["DAVIS", "COCO_MVal"])
def test_davis_like_any_channel(tmp_path, name):
    root = tmp_path / name
    for stem in ("s1", "s2"):
        _write_rgb(root / "img" / f"{stem}.jpg", _img())
    m = np.zeros((20, 24, 3), np.uint8)
    m[2:6, 3:9, 2] = 1       # only the red channel (BGR index 2), tiny value
    m[10:12, 10:20, 0] = 255  # only blue
    (root / "gt").mkdir()
    cv2.imwrite(str(root / "gt" / "s1.png"), m)
    cv2.imwrite(str(root / "gt" / "s2.png"), np.zeros((20, 24), np.uint8))  # empty instance
    ds = get_dataset(name, root=root)
    smp = ds.get_sample(0)
    expected = np.zeros((20, 24), np.int32)
    expected[2:6, 3:9] = 1
    expected[10:12, 10:20] = 1
    assert np.array_equal(smp.objects, expected) and not smp.ignore.any()
    with pytest.warns(UserWarning, match="skipped 1"):
        inst = ds.instances()
    assert inst == [(0, 1)] and ds.num_skipped_instances == 1
    assert ds.skipped_instances == [(1, 1)]


def _write_sbd(root, seg_by_stem, train, val, field="Segmentation"):
    d = root / "benchmark_RELEASE" / "dataset"
    (d / "img").mkdir(parents=True)
    (d / "inst").mkdir()
    for stem, seg in seg_by_stem.items():
        _write_rgb(d / "img" / f"{stem}.jpg", _img(*seg.shape))
        scipy.io.savemat(str(d / "inst" / f"{stem}.mat"),
                         {"GTinst": {field: seg.astype(np.uint8),
                                     "Categories": np.array([[1]], np.uint8)}})
    (d / "train.txt").write_text("\n".join(train) + "\n")
    (d / "val.txt").write_text("\n".join(val) + "\n")
    return d


def test_sbd_mat_instances_and_filter(tmp_path):
    seg = np.zeros((20, 24), np.uint8)
    seg[2:10, 2:10] = 1
    np.fill_diagonal(seg[:, 4:], 2)  # a one-pixel diagonal: mask/bbox = 20/400 < 0.08
    seg[15:18, 15:20] = 3
    seg2 = np.zeros((20, 24), np.uint8)
    seg2[0:5, 0:5] = 1
    _write_sbd(tmp_path / "SBD", {"2008_000001": seg, "2008_000002": seg2},
               ["2008_000002"], ["2008_000001"])
    val = get_dataset("SBD", "val", root=tmp_path / "SBD")
    smp = val.get_sample(0)
    assert smp.name == "2008_000001" and np.array_equal(smp.objects, seg.astype(np.int32))
    assert val.instances() == [(0, 1), (0, 2), (0, 3)]
    _, gt, name = val.get_instance(1)
    assert name == "2008_000001#2" and np.array_equal(gt, (seg == 2).astype(np.int8))
    filt = get_dataset("SBD", "val", root=tmp_path / "SBD", min_area_ratio=0.08)
    assert filt.instances() == [(0, 1), (0, 3)]
    assert np.array_equal(filter_thin_objects(seg), np.where(seg == 2, 0, seg))
    train = get_dataset("SBD", "train", root=tmp_path / "SBD")
    assert len(train) == 1 and train.get_sample(0).name == "2008_000002"


def test_sbd_mat_without_field(tmp_path):
    seg = np.ones((20, 24), np.uint8)
    d = _write_sbd(tmp_path / "SBD", {"a": seg}, ["a"], ["a"], field="Boundaries")
    with pytest.raises(ValueError, match=r"a\.mat.*Segmentation"):
        get_dataset("SBD", "val", root=tmp_path / "SBD").get_sample(0)
    scipy.io.savemat(str(d / "inst" / "a.mat"), {"other": seg})
    with pytest.raises(ValueError, match=r"a\.mat.*GTinst"):
        load_sbd_mat(d / "inst" / "a.mat")


def test_mask_of_wrong_size(tmp_path):
    root = tmp_path / "DAVIS"
    _write_rgb(root / "img" / "s.jpg", _img(20, 24))
    (root / "gt").mkdir()
    cv2.imwrite(str(root / "gt" / "s.png"), np.zeros((21, 24), np.uint8))
    ds = get_dataset("DAVIS", root=root)
    with pytest.raises(ValueError, match=r"gt/s\.png.*size"):
        ds.get_sample(0)


def test_corrupt_image_named(tmp_path):
    root = tmp_path / "DAVIS"
    (root / "img").mkdir(parents=True)
    (root / "gt").mkdir()
    (root / "img" / "bad.jpg").write_bytes(b"this is not a jpeg")
    cv2.imwrite(str(root / "gt" / "bad.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"bad\.jpg"):
        get_dataset("DAVIS", root=root).get_sample(0)


def test_missing_or_empty_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"download\.py GrabCut"):
        get_dataset("GrabCut", root=tmp_path / "nothing")
    (tmp_path / "G" / "data_GT").mkdir(parents=True)
    (tmp_path / "G" / "boundary_GT").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        get_dataset("GrabCut", root=tmp_path / "G")
    with pytest.raises(FileNotFoundError, match=r"download\.py SBD"):
        get_dataset("SBD", root=tmp_path / "nothing")
    with pytest.raises(ValueError, match="valid names"):
        get_dataset("ImageNet")
    with pytest.raises(FileNotFoundError, match="make_synthetic.py --root"):
        get_dataset("synthetic", "train", root=tmp_path / "nothing")
    with pytest.raises(ValueError, match="single evaluation split"):
        get_dataset("DAVIS", split="train", root=tmp_path)


def test_missing_mask_for_image(tmp_path):
    root = tmp_path / "Berkeley"
    _write_rgb(root / "images" / "x.png", _img())
    (root / "masks").mkdir()
    with pytest.raises(FileNotFoundError, match="x.png"):
        get_dataset("Berkeley", root=root)


def test_all_ignore_instance_skipped(tmp_path):
    root = tmp_path / "GrabCut"
    _write_rgb(root / "data_GT" / "a.bmp", _img())
    (root / "boundary_GT").mkdir()
    cv2.imwrite(str(root / "boundary_GT" / "a.bmp"), np.full((20, 24), 128, np.uint8))
    ds = get_dataset("GrabCut", root=root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ds.instances() == []
    assert ds.num_skipped_instances == 1


def _voc_palette():
    pal = np.zeros((256, 3), np.uint8)
    pal[1] = (128, 0, 0)
    pal[2] = (0, 128, 0)
    pal[255] = (224, 224, 192)
    return pal.ravel().tolist()


def test_pascal_voc_palette_and_reference_gray(tmp_path):
    d = tmp_path / "PascalVOC" / "VOCdevkit" / "VOC2012"
    _write_rgb(d / "JPEGImages" / "2007_000033.jpg", _img())
    idx = np.zeros((20, 24), np.uint8)
    idx[3:8, 3:8] = 1
    idx[10:15, 10:20] = 2
    idx[8, :] = 255
    (d / "SegmentationObject").mkdir()
    im = Image.fromarray(idx, mode="P")
    im.putpalette(_voc_palette())
    im.save(d / "SegmentationObject" / "2007_000033.png")
    (d / "ImageSets" / "Segmentation").mkdir(parents=True)
    (d / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n")
    ds = get_dataset("PascalVOC", root=tmp_path / "PascalVOC")
    smp = ds.get_sample(0)
    assert np.array_equal(smp.objects, np.where(idx == 255, 0, idx))
    assert np.array_equal(smp.ignore, idx == 255)
    assert ds.instances() == [(0, 1), (0, 2)]
    ref = get_dataset("PascalVOC", root=tmp_path / "PascalVOC", mode="reference_gray")
    smp = ref.get_sample(0)
    # the colour PNG read as gray: (128,0,0) -> 38, (0,128,0) -> 75, void (224,224,192) -> 220
    assert np.array_equal(smp.ignore, idx == 255)
    assert sorted(np.unique(smp.objects).tolist()) == [0, 38, 75]
    assert np.array_equal(smp.objects == 38, idx == 1)


def test_instance_list_cached_and_invalidated(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBE_LIB_CACHE", str(tmp_path / "cache"))
    seg = np.zeros((20, 24), np.uint8)
    seg[2:10, 2:10] = 1
    seg[12:18, 12:20] = 2
    d = _write_sbd(tmp_path / "SBD", {"a": seg}, ["a"], ["a"])
    assert get_dataset("SBD", root=tmp_path / "SBD").instances() == [(0, 1), (0, 2)]
    assert len(list((tmp_path / "cache" / "datasets").glob("SBD-*.json"))) == 1
    ds = get_dataset("SBD", root=tmp_path / "SBD")
    monkeypatch.setattr(ds, "get_sample", lambda i: pytest.fail("should come from the cache"))
    assert ds.instances() == [(0, 1), (0, 2)]
    # a changed annotation file is rescanned
    seg[12:18, 12:20] = 0
    scipy.io.savemat(str(d / "inst" / "a.mat"), {"GTinst": {"Segmentation": seg}})
    assert get_dataset("SBD", root=tmp_path / "SBD").instances() == [(0, 1)]
    # the training filter is part of the key
    thin = get_dataset("SBD", root=tmp_path / "SBD", min_area_ratio=0.99)
    assert thin.instances() == [(0, 1)] and thin._options()["min_area_ratio"] == 0.99
