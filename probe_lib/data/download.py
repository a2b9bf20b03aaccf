"""Shared downloader for ``data_scripts/``: resumable, checksummed, safe unpacking.

* :func:`download_file` -- HTTP(S) with ``Range`` resume of a per-URL partial file
  ``<file>.<url hash>.part`` (``file://`` URLs resume by seeking), a tqdm bar, sha256
  verification. A partial is continued only from the URL that started it and only when the
  source is provably the same file (same size, and the same ETag / Last-Modified for HTTP, sent
  as ``If-Range``; same size and mtime for ``file://``); otherwise the download starts over.
* Hashes: a sha256 in ``probe_lib/data/manifest.json`` wins; when it is null the hash of a file
  fetched in one uninterrupted transfer is recorded in ``$PROBE_LIB_CACHE/hashes.json`` (trust on
  first use) and every later download or ``--verify-only`` run is checked against it. A resumed
  download is never recorded. ``--forget-hash NAME`` deletes a record.
* :func:`safe_extract` -- zip/tar unpacking that refuses absolute paths, ``..`` components,
  links and device files (no path traversal).
* :func:`fetch_dataset` -- one manifest entry end to end: each URL in turn (original, then the
  alternatives), then manual instructions naming where to put the file.
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import json
import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

from probe_lib.utils import atomic_write_json, cache_dir, data_root

CHUNK = 1 << 20
USER_AGENT = "probe_lib-data-scripts/0.1"


class DownloadError(RuntimeError):
    """Every URL for a file failed; the message says how to get it by hand."""


def default_manifest_path() -> Path:
    """The manifest shipped inside the package (package data), so a non-editable install has it."""
    return Path(__file__).resolve().parent / "manifest.json"


def load_manifest(path: str | os.PathLike | None = None) -> dict:
    """The dataset manifest (name -> entry with ``files``, ``license``, ``citation``, ...)."""
    path = Path(path) if path is not None else default_manifest_path()
    if not path.is_file():
        raise FileNotFoundError(f"dataset manifest not found: {path} (expected "
                                "probe_lib/data/manifest.json in the repository)")
    try:
        man = json.loads(path.read_text())
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        raise ValueError(f"dataset manifest {path} is not valid JSON ({e}); restore it (git "
                         "checkout probe_lib/data/manifest.json) or fix the file") from e
    if not isinstance(man, dict):
        raise ValueError(  # noqa: TRY004 - a bad file, reported like the JSON error above
            f"dataset manifest {path} must be a JSON object of dataset entries, got "
            f"{type(man).__name__}")
    return man


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def hashes_path() -> Path:
    """Trust-on-first-use record: ``$PROBE_LIB_CACHE/hashes.json``."""
    return cache_dir() / "hashes.json"


def _read_hashes() -> dict:
    try:
        return json.loads(hashes_path().read_text())
    except (OSError, ValueError):
        return {}


def expected_sha256(key: str, manifest_sha: str | None) -> tuple[str | None, str]:
    """The hash to verify against and where it comes from (``manifest``, ``recorded``, ``none``)."""
    if manifest_sha:
        return manifest_sha.lower(), "manifest"
    rec = _read_hashes().get(key)
    if rec:
        return rec["sha256"], "recorded"
    return None, "none"


def record_sha256(key: str, sha: str, size: int, url: str) -> None:
    """Remember a file's sha256 (trust on first use) in :func:`hashes_path`."""
    hashes = _read_hashes()
    hashes[key] = {"sha256": sha, "size": size, "url": url}
    atomic_write_json(hashes, hashes_path())


def forget_hash(key: str) -> list[str]:
    """Delete recorded hashes: ``key`` is an exact record key (``"GrabCut/GrabCut.zip"``) or a
    dataset name (every ``"<name>/..."`` record, case-insensitive). Returns the removed keys."""
    hashes = _read_hashes()
    gone = [k for k in hashes if k == key or k.lower().startswith(key.lower().rstrip("/") + "/")]
    for k in gone:
        del hashes[k]
    if gone:
        atomic_write_json(hashes, hashes_path())
    return gone


def verify_file(path: str | os.PathLike, key: str, manifest_sha: str | None = None,
                record: bool = True, url: str = "") -> str:
    """Check ``path`` against the manifest or recorded sha256; record it on first use.

    Args:
        record: record the hash when none is known (only for a file fetched in one transfer).
    Returns:
        ``"manifest"`` / ``"recorded"`` when it matched, ``"first-use"`` when newly recorded,
        ``"none"`` when no hash is known and none was recorded.
    Raises:
        ValueError naming the file, both hashes and how to recover on a mismatch.
    """
    path = Path(path)
    sha = sha256_file(path)
    want, source = expected_sha256(key, manifest_sha)
    if want is None:
        if record:
            record_sha256(key, sha, path.stat().st_size, url)
            return "first-use"
        return "none"
    if sha != want:
        if source == "manifest":
            advice = ("The manifest's hash (probe_lib/data/manifest.json) is authoritative: the "
                      "download is corrupt or the upstream file changed. Delete the file and "
                      "download again; if it still differs, the source changed.")
        else:
            advice = (f"The expected hash was recorded on first use in {hashes_path()} (key "
                      f"{key!r}). If that record is the wrong one, clear it with `python "
                      f"data_scripts/download.py --forget-hash {key}` and download again; "
                      "otherwise delete the file and download again.")
        raise ValueError(f"sha256 mismatch for {path}: got {sha}, expected {want} ({source} "
                         f"hash). {advice}")
    return source


def partial_path(dest: str | os.PathLike, url: str) -> Path:
    """The partial file of ``dest`` downloaded from ``url``: ``<dest>.<sha256(url)[:12]>.part``
    (one per source, so a mirror never continues another URL's bytes)."""
    dest = Path(dest)
    return dest.with_name(f"{dest.name}.{hashlib.sha256(url.encode()).hexdigest()[:12]}.part")


def _source_of(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _same_source(expect: dict | None, got: dict) -> bool:
    """The partial was started on the same file: equal size and equal validators (ETag,
    Last-Modified, mtime; a validator offered on one side only counts as a difference)."""
    if not expect or expect.get("size") is None or expect.get("size") != got.get("size"):
        return False
    return all(expect.get(k) == got.get(k) for k in ("etag", "last_modified", "mtime_ns"))


def _open(url: str, offset: int, timeout: float, expect: dict | None):
    """Open ``url``, continuing at byte ``offset`` only if the source matches ``expect``.

    Returns:
        ``(stream, validators, resumed)``; ``validators`` holds ``size`` and ``etag`` /
        ``last_modified`` (HTTP) or ``mtime_ns`` (file://). When not ``resumed`` the stream starts
        at byte 0.
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        local = Path(urllib.request.url2pathname(parsed.path))
        f = open(local, "rb")  # noqa: SIM115 - returned to the caller, closed there
        st = os.fstat(f.fileno())
        got = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        resumed = bool(offset) and _same_source(expect, got) and offset <= st.st_size
        f.seek(offset if resumed else 0)
        return f, got, resumed
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset and expect:
        req.add_header("Range", f"bytes={offset}-")
        etag = expect.get("etag")
        if etag and not etag.startswith("W/"):
            req.add_header("If-Range", etag)  # the server sends the whole file if it changed
        elif expect.get("last_modified"):
            req.add_header("If-Range", expect["last_modified"])
    resp = urllib.request.urlopen(req, timeout=timeout)  # URLs come from the manifest
    length = resp.headers.get("Content-Length")
    got = {"etag": resp.headers.get("ETag"), "last_modified": resp.headers.get("Last-Modified"),
           "size": int(length) if length else None}
    if resp.status == 206:
        crange = resp.headers.get("Content-Range", "")  # "bytes START-END/TOTAL"
        try:
            start = int(crange.split()[1].split("-")[0])
            got["size"] = int(crange.rsplit("/", 1)[1])
        except (IndexError, ValueError):
            start, got["size"] = -1, None
        if start == offset and _same_source(expect, got):
            return resp, got, True
        resp.close()  # another file, or a range we did not ask for: start over
        return _open(url, 0, timeout, None)
    return resp, got, False


def download_file(url: str, dest: str | os.PathLike, *, sha256: str | None = None,
                  key: str | None = None, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (resumable), verify it, and return ``dest``.

    A partial download lives in :func:`partial_path` with the source's size and validators
    beside it (``<partial>.json``); a later call from the same URL continues it only when the
    server proves it is the same file (206 at the right offset, same size and ETag/Last-Modified;
    ``If-Range`` makes a changed file come back whole). Anything else starts over. The result is
    verified against ``sha256`` (or the trust-on-first-use record under ``key``, default the file
    name) and renamed to ``dest``; a hash is recorded on first use only for a file fetched in one
    transfer, never for a resumed one. An existing ``dest`` is only verified (never recorded).

    Raises:
        DownloadError: incomplete or interrupted transfer (rerun to resume).
        ValueError: sha256 mismatch (the file is kept as ``<partial>.bad``).
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    key = key or dest.name
    if dest.is_file():
        verify_file(dest, key, sha256, record=False, url=url)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, meta_path = partial_path(dest, url), _source_of(partial_path(dest, url))
    try:
        expect = json.loads(meta_path.read_text()) if part.is_file() else None
    except (OSError, ValueError):
        expect = None  # a partial without its source record is never continued
    offset = part.stat().st_size if expect else 0
    try:
        stream, got, resumed = _open(url, offset, timeout, expect)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not offset:  # 416: the partial is not a prefix we can extend
            raise
        stream, got, resumed = _open(url, 0, timeout, None)
    if not resumed:
        offset = 0
        atomic_write_json({"url": url, **got}, meta_path)
    try:
        with open(part, "ab" if resumed else "wb") as out, tqdm(
                total=got.get("size"), initial=offset, unit="B", unit_scale=True,
                unit_divisor=1024, desc=dest.name, disable=not progress) as bar:
            for block in iter(lambda: stream.read(CHUNK), b""):
                out.write(block)
                bar.update(len(block))
    except (http.client.HTTPException, OSError) as e:
        raise DownloadError(f"download of {url} interrupted after {part.stat().st_size} bytes "
                            f"({type(e).__name__}: {e}); {part} is kept: run again to resume "
                            "from the same URL") from e
    finally:
        stream.close()
    size = part.stat().st_size
    if got.get("size") is not None and size != got["size"]:
        raise DownloadError(f"incomplete download of {url}: {size} of {got['size']} "
                            f"bytes in {part}; run again to resume")
    try:
        source = verify_file(part, key, sha256, record=not resumed, url=url)
    except ValueError:
        bad = part.with_name(part.name + ".bad")
        os.replace(part, bad)
        meta_path.unlink(missing_ok=True)
        raise
    if source == "none":
        print(f"{dest.name}: no sha256 recorded, because this download was resumed from an "
              "earlier session (only a file fetched in one transfer is trusted on first use)")
    os.replace(part, dest)
    meta_path.unlink(missing_ok=True)
    for other in dest.parent.glob(f"{glob.escape(dest.name)}.*.part*"):
        if not other.name.endswith(".bad"):
            other.unlink(missing_ok=True)  # partials from other sources are now useless
    return dest


# ----------------------------------------------------------------------------- unpacking

def _inside(base: Path, name: str) -> Path:
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ValueError(f"archive member {name!r} has an absolute path; refusing to unpack")
    parts = Path(name.replace("\\", "/")).parts
    if ".." in parts:
        raise ValueError(f"archive member {name!r} escapes the destination ('..'); refusing")
    target = (base / name).resolve()
    if target != base and base not in target.parents:
        raise ValueError(f"archive member {name!r} would land outside {base}; refusing")
    return target


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike,
                 members: list[str] | None = None) -> list[Path]:
    """Unpack a zip or tar(.gz/.bz2/.xz) archive into ``dest`` without path traversal.

    Every member is checked before anything is written: absolute paths, ``..`` components,
    symbolic/hard links and device files raise a ValueError naming the member.

    Args:
        members: optional list of member names to extract (others are skipped).
    Returns:
        The paths written (files only).
    """
    archive = Path(archive)
    try:
        return _safe_extract(archive, dest, members)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        # a truncated .tar.gz ends in EOFError deep inside gzip: name the file, say what to do
        raise ValueError(f"archive {archive} is truncated or corrupt ({type(e).__name__}: {e}); "
                         "delete it and download it again") from e


def _safe_extract(archive: Path, dest: str | os.PathLike, members: list[str] | None
                  ) -> list[Path]:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    base = dest.resolve()
    wanted = set(members) if members is not None else None
    written = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if wanted is None or i.filename in wanted]
            for info in infos:
                _inside(base, info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise ValueError(f"archive member {info.filename!r} is a symbolic link; "
                                     "refusing to unpack")
            for info in infos:
                target = _inside(base, info.filename)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                written.append(target)
        return written
    if not tarfile.is_tarfile(archive):
        raise ValueError(f"{archive} is neither a zip nor a tar archive")
    with tarfile.open(archive) as tf:
        infos = [m for m in tf.getmembers() if wanted is None or m.name in wanted]
        for m in infos:
            _inside(base, m.name)
            if not (m.isfile() or m.isdir()):
                raise ValueError(f"archive member {m.name!r} is a link or special file; "
                                 "refusing to unpack")
        for m in infos:
            target = _inside(base, m.name)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            with src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
            written.append(target)
    return written


# ----------------------------------------------------------------------------- datasets

def _manual_instructions(name: str, entry: dict, fname: str, dest: Path, errors: list[str]) -> str:
    urls = [f["url"] for f in entry["files"] if f["name"] == fname]
    urls += [u for f in entry["files"] if f["name"] == fname for u in f.get("mirrors", [])]
    lines = [f"could not download {fname} for {name}:"]
    lines += [f"  {e}" for e in errors]
    lines += ["Get it by hand from one of:"] + [f"  {u}" for u in urls]
    if entry.get("manual"):
        lines.append(f"  ({entry['manual']})")
    lines.append(f"and save it as {dest}, then rerun the same command (it verifies and unpacks).")
    return "\n".join(lines)


def fetch_dataset(name: str, root: str | os.PathLike | None = None, *,
                  manifest: dict | str | os.PathLike | None = None, verify_only: bool = False,
                  progress: bool = True) -> Path:
    """Download, verify and unpack one manifest entry; idempotent.

    Layout: archives go to ``<root>/_downloads/``; an archive is unpacked into
    ``<root>/<entry["extract_to"]>`` (default the entry name) once (a marker file records it).
    Files with ``"unpack": false`` are copied there as they are; ``"convert": "sbd_weights"``
    additionally writes the JSON form (:mod:`probe_lib.data.sbd_weights`).

    Args:
        name: manifest key (e.g. ``"GrabCut"``), case-insensitive.
        root: data root (default ``data_root()``).
        manifest: the manifest dict or its path (default ``probe_lib/data/manifest.json``).
        verify_only: check the downloaded files against their hashes; download nothing.

    Returns:
        The dataset folder ``<root>/<extract_to>``.
    """
    man = manifest if isinstance(manifest, dict) else load_manifest(manifest)
    keys = {k.lower(): k for k in man if not k.startswith("_")}
    if name.lower() not in keys:
        raise ValueError(f"unknown dataset {name!r}; the manifest has: {', '.join(sorted(keys.values()))}")
    name = keys[name.lower()]
    entry = man[name]
    root = Path(root) if root is not None else data_root()
    downloads = root / "_downloads"
    target = root / entry.get("extract_to", name)
    for f in entry["files"]:
        fname = f["name"]
        archive = downloads / fname
        hkey = f"{name}/{fname}"
        if verify_only:
            if not archive.is_file():
                raise FileNotFoundError(f"{archive} not found; nothing to verify (download it "
                                        f"with `python data_scripts/download.py {name}`)")
            src = verify_file(archive, hkey, f.get("sha256"), record=False)
            if src == "none":
                print(f"{archive}: no hash known yet (manifest sha256 is null, none recorded)")
            else:
                print(f"{archive}: OK ({src} sha256)")
            continue
        marker = target / f".{fname}.done"
        if marker.is_file() and archive.is_file():
            verify_file(archive, hkey, f.get("sha256"), record=False)
            continue
        errors = []
        for url in [f["url"], *f.get("mirrors", [])]:
            try:
                download_file(url, archive, sha256=f.get("sha256"), key=hkey, progress=progress)
                break
            except ValueError:
                raise  # a hash mismatch is never papered over by trying another mirror
            except (OSError, urllib.error.URLError, DownloadError) as e:
                errors.append(f"{url}: {e}")
        else:
            raise DownloadError(_manual_instructions(name, entry, fname, archive, errors))
        if f.get("unpack", True):
            safe_extract(archive, target)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(archive, target / fname)
        if f.get("convert") == "sbd_weights":
            from probe_lib.data.sbd_weights import convert_weights_pickle

            convert_weights_pickle(target / fname, target / Path(fname).with_suffix(".json").name)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(sha256_file(archive) + "\n")
    return target


# ----------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    """Command line of ``data_scripts/download.py`` (see its docstring)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(
        description="Download, verify and unpack the datasets of probe_lib/data/manifest.json")
    ap.add_argument("names", nargs="*", help="manifest names (e.g. GrabCut DAVIS) or 'all'")
    ap.add_argument("--root", default=None, help="data root (default: probe_lib.utils.data_root())")
    ap.add_argument("--manifest", default=None, help="manifest path (default data_scripts/...)")
    ap.add_argument("--verify-only", action="store_true", help="check hashes, download nothing")
    ap.add_argument("--list", action="store_true", help="list the datasets and exit")
    ap.add_argument("--forget-hash", metavar="NAME", action="append", default=[],
                    help="delete the trust-on-first-use sha256 recorded for a dataset (or one "
                         "'DATASET/FILE' key), e.g. after a bad download was recorded")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    for key in args.forget_hash:
        gone = forget_hash(key)
        print(f"forgot recorded sha256 of {', '.join(gone)}" if gone else
              f"no recorded sha256 matches {key!r} (records are in {hashes_path()})")
    if args.forget_hash and not args.names:
        return 0
    man = load_manifest(args.manifest)
    names = [k for k in man if not k.startswith("_")]
    if args.list or not args.names:
        for k in names:
            size = sum(f.get("size_bytes") or 0 for f in man[k]["files"]) / 1e6
            print(f"{k:12s} ~{size:8.0f} MB  {man[k]['description']}")
            print(f"{'':12s} licence: {man[k]['license']}")
        return 0
    todo = names if args.names == ["all"] else args.names
    failed = []
    for name in todo:
        try:
            path = fetch_dataset(name, args.root, manifest=man, verify_only=args.verify_only,
                                 progress=not args.no_progress)
            if not args.verify_only:
                print(f"{name}: ready at {path}")
        except (DownloadError, FileNotFoundError, ValueError) as e:
            print(f"{name}: FAILED\n{e}", file=sys.stderr)
            failed.append(name)
    return 1 if failed else 0
