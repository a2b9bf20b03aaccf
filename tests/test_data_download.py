"""Downloader: file:// and local-HTTP fixtures, resume, sha256 (manifest and trust on first use),
safe unpacking, mirrors then manual instructions, the restricted SBD-weights unpickler."""

import http.server
import io
import json
import os
import pickle
import tarfile
import threading
import zipfile

import cv2
import numpy as np
import pytest

from probe_lib.data import download as dl
from probe_lib.data.is_datasets import get_dataset
from probe_lib.data.sbd_weights import (
    convert_weights_pickle,
    load_sample_records,
    load_sample_weights,
    restricted_load,
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBE_LIB_CACHE", str(tmp_path / "cache"))


def _blob(n=300_000):
    return np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_file_url_download_records_hash_on_first_use(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(_blob())
    dest = dl.download_file(src.as_uri(), tmp_path / "out" / "a.bin", progress=False)
    assert dest.read_bytes() == src.read_bytes()
    rec = json.loads(dl.hashes_path().read_text())["a.bin"]
    assert rec["sha256"] == dl.sha256_file(src) and rec["size"] == src.stat().st_size
    # a changed upstream file no longer matches the recorded hash
    dest.unlink()
    src.write_bytes(_blob()[:-1] + b"x")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        dl.download_file(src.as_uri(), tmp_path / "out" / "a.bin", progress=False)
    assert not dest.exists()
    assert dl.partial_path(dest, src.as_uri()).with_suffix(".part.bad").exists()


def test_manifest_hash_wins(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello")
    with pytest.raises(ValueError, match="manifest"):
        dl.download_file(src.as_uri(), tmp_path / "b.bin", sha256="0" * 64, progress=False)
    good = dl.sha256_file(src)
    assert dl.download_file(src.as_uri(), tmp_path / "c.bin", sha256=good, progress=False)


def test_resume_from_part_file(tmp_path):
    data = _blob()
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    same = {"url": src.as_uri(), "size": len(data), "mtime_ns": src.stat().st_mtime_ns}
    part = dl.partial_path(tmp_path / "d.bin", src.as_uri())
    part.write_bytes(data[:123_457])
    part.with_name(part.name + ".json").write_text(json.dumps(same))
    dl.download_file(src.as_uri(), tmp_path / "d.bin", progress=False)
    assert (tmp_path / "d.bin").read_bytes() == data
    # a stale partial longer than the file starts over instead of failing forever
    part = dl.partial_path(tmp_path / "e.bin", src.as_uri())
    part.write_bytes(data + b"extra")
    part.with_name(part.name + ".json").write_text(json.dumps(same))
    dl.download_file(src.as_uri(), tmp_path / "e.bin", key="d.bin", progress=False)
    assert (tmp_path / "e.bin").read_bytes() == data


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    data = b""
    ranges: list = []  # noqa: RUF012 - reset by the test that uses it

    def do_GET(self):
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = self.data[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(self.data) - 1}/{len(self.data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_http_range_resume(tmp_path):
    data = _blob(200_000)
    _RangeHandler.data, _RangeHandler.ranges = data, []
    srv = http.server.HTTPServer(("127.0.0.1", 0), _RangeHandler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        url = f"http://127.0.0.1:{srv.server_port}/f.bin"
        part = dl.partial_path(tmp_path / "f.bin", url)
        part.write_bytes(data[:50_000])
        part.with_name(part.name + ".json").write_text(json.dumps({"size": len(data)}))
        dl.download_file(url, tmp_path / "f.bin", progress=False)
    finally:
        srv.shutdown()
    assert _RangeHandler.ranges == ["bytes=50000-"]
    assert (tmp_path / "f.bin").read_bytes() == data


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_safe_extract_refuses_traversal_and_links(tmp_path):
    bad = _zip(tmp_path / "bad.zip", {"ok.txt": b"1", "../evil.txt": b"2"})
    with pytest.raises(ValueError, match=r"\.\./evil"):
        dl.safe_extract(bad, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "ok.txt").exists()
    absz = _zip(tmp_path / "abs.zip", {"/etc/evil": b"x"})
    with pytest.raises(ValueError, match="absolute"):
        dl.safe_extract(absz, tmp_path / "out")
    tpath = tmp_path / "link.tar"
    with tarfile.open(tpath, "w") as tf:
        info = tarfile.TarInfo("link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(ValueError, match="link"):
        dl.safe_extract(tpath, tmp_path / "out2")
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tf:
        payload = b"abc"
        info = tarfile.TarInfo("d/x.txt")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    written = dl.safe_extract(good, tmp_path / "out3")
    assert [p.read_bytes() for p in written] == [b"abc"]


def _grabcut_zip(path):
    buf = {}
    img = np.full((10, 12, 3), 90, np.uint8)
    mask = np.zeros((10, 12), np.uint8)
    mask[2:8, 3:9] = 255
    mask[0, :] = 128
    buf["GrabCut/data_GT/a.bmp"] = cv2.imencode(".bmp", img)[1].tobytes()
    buf["GrabCut/boundary_GT/a.bmp"] = cv2.imencode(".bmp", mask)[1].tobytes()
    return _zip(path, buf)


def test_fetch_dataset_mirror_unpack_idempotent_verify(tmp_path, capsys):
    z = _grabcut_zip(tmp_path / "GrabCut.zip")
    man = {"GrabCut": {"description": "t", "license": "t", "citation": "t", "manual": "ask",
                       "files": [{"name": "GrabCut.zip", "url": (tmp_path / "gone.zip").as_uri(),
                                  "mirrors": [z.as_uri()], "sha256": None}]}}
    root = tmp_path / "data"
    target = dl.fetch_dataset("grabcut", root, manifest=man, progress=False)
    assert target == root / "GrabCut"
    ds = get_dataset("GrabCut", root=target)
    _, gt, _ = ds.get_instance(0)
    assert (gt == 1).sum() == 36 and (gt == -1).sum() == 12
    stamp = (target / ".GrabCut.zip.done").stat().st_mtime_ns
    dl.fetch_dataset("GrabCut", root, manifest=man, progress=False)  # no-op, only verifies
    assert (target / ".GrabCut.zip.done").stat().st_mtime_ns == stamp
    dl.fetch_dataset("GrabCut", root, manifest=man, verify_only=True)
    assert "OK (recorded sha256)" in capsys.readouterr().out
    # tampering with the archive is caught by --verify-only
    (root / "_downloads" / "GrabCut.zip").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        dl.fetch_dataset("GrabCut", root, manifest=man, verify_only=True)


def test_all_urls_fail_gives_manual_instructions(tmp_path):
    man = {"X": {"description": "t", "license": "t", "citation": "t", "manual": "see the page",
                 "files": [{"name": "x.zip", "url": (tmp_path / "a.zip").as_uri(),
                            "mirrors": [(tmp_path / "b.zip").as_uri()], "sha256": None}]}}
    with pytest.raises(dl.DownloadError, match=r"(?s)a\.zip.*b\.zip.*by hand.*see the page.*"
                                               r"_downloads/x\.zip"):
        dl.fetch_dataset("X", tmp_path / "data", manifest=man, progress=False)
    with pytest.raises(ValueError, match="unknown dataset"):
        dl.fetch_dataset("Y", tmp_path / "data", manifest=man)


def test_repo_manifest_is_complete():
    man = dl.load_manifest()
    for name in ("SBD", "GrabCut", "Berkeley", "DAVIS", "COCO_MVal", "PascalVOC", "sbd_weights"):
        entry = man[name]
        assert entry["license"] and entry["citation"] and entry["files"]
        for f in entry["files"]:
            assert f["url"].startswith("http") and "sha256" in f and "mirrors" in f


def test_cli_verify_only_missing_archive(tmp_path, capsys):
    rc = dl.main(["GrabCut", "--root", str(tmp_path), "--verify-only"])
    assert rc == 1 and "nothing to verify" in capsys.readouterr().err


# ----------------------------------------------------------------------------- SBD weights

RECORDS = [(2, "2008_000003", 0.5), (0, "2008_000001", 0.9), (1, "2008_000002", 0.0)]


def test_sbd_weights_convert_and_probabilities(tmp_path):
    pkl = tmp_path / "w.pkl"
    pkl.write_bytes(pickle.dumps(RECORDS, protocol=2))
    js = convert_weights_pickle(pkl, tmp_path / "w.json")
    assert load_sample_records(js) == RECORDS
    p = load_sample_weights(js)
    w = np.array([0.1 ** 1.25, 1.0, 0.5 ** 1.25])  # indexed by train.txt position
    np.testing.assert_allclose(p, w / w.sum(), rtol=1e-12)


def test_sbd_weights_numpy_scalars_admitted(tmp_path):
    recs = [(0, "a", np.float64(0.25)), (1, "b", np.float32(0.5))]
    pkl = tmp_path / "np.pkl"
    pkl.write_bytes(pickle.dumps(recs))
    js = convert_weights_pickle(pkl, tmp_path / "np.json")
    assert load_sample_records(js) == [(0, "a", 0.25), (1, "b", 0.5)]


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_malicious_pickle_refused(tmp_path):
    flag = tmp_path / "pwned"
    with pytest.raises(ValueError, match="refus"):
        restricted_load(pickle.dumps([(0, "a", 0.1), _Evil(flag)]))
    assert not flag.exists()
    # hand-written protocol-0 GLOBAL + REDUCE opcodes
    raw = f"cos\nsystem\n(S'touch {flag}'\ntR.".encode()
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(raw)
    with pytest.raises(ValueError, match="os.system"):
        convert_weights_pickle(pkl, tmp_path / "evil.json")
    assert not flag.exists() and not (tmp_path / "evil.json").exists()
    # an object dtype smuggled through the NumPy shim is refused too
    with pytest.raises(ValueError, match="refus"):
        restricted_load(pickle.dumps(np.array([1], dtype=object)[0:1]))


def test_sbd_weights_through_manifest(tmp_path):
    src = tmp_path / "sbd_samples_weights.pkl"
    src.write_bytes(pickle.dumps(RECORDS))
    man = {"sbd_weights": {"description": "t", "license": "MIT", "citation": "t",
                           "extract_to": "SBD",
                           "files": [{"name": "sbd_samples_weights.pkl", "url": src.as_uri(),
                                      "sha256": None, "unpack": False,
                                      "convert": "sbd_weights"}]}}
    target = dl.fetch_dataset("sbd_weights", tmp_path / "data", manifest=man, progress=False)
    assert len(load_sample_weights(target / "sbd_samples_weights.json")) == 3


def test_sbd_weights_default_location(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBE_LIB_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="download.py sbd_weights"):
        load_sample_weights()
    pkl = tmp_path / "w.pkl"
    pkl.write_bytes(pickle.dumps(RECORDS))
    convert_weights_pickle(pkl, tmp_path / "SBD" / "sbd_samples_weights.json")
    assert load_sample_records() == RECORDS


def _script(repo_root, name):
    import runpy

    return runpy.run_path(str(repo_root / "data_scripts" / name), run_name="data_script")["main"]


def test_scripts_command_lines(tmp_path, repo_root, capsys, monkeypatch):
    monkeypatch.setenv("PROBE_LIB_DATA", str(tmp_path / "data"))
    assert _script(repo_root, "download.py")(["--list"]) == 0
    assert "GrabCut" in capsys.readouterr().out
    make = _script(repo_root, "make_synthetic.py")
    assert make(["--root", str(tmp_path / "syn"), "--num-images", "3", "--size", "48"]) == 0
    assert (tmp_path / "syn" / "SBD" / "dataset" / "train.txt").read_text().split() == [
        "syn_000000", "syn_000001"]
    get_sa1b = _script(repo_root, "get_sa1b.py")
    assert get_sa1b(["--links", str(tmp_path / "missing.tsv"), "-n", "1"]) == 1
    assert "links file not found" in capsys.readouterr().err


def test_manifest_ships_inside_the_package():
    """A non-editable install has no data_scripts/: the manifest is package data."""
    from pathlib import Path

    import tomllib

    import probe_lib
    from probe_lib.data.download import default_manifest_path, load_manifest

    pkg = Path(probe_lib.__file__).resolve().parent
    path = default_manifest_path()
    assert path.is_relative_to(pkg) and path.is_file()
    assert "GrabCut" in load_manifest()
    root = pkg.parent
    if (root / "pyproject.toml").is_file():
        conf = tomllib.loads((root / "pyproject.toml").read_text())
        declared = conf["tool"]["setuptools"]["package-data"]["probe_lib.data"]
        assert path.name in declared
