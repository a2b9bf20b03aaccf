"""RITM's SBD image-sampling weights: converted once from pickle to JSON, read only as JSON.

``assets/sbd_samples_weights.pkl`` (RITM, MIT; identical in iSegProbe) holds a list of
``(index, image_name, score)`` records, ``index`` being the position in SBD ``train.txt``.
Training draws images with replacement with probability proportional to ``(1 - score) ** 1.25``
(docs/probe.md). Downloaded pickles are never unpickled with the standard loader: the restricted
unpickler below builds only lists, tuples, dicts, numbers and strings, refuses every global
(hence every ``REDUCE`` of a callable) and admits NumPy numeric scalars through a shim that only
ever decodes raw bytes as an int/float -- in case the scores were pickled as NumPy floats.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np

from probe_lib.utils import atomic_write_json

SCORE_GAMMA = 1.25
_NUMERIC_KINDS = "biuf"
_ALLOWED_GLOBALS = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                    ("numpy", "dtype")}


class _SafeDType:
    """Stand-in for ``numpy.dtype`` during unpickling: numeric dtypes only."""

    def __init__(self, code, align=False, copy=True):
        if not isinstance(code, str):
            raise pickle.UnpicklingError(f"refusing dtype {code!r}")
        dt = np.dtype(code)
        if dt.kind not in _NUMERIC_KINDS:
            raise pickle.UnpicklingError(f"refusing non-numeric dtype {code!r}")
        self.dtype = dt

    def __setstate__(self, state):
        # numpy's dtype state tuple: (version, byteorder, ...); only the byte order matters here
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def _safe_scalar(dtype, data=None):
    if (not isinstance(dtype, _SafeDType) or not hasattr(dtype, "dtype")
            or not isinstance(data, bytes)):
        raise pickle.UnpicklingError("refusing a NumPy scalar that is not numeric raw bytes")
    if len(data) != dtype.dtype.itemsize:
        raise pickle.UnpicklingError("NumPy scalar with the wrong byte count")
    return np.frombuffer(data, dtype=dtype.dtype)[0].item()


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except the NumPy numeric-scalar shim."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _SafeDType if name == "dtype" else _safe_scalar
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: the SBD weights file may only contain "
            "lists, tuples, numbers and strings")


def _check_plain(obj, path) -> None:
    if isinstance(obj, (list, tuple)):
        for v in obj:
            _check_plain(v, path)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, path)
            _check_plain(v, path)
    elif not (obj is None or isinstance(obj, (bool, int, float, str, bytes))):
        raise ValueError(f"{path}: unexpected object of type {type(obj).__name__}")


def restricted_load(data: bytes, path: str = "<bytes>"):
    """Unpickle ``data`` admitting only plain containers, numbers and strings."""
    try:
        obj = RestrictedUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: refused to unpickle: {e}") from e
    _check_plain(obj, path)
    return obj


def _validate_records(records, path) -> list[list]:
    if not isinstance(records, (list, tuple)) or not records:
        raise ValueError(f"{path}: expected a non-empty list of (index, image_name, score)")
    out = []
    for r in records:
        if (not isinstance(r, (list, tuple)) or len(r) != 3 or not isinstance(r[0], int)
                or not isinstance(r[1], str) or not isinstance(r[2], (int, float))):
            raise ValueError(f"{path}: expected (index:int, image_name:str, score:float) "
                             f"records, got {r!r:.100}")
        if not math.isfinite(r[2]) or r[2] > 1:
            raise ValueError(f"{path}: score {r[2]!r} of {r[1]!r} must be finite and <= 1")
        out.append([int(r[0]), str(r[1]), float(r[2])])
    idx = sorted(r[0] for r in out)
    if idx != list(range(len(out))):
        raise ValueError(f"{path}: indices must be 0..{len(out) - 1}, each once")
    return out


def convert_weights_pickle(pkl_path: str | os.PathLike, json_path: str | os.PathLike) -> Path:
    """Convert RITM's ``sbd_samples_weights.pkl`` to JSON with the restricted unpickler.

    The JSON holds ``{"source": ..., "records": [[index, image_name, score], ...]}`` in the
    pickle's order. Raises ValueError when the pickle holds anything else.
    """
    pkl_path = Path(pkl_path)
    records = _validate_records(restricted_load(pkl_path.read_bytes(), str(pkl_path)), pkl_path)
    return atomic_write_json({"source": "RITM assets/sbd_samples_weights.pkl (MIT), converted "
                              "by probe_lib.data.sbd_weights", "records": records}, json_path)


def default_weights_path() -> Path:
    """Where ``data_scripts/download.py sbd_weights`` puts the JSON: ``data_root()/SBD/...``."""
    from probe_lib.utils import data_root

    return data_root() / "SBD" / "sbd_samples_weights.json"


def load_sample_records(json_path: str | os.PathLike | None = None
                        ) -> list[tuple[int, str, float]]:
    """The ``(index, image_name, score)`` records of a converted weights JSON.

    Args:
        json_path: default :func:`default_weights_path`.
    """
    json_path = Path(json_path) if json_path is not None else default_weights_path()
    if not json_path.is_file():
        raise FileNotFoundError(f"SBD sampling weights not found: {json_path} (get them with "
                                "`python data_scripts/download.py sbd_weights`)")
    data = json.loads(json_path.read_text())
    recs = data.get("records") if isinstance(data, dict) else None
    return [tuple(r) for r in _validate_records(recs, json_path)]


def load_sample_weights(json_path: str | os.PathLike | None = None,
                        gamma: float = SCORE_GAMMA) -> list[float]:
    """Sampling probabilities per training image, indexed like SBD ``train.txt``.

    (Use :func:`load_sample_records` to align by image name instead, e.g. for a subset.)

    ``p[index] = (1 - score) ** gamma / sum``. RITM keeps them in score-sorted order with a
    separate index list; indexing by ``train.txt`` position gives the same distribution.
    """
    recs = load_sample_records(json_path)
    w = np.zeros(len(recs), np.float64)
    for idx, _name, score in recs:
        w[idx] = (1.0 - score) ** gamma
    if w.sum() <= 0:
        raise ValueError(f"{json_path}: all sampling weights are zero")
    return (w / w.sum()).tolist()
