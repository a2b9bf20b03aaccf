"""Test-session set-up: offline, a private cache and data root, the small synthetic dataset.

Every test session gets its own ``PROBE_LIB_CACHE`` (converted stand-in weights, checkpoints the
notebooks hand to each other) and ``PROBE_LIB_DATA`` unless ``PROBE_TEST_CACHE`` /
``PROBE_TEST_DATA`` point somewhere else (handy to reuse work between local runs).
"""

import os
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub: a hub lookup otherwise hangs ~45 s before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

_session_tmp = Path(tempfile.mkdtemp(prefix="probe_lib_tests_"))
os.environ["PROBE_LIB_CACHE"] = os.environ.get("PROBE_TEST_CACHE", str(_session_tmp / "cache"))
os.environ["PROBE_LIB_DATA"] = os.environ.get("PROBE_TEST_DATA", str(_session_tmp / "data"))

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip_gpu = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)
    skip_net = pytest.mark.skip(reason="needs network (offline here)")
    for item in items:
        if "network" in item.keywords and not os.environ.get("PROBE_ALLOW_NETWORK"):
            item.add_marker(skip_net)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def cache_root() -> Path:
    return Path(os.environ["PROBE_LIB_CACHE"])


@pytest.fixture(scope="session")
def data_root_dir() -> Path:
    return Path(os.environ["PROBE_LIB_DATA"])


@pytest.fixture(scope="module")
def single_torch_thread():
    """One torch thread for a module of tiny-tensor tests (on a shared 2-core machine a second
    OpenMP thread mostly waits, 10-40x slower under load); the setting is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
