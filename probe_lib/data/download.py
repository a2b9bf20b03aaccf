"""Shared downloader for ``data_scripts/``: resumable, checksummed, safe unpacking.

* :func:`download_file` -- HTTP(S) with ``Range`` resume of a ``.part`` file (``file://`` URLs
  resume by seeking, which is how the tests exercise it), a tqdm bar, sha256 verification.
* Hashes: a sha256 in ``data_scripts/manifest.json`` wins; when it is null the first download's
  hash is recorded in ``$PROBE_LIB_CACHE/hashes.json`` (trust on first use) and every later
  download or ``--verify-only`` run is checked against it.
* :func:`safe_extract` -- zip/tar unpacking that refuses absolute paths, ``..`` components,
  links and device files (no path traversal).
* :func:`fetch_dataset` -- one manifest entry end to end: each URL in turn (original, then the
  alternatives), then manual instructions naming where to put the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from probe_lib.utils import atomic_write_json, cache_dir, data_root

CHUNK = 1 << 20
USER_AGENT = "probe_lib-data-scripts/0.1"


class DownloadError(RuntimeError):
    """Every URL for a file failed; the message says how to get it by hand."""


def default_manifest_path() -> Path:
    """``data_scripts/manifest.json`` of the repository checkout this package lives in."""
    return Path(__file__).resolve().parents[2] / "data_scripts" / "manifest.json"


def load_manifest(path: str | os.PathLike | None = None) -> dict:
    """The dataset manifest (name -> entry with ``files``, ``license``, ``citation``, ...)."""
    path = Path(path) if path is not None else default_manifest_path()
    if not path.is_file():
        raise FileNotFoundError(f"dataset manifest not found: {path} (expected "
                                "data_scripts/manifest.json in the repository)")
    return json.loads(path.read_text())


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


def verify_file(path: str | os.PathLike, key: str, manifest_sha: str | None = None,
                record: bool = True, url: str = "") -> str:
    """Check ``path`` against the manifest or recorded sha256; record it on first use.

    Returns:
        ``"manifest"`` / ``"recorded"`` when it matched, ``"first-use"`` when newly recorded.
    Raises:
        ValueError naming the file and both hashes on a mismatch.
    """
    path = Path(path)
    sha = sha256_file(path)
    want, source = expected_sha256(key, manifest_sha)
    if want is None:
        if record:
            record_sha256(key, sha, path.stat().st_size, url)
        return "first-use"
    if sha != want:
        raise ValueError(f"sha256 mismatch for {path}: got {sha}, expected {want} ({source} "
                         f"hash; the {source} record is in "
                         f"{'data_scripts/manifest.json' if source == 'manifest' else hashes_path()})."
                         " Delete the file to download it again.")
    return source


def _open(url: str, offset: int, timeout: float):
    """Open ``url`` from byte ``offset``; returns (stream, total size or None, resumed?)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        local = Path(urllib.request.url2pathname(parsed.path))
        f = open(local, "rb")  # noqa: SIM115 - returned to the caller, closed there
        total = local.stat().st_size
        f.seek(min(offset, total))
        return f, total, offset > 0
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    resp = urllib.request.urlopen(req, timeout=timeout)  # URLs come from the manifest
    length = resp.headers.get("Content-Length")
    if offset and resp.status == 206:
        crange = resp.headers.get("Content-Range", "")
        total = int(crange.rsplit("/", 1)[1]) if "/" in crange and not crange.endswith("*") \
            else (offset + int(length) if length else None)
        return resp, total, True
    return resp, int(length) if length else None, False


def download_file(url: str, dest: str | os.PathLike, *, sha256: str | None = None,
                  key: str | None = None, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (resumable), verify it, and return ``dest``.

    A partial download lives in ``<dest>.part``; a later call continues it with an HTTP Range
    request (a server that ignores Range makes it start over). After completion the file is
    verified against ``sha256`` (or the trust-on-first-use record under ``key``, default the
    file name) and renamed to ``dest``. An existing ``dest`` is only verified.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    key = key or dest.name
    if dest.is_file():
        verify_file(dest, key, sha256, url=url)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    try:
        stream, total, resumed = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not offset:  # 416: the .part is not a prefix we can extend
            raise
        part.unlink()
        offset = 0
        stream, total, resumed = _open(url, 0, timeout)
    if resumed and total is not None and offset > total:  # a stale, longer .part: start over
        stream.close()
        stream, total, resumed = _open(url, 0, timeout)
    if not resumed:
        offset = 0
    try:
        with open(part, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=dest.name, disable=not progress) as bar:
            for block in iter(lambda: stream.read(CHUNK), b""):
                out.write(block)
                bar.update(len(block))
    finally:
        stream.close()
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"incomplete download of {url}: {part.stat().st_size} of {total} "
                            f"bytes in {part}; run again to resume")
    try:
        verify_file(part, key, sha256, url=url)
    except ValueError:
        bad = part.with_name(part.name + ".bad")
        os.replace(part, bad)
        raise
    os.replace(part, dest)
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
    archive, dest = Path(archive), Path(dest)
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
        manifest: the manifest dict or its path (default ``data_scripts/manifest.json``).
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
            if src == "first-use":
                print(f"{archive}: no hash known yet (manifest sha256 is null, none recorded)")
            else:
                print(f"{archive}: OK ({src} sha256)")
            continue
        marker = target / f".{fname}.done"
        if marker.is_file() and archive.is_file():
            verify_file(archive, hkey, f.get("sha256"))
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
        description="Download, verify and unpack the datasets of data_scripts/manifest.json")
    ap.add_argument("names", nargs="*", help="manifest names (e.g. GrabCut DAVIS) or 'all'")
    ap.add_argument("--root", default=None, help="data root (default: probe_lib.utils.data_root())")
    ap.add_argument("--manifest", default=None, help="manifest path (default data_scripts/...)")
    ap.add_argument("--verify-only", action="store_true", help="check hashes, download nothing")
    ap.add_argument("--list", action="store_true", help="list the datasets and exit")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
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
