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


# --------------------------------------------------------------------------------------------
# bad-input table: docs/reliability.md is generated from the tests marked
# @pytest.mark.reliability("<input description>") by tools/reliability_table.py, which runs them
# with PROBE_RELIABILITY_RECORD=<json>. While such a test runs, pytest.raises / pytest.warns
# record the message they caught (SystemExit excepted: CLI tests pass the usage error text to
# the ``reliability_message`` fixture). Without the variable nothing is recorded.
# --------------------------------------------------------------------------------------------
_RELIABILITY_OUT = os.environ.get("PROBE_RELIABILITY_RECORD")
_recorded: dict[str, dict] = {}


def _normalise_message(text: str, basetemp: str) -> str:
    import re

    # run-specific paths and addresses would make the table change on every run
    text = text.replace(basetemp, "<tmp>").replace(str(_session_tmp), "<tmp>")
    text = text.replace(str(REPO), "<repo>")
    text = re.sub(r"<tmp>/[^/\s'\"]+/", "<tmp>/", text)
    return re.sub(r"0x[0-9a-fA-F]{6,}", "0x…", text)


class _RecordingContext:
    def __init__(self, cm, on_exit):
        self._cm, self._on_exit = cm, on_exit

    def __enter__(self):
        return self._cm.__enter__()

    def __exit__(self, *exc):
        result = self._cm.__exit__(*exc)
        self._on_exit(self._cm, exc[1])
        return result


@pytest.fixture(autouse=True)
def _record_bad_input_messages(request, monkeypatch):
    marker = request.node.get_closest_marker("reliability")
    if marker is None or not _RELIABILITY_OUT:
        yield None
        return
    import re

    basetemp = str(request.config._tmp_path_factory.getbasetemp())
    entry = {"input": marker.args[0] if marker.args else request.node.name, "messages": []}
    callspec = getattr(request.node, "callspec", None)
    entry["param"] = callspec.id if callspec is not None else None

    def add(kind: str, text: str) -> None:
        entry["messages"].append({"kind": kind, "text": _normalise_message(text, basetemp)})

    orig_raises, orig_warns = pytest.raises, pytest.warns

    def exc_done(_cm, exc):
        if exc is not None and not isinstance(exc, SystemExit):
            add(type(exc).__name__, str(exc))

    def warn_done(cm, _exc):
        expected = getattr(cm, "expected_warning", Warning)
        pattern = getattr(cm, "match_expr", None)
        for w in cm:
            if issubclass(w.category, expected) and (
                    pattern is None or re.search(pattern, str(w.message))):
                add(w.category.__name__, str(w.message))
                break

    def raises(*args, **kwargs):
        if len(args) > 1:  # the callable form pytest.raises(E, fn, *args)
            info = orig_raises(*args, **kwargs)
            exc_done(None, info.value)
            return info
        return _RecordingContext(orig_raises(*args, **kwargs), exc_done)

    def warns(*args, **kwargs):
        if len(args) > 1:
            return orig_warns(*args, **kwargs)
        return _RecordingContext(orig_warns(*args, **kwargs), warn_done)

    monkeypatch.setattr(pytest, "raises", raises)
    monkeypatch.setattr(pytest, "warns", warns)
    request.node._reliability_entry = entry
    _recorded[request.node.nodeid] = entry
    yield entry


@pytest.fixture
def reliability_message(request):
    """``reliability_message(kind, text)`` records a message by hand for the bad-input table
    (e.g. a CLI's usage error read from stderr); a no-op unless the table is being generated."""
    def record(kind: str, text: str) -> None:
        entry = getattr(request.node, "_reliability_entry", None)
        if entry is not None:
            basetemp = str(request.config._tmp_path_factory.getbasetemp())
            entry["messages"].append({"kind": kind,
                                      "text": _normalise_message(text.strip(), basetemp)})
    return record


def pytest_runtest_logreport(report):
    if _RELIABILITY_OUT and report.when == "call" and report.nodeid in _recorded:
        _recorded[report.nodeid]["outcome"] = report.outcome


def pytest_sessionfinish(session, exitstatus):
    if _RELIABILITY_OUT and _recorded:
        import json

        Path(_RELIABILITY_OUT).write_text(json.dumps(_recorded, indent=1, sort_keys=True))
