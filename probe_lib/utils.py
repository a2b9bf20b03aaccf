"""Small shared helpers: paths from the environment, device choice, seeding, atomic writes, banners."""

from __future__ import annotations

import glob
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def source_root(start: str | Path | None = None) -> Path | None:
    """The source checkout this package runs from, or None for an installed copy.

    Walks up from ``start`` (default: this file) to the nearest ``pyproject.toml`` and returns its
    folder when that file declares ``name = "probe_lib"``; a ``pyproject.toml`` of another project
    (the package vendored or installed inside it) or none at all gives None.
    """
    here = Path(start if start is not None else __file__).resolve()
    for folder in [here, *here.parents] if here.is_dir() else here.parents:
        pp = folder / "pyproject.toml"
        if pp.is_file():
            try:
                text = pp.read_text(encoding="utf-8")
            except OSError:
                return None
            # the [project] table's name; tomllib is 3.11+ and this is the only key we need
            m = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
            if m and re.search(r'^name\s*=\s*["\']probe_lib["\']\s*$', m.group(1), re.MULTILINE):
                return folder
            return None
    return None


def _root(env: str, folder: str) -> Path:
    # one place wherever a kernel starts (repo root, notebooks/, ...): the environment variable,
    # else <source checkout>/<folder>, else <cwd>/<folder> for an installed package
    value = os.environ.get(env, "").strip()
    if value:
        return Path(value).expanduser()
    src = source_root()
    return (src if src is not None else Path.cwd()) / folder


def data_root() -> Path:
    """Data root: ``$PROBE_LIB_DATA``, else ``<repo>/data`` when running from a source checkout
    (whatever the working directory, e.g. a kernel started in ``notebooks/``), else ``./data``."""
    return _root("PROBE_LIB_DATA", "data")


def cache_dir() -> Path:
    """Weights and checkpoint cache: ``$PROBE_LIB_CACHE`` or ``~/.cache/probe_lib``."""
    return Path(os.environ.get("PROBE_LIB_CACHE", "~/.cache/probe_lib")).expanduser()


def results_root() -> Path:
    """Where executed notebooks and results go: ``$PROBE_LIB_RESULTS``, else ``<repo>/results``
    when running from a source checkout, else ``./results``."""
    return _root("PROBE_LIB_RESULTS", "results")


def run_name(preset: str, upsampler: str, click_encoder: str, injection: str) -> str:
    """Name of one probe's evaluation folder: ``<preset>-<upsampler>-<click_encoder>-<injection>``.

    The one rule shared by the sweep, notebook 10 (writes there by default) and notebook 11
    (collects :func:`run_glob`), so that running 09 -> 10 -> 11 by hand shows the result.
    """
    for arg, v in (("preset", preset), ("upsampler", upsampler),
                   ("click_encoder", click_encoder), ("injection", injection)):
        if not v or "/" in v or "-" in v or "*" in v:
            raise ValueError(f"run_name: {arg}={v!r} must be a non-empty name without '/', '-' "
                             "or '*' (the folder name is split on '-')")
    return f"{preset}-{upsampler}-{click_encoder}-{injection}"


def run_glob(preset: str) -> str:
    """Glob (relative to :func:`results_root`) matching every :func:`run_name` of ``preset``."""
    return f"{preset}-*"


def run_dir(preset: str, upsampler: str, click_encoder: str, injection: str,
            root: str | Path | None = None) -> Path:
    """``<root or results_root()>/<run_name(...)>``: where one probe's metrics go."""
    return Path(root if root is not None else results_root()) / run_name(
        preset, upsampler, click_encoder, injection)


def checkpoint_path(kind: str, name: str, preset: str) -> Path:
    """Where trained checkpoints live, so that notebooks hand work to each other.

    ``$PROBE_LIB_CACHE/checkpoints/<kind>/<name>-<preset>.pt``, e.g. kind ``"upsampler"``,
    name ``"loftup"``, preset ``"small"``.
    """
    return cache_dir() / "checkpoints" / kind / f"{name}-{preset}.pt"


def get_device(prefer: str | None = None) -> torch.device:
    """CUDA, then MPS, then CPU (or ``prefer`` when given)."""
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def banner(message: str, *, file=None) -> str:
    """Print a framed, impossible-to-miss message (offline stand-ins, random weights, ...)."""
    lines = message.strip().splitlines()
    width = max(len(line) for line in lines) + 4
    text = "\n".join(["#" * width, *[f"# {line.ljust(width - 4)} #" for line in lines], "#" * width])
    print(text, file=file or sys.stdout, flush=True)
    return text


_TMP_SUFFIX = ".tmp"
ORPHAN_TMP_MIN_AGE_S = 600.0  # a temporary file without a live owner id is orphaned after this


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else, or cannot tell: keep its file
    return True


def remove_orphan_tmp_files(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete temporary files left by an atomic write that was killed midway.

    :func:`_atomic_replace` writes ``.<name>.pid<PID>.<random>.tmp`` beside its target. A file is
    removed when its writer process no longer exists (files without a pid, from older versions,
    when untouched for :data:`ORPHAN_TMP_MIN_AGE_S`). A live writer's file is never touched.

    Args:
        name: only temporaries of this target file name (default: every target in ``folder``).
    Returns:
        The removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for tmp in folder.glob(f".{glob.escape(name or '')}*{_TMP_SUFFIX}"):
        m = re.fullmatch(r"\..+\.pid(\d+)\.[a-z0-9_]{8}\.tmp", tmp.name)
        try:
            if m:
                orphan = not _pid_alive(int(m.group(1)))
            elif not re.fullmatch(r"\..+\.[a-z0-9_]{8}\.tmp", tmp.name):
                continue  # not written by _atomic_replace
            else:
                orphan = time.time() - tmp.stat().st_mtime > ORPHAN_TMP_MIN_AGE_S
            if orphan and tmp.is_file():
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:
            continue
    if removed:
        print(f"removed {len(removed)} temporary file(s) left by an interrupted write in {folder}: "
              + ", ".join(p.name for p in removed[:5]))
    return removed


def _atomic_replace(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphan_tmp_files(path.parent, path.name + ".pid")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=_TMP_SUFFIX,
                               dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename: never a half-written file."""
    return _atomic_replace(Path(path), lambda f: torch.save(obj, f))


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    return _atomic_replace(Path(path), lambda f: f.write(data))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    return atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_json(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def environment_info() -> dict[str, str]:
    """Library versions saved beside every result."""
    import platform

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "platform": platform.platform()}
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def check_image_batch(image: torch.Tensor, name: str = "image") -> None:
    """Raise a ValueError unless ``image`` is a finite (B, 3, H, W) float tensor."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(  # noqa: TRY004
            f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, H, W) with RGB in [0, 1], "
                         f"got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"{name} must be a float tensor with RGB in [0, 1], got {image.dtype}")
    finite = torch.isfinite(image)
    if not bool(finite.all()):
        n = int((~finite).sum())
        raise ValueError(f"{name} contains {n} NaN or Inf value(s) of {image.numel()}: the input "
                         f"image itself is not finite (decode or preprocessing problem), so no "
                         "feature computed from it can be")


def resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *size), bilinear with ``align_corners=True`` (iSegProbe's rule for
    upsampler outputs, logits and ZoomIn crops); returns ``x`` itself when it has that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear",
                                           align_corners=True)
