"""SA-1B reader: RLE against hand-computed encodings, resize/crop exactness, corrupt files skipped
and counted, padding collate, image folders, links parsing and shard extraction via file://."""

import io
import json
import tarfile
import warnings

import cv2
import numpy as np
import pytest
import torch

from probe_lib.data.sa1b import (
    ImageFolderDataset,
    SA1BDataset,
    collate_sa1b,
    decode_rle,
    encode_rle,
    fetch_sa1b,
    parse_links,
    resize_center_crop,
    to_reference_padding,
)
from probe_lib.data.synthetic import ensure_synthetic

# Hand-worked COCO RLE: column-major runs starting with zeros; counts[i] for i > 2 (from the
# fourth on) are stored as the difference to counts[i - 2]; each value is written in 5-bit groups
# (0x20 = "more", sign taken from bit 0x10), + 48.
# [[0,1,1,1],[0,1,0,1]] -> column-major 0,0,1,1,1,0,1,1 -> runs [2, 3, 1, 2] -> 2, 3, 1,
#   (2 - 3 = -1) -> '2', '3', '1', and -1 = 0b11111 with no continuation -> chr(31 + 48) = 'O'.
# 1x41 with only the last pixel set -> runs [40, 1]: 40 = 8 + (1 << 5) -> chr(8 | 0x20 + 48) = 'X',
#   then '1'; then '1' for the run of one.
HAND = [
    (np.array([[0, 1, 1, 1], [0, 1, 0, 1]]), [2, 3, 1, 2], "231O"),
    (np.ones((2, 2)), [0, 4], "04"),
    (np.eye(1, 41, 40), [40, 1], "X11"),
]


@pytest.mark.parametrize("mask, runs, counts", HAND)
def test_rle_hand_computed(mask, runs, counts):
    rle = encode_rle(mask.astype(bool))
    assert rle == {"size": list(mask.shape), "counts": counts}
    assert np.array_equal(decode_rle(rle), mask.astype(bool))
    assert np.array_equal(decode_rle({"size": list(mask.shape), "counts": runs}), mask.astype(bool))
    assert np.array_equal(decode_rle({"size": list(mask.shape), "counts": counts.encode()}),
                          mask.astype(bool))


def test_rle_round_trip_and_bad_input():
    m = np.random.default_rng(0).random((37, 53)) > 0.6
    assert np.array_equal(decode_rle(encode_rle(m)), m)
    with pytest.raises(ValueError, match="sum"):
        decode_rle({"size": [2, 3], "counts": [2, 3]})
    with pytest.raises(ValueError, match="size"):
        decode_rle({"counts": "231O"})
    with pytest.raises(ValueError, match="2-D"):
        encode_rle(np.zeros((2, 2, 2)))


def test_resize_center_crop_nearest_exact():
    m = np.zeros((200, 300), np.uint8)
    m[20:60, 100:140] = 1
    out = resize_center_crop(m, 100, nearest=True)  # 100 x 150, then 25 px cut on each side
    exp = np.zeros((100, 100), np.uint8)
    exp[10:30, 25:45] = 1
    assert np.array_equal(out, exp)
    stack = np.repeat(m[:, :, None], 300, axis=2)  # more channels than OpenCV resizes at once
    assert np.array_equal(resize_center_crop(stack, 100, nearest=True)[:, :, 299], exp)


def _write_sa1b(folder, stem, h=200, w=300, n_masks=5):
    folder.mkdir(parents=True, exist_ok=True)
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 0] = 200
    cv2.imwrite(str(folder / f"{stem}.jpg"), img[:, :, ::-1])
    anns = []
    for k in range(n_masks):
        m = np.zeros((h, w), bool)
        m[20 + 10 * k:60 + 10 * k, 100:140] = True
        anns.append({"id": k, "segmentation": encode_rle(m), "area": int(m.sum()),
                     "bbox": [100.0, 20.0 + 10 * k, 40.0, 40.0], "predicted_iou": 0.9,
                     "stability_score": 0.95, "point_coords": [[120.0, 40.0 + 10 * k]],
                     "crop_box": [0.0, 0.0, float(w), float(h)]})
    rec = {"image": {"image_id": 1, "width": w, "height": h, "file_name": f"{stem}.jpg"},
           "annotations": anns}
    (folder / f"{stem}.json").write_text(json.dumps(rec))


def test_sa1b_item_masks_order_and_limits(tmp_path):
    _write_sa1b(tmp_path / "sa1b", "sa_2")
    _write_sa1b(tmp_path / "sa1b", "sa_1", n_masks=2)
    ds = SA1BDataset(tmp_path, 100, max_masks=3)
    assert [p.name for p in ds.paths] == ["sa_1.jpg", "sa_2.jpg"]  # sorted, not glob order
    item = ds[1]
    assert item["name"] == "sa_2" and item["image"].shape == (3, 100, 100)
    assert item["image"].dtype == torch.float32 and 0 <= item["image"].min() <= 1
    assert abs(item["image"][0].mean().item() - 200 / 255) < 0.02
    assert item["masks"].shape == (3, 100, 100) and item["masks"].dtype == torch.bool
    for k in range(3):  # first three masks in JSON order, resized nearest and cropped
        exp = torch.zeros(100, 100, dtype=torch.bool)
        exp[10 + 5 * k:30 + 5 * k, 25:45] = True
        assert torch.equal(item["masks"][k], exp)
    assert len(SA1BDataset(tmp_path, 100, num_images=1)) == 1
    batch = collate_sa1b([ds[0], ds[1]])
    assert batch["masks"].shape == (2, 3, 100, 100)
    assert batch["valid"].tolist() == [[True, True, False], [True, True, True]]
    assert not batch["masks"][0, 2].any()
    ref = to_reference_padding(batch["masks"], batch["valid"])
    assert (ref[0, 2] == -1).all() and set(ref[1].unique().tolist()) == {0.0, 1.0}
    assert collate_sa1b([ds[0]], pad_to=150)["valid"].shape == (1, 150)
    with pytest.raises(ValueError, match="pad_to"):
        collate_sa1b([ds[1]], pad_to=2)


def test_sa1b_corrupt_files_skipped_and_counted(tmp_path):
    d = tmp_path / "sa1b"
    for stem in ("sa_1", "sa_2", "sa_3", "sa_4"):
        _write_sa1b(d, stem, n_masks=1)
    (d / "sa_2.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    (d / "sa_3.json").write_text("{not json")
    ds = SA1BDataset(tmp_path, 64)
    with pytest.warns(UserWarning, match="corrupt"):
        names = [ds[i]["name"] for i in range(len(ds))]  # a whole "epoch": no crash
    assert names == ["sa_1", "sa_4", "sa_4", "sa_4"] and ds.num_skipped == 2
    assert set(ds.skipped) == {"sa_2.jpg", "sa_3.jpg"}
    fresh = SA1BDataset(tmp_path, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert fresh.scan() == 2
    assert len(fresh) == 2 and fresh.num_skipped == 2


def test_sa1b_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="get_sa1b.py"):
        SA1BDataset(tmp_path / "none", 64)
    (tmp_path / "sa1b").mkdir()
    with pytest.raises(FileNotFoundError, match="no sa_"):
        SA1BDataset(tmp_path, 64)


def test_sa1b_reads_synthetic_layout(tmp_path):
    root = ensure_synthetic(tmp_path / "syn", num_images=5, size=64, seed=1, progress=False)
    ds = SA1BDataset(root / "SA1B", 56)
    assert len(ds) == 4
    item = ds[0]
    assert item["image"].shape == (3, 56, 56)
    assert (item["masks"].sum(0) == 1).all()  # the synthetic regions partition the image


def test_image_folder(tmp_path):
    for k in range(2):
        cv2.imwrite(str(tmp_path / f"im{k}.png"), np.full((30, 50, 3), 40 * k, np.uint8))
    (tmp_path / "im2.jpg").write_bytes(b"garbage")
    (tmp_path / "notes.txt").write_text("x")
    ds = ImageFolderDataset(tmp_path, 16)
    assert len(ds) == 3
    with pytest.warns(UserWarning, match="im2.jpg"):
        items = [ds[i] for i in range(3)]
    assert [it["name"] for it in items] == ["im0", "im1", "im0"]
    assert items[1]["image"].shape == (3, 16, 16) and ds.num_skipped == 1
    with pytest.raises(FileNotFoundError):
        ImageFolderDataset(tmp_path / "empty", 16)


def test_parse_links(tmp_path):
    tsv = tmp_path / "links.tsv"
    tsv.write_text("file_name\tcdn_link\nsa_000000.tar\thttps://cdn.example/a?sig=1\n"
                   "sa_000001.tar\thttps://cdn.example/b?sig=2\n\n")
    assert parse_links(tsv) == [("sa_000000.tar", "https://cdn.example/a?sig=1"),
                                ("sa_000001.tar", "https://cdn.example/b?sig=2")]
    plain = tmp_path / "links.txt"
    plain.write_text("# my links\nhttps://cdn.example/x/sa_000007.tar?Expires=9&Sig=z\n")
    assert parse_links(plain) == [("sa_000007.tar",
                                   "https://cdn.example/x/sa_000007.tar?Expires=9&Sig=z")]
    bad = tmp_path / "bad.txt"
    bad.write_text("just words\n")
    with pytest.raises(ValueError, match="not a URL"):
        parse_links(bad)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        parse_links(tmp_path / "empty.txt")
    evil = tmp_path / "evil.tsv"
    evil.write_text("file_name\tcdn_link\n../x.tar\thttps://a/b\n")
    with pytest.raises(ValueError, match="unsafe"):
        parse_links(evil)


def _shard(path, stems):
    src = path.parent / f"{path.stem}_src"
    with tarfile.open(path, "w") as tf:
        for stem in stems:
            _write_sa1b(src, stem, h=40, w=60, n_masks=1)
            tf.add(src / f"{stem}.jpg", arcname=f"./{stem}.jpg")
            tf.add(src / f"{stem}.json", arcname=f"./{stem}.json")
        info = tarfile.TarInfo("./README")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    return path


def test_fetch_sa1b_first_n_from_file_urls(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBE_LIB_CACHE", str(tmp_path / "cache"))
    s0 = _shard(tmp_path / "sa_000000.tar", ["sa_1", "sa_2"])
    s1 = _shard(tmp_path / "sa_000001.tar", ["sa_3", "sa_4"])
    links = tmp_path / "links.tsv"
    links.write_text(f"file_name\tcdn_link\nsa_000000.tar\t{s0.as_uri()}\n"
                     f"sa_000001.tar\t{s1.as_uri()}\n")
    root = tmp_path / "SA1B"
    assert fetch_sa1b(links, root, 3, progress=False) == 3
    assert sorted(p.name for p in (root / "sa1b").iterdir()) == [
        "sa_1.jpg", "sa_1.json", "sa_2.jpg", "sa_2.json", "sa_3.jpg", "sa_3.json"]
    assert not list((root / "_downloads").glob("*.tar"))  # shards removed after extraction
    assert json.loads((root / "shards_done.json").read_text()) == ["sa_000000.tar"]
    assert fetch_sa1b(links, root, 3, progress=False) == 3  # nothing to do
    s0.unlink()  # a completed shard is never needed again
    assert fetch_sa1b(links, root, 4, keep_shards=True, progress=False) == 4
    assert (root / "_downloads" / "sa_000001.tar").exists()
    assert len(SA1BDataset(root, 32)) == 4
    gone = tmp_path / "gone.tsv"
    gone.write_text(f"{(tmp_path / 'nope.tar').as_uri()}\n")
    with pytest.raises(Exception, match="expire"):
        fetch_sa1b(gone, tmp_path / "other", 1, progress=False)


def test_rle_counts_and_sampled_decoding_match_pycocotools():
    from probe_lib.data.sa1b import decode_rle_at, rle_counts

    for mask, runs, counts in HAND:
        assert rle_counts({"size": list(mask.shape), "counts": counts})[2].tolist() == runs
    rng = np.random.default_rng(3)
    for h, w in ((57, 91), (200, 31), (1, 1)):
        # blocky random masks give long runs, so multi-group and negative deltas both occur
        m = cv2.resize((rng.random((6, 5)) > 0.5).astype(np.uint8), (w, h),
                       interpolation=cv2.INTER_NEAREST).astype(bool)
        m[rng.integers(0, h), rng.integers(0, w)] ^= True
        rle = encode_rle(m)
        rows = np.sort(rng.integers(0, h, 17))
        cols = np.sort(rng.integers(0, w, 13))
        assert np.array_equal(decode_rle_at(rle, rows, cols), m[rows][:, cols])
        assert np.array_equal(decode_rle_at(rle, np.arange(h), np.arange(w)), decode_rle(rle))
    with pytest.raises(ValueError, match="outside"):
        decode_rle_at(encode_rle(np.ones((2, 2), bool)), np.array([2]), np.array([0]))


def test_sa1b_mask_of_wrong_size_is_skipped(tmp_path):
    d = tmp_path / "sa1b"
    _write_sa1b(d, "sa_1", n_masks=1)
    _write_sa1b(d, "sa_2", n_masks=1)
    rec = json.loads((d / "sa_1.json").read_text())
    rec["annotations"][0]["segmentation"] = encode_rle(np.ones((10, 10), bool))
    (d / "sa_1.json").write_text(json.dumps(rec))
    ds = SA1BDataset(tmp_path, 32)
    with pytest.warns(UserWarning, match=r"sa_1\.json"):
        assert ds[0]["name"] == "sa_2"
    assert ds.num_skipped == 1
