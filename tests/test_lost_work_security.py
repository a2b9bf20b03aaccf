"""Security and lost work: no code from a checkpoint, no silently discarded or
replaced training, reproducible API training, orphan temporary files cleaned.

Tests that check a user-facing message carry ``@pytest.mark.reliability("<input>")``; the table
in docs/reliability.md is generated from them.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from probe_lib.upsampler_training.loop import CheckpointConflict, fit, resume_path
from probe_lib.upsamplers import create_upsampler
from probe_lib.utils import atomic_torch_save, remove_orphan_tmp_files


# ------------------------------------------------------------------ a code-running pickle payload
class _Payload:
    """Unpickling this runs ``os.system("touch <marker>")``, as a malicious checkpoint would."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _plant(path: Path, marker: Path, extra: dict | None = None) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(2)}, "name": "tiny", "config": {},
                "payload": _Payload(marker), **(extra or {})}, path)
    return path


def test_payload_is_live_when_fully_unpickled(tmp_path):
    # the control for the refusal tests below: full unpickling really runs the payload
    marker = tmp_path / "pwned"
    path = _plant(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.reliability("create_upsampler(name, weights=<.pt whose pickle runs code>)")
def test_create_upsampler_refuses_code_in_weights(tmp_path):
    marker = tmp_path / "pwned"
    path = _plant(tmp_path / "evil.pt", marker)
    with pytest.raises(ValueError, match=r"refusing to load upsampler weights .*evil\.pt.*"
                                         r"never unpickles arbitrary objects"):
        create_upsampler("lift", dim=16, weights=path)
    assert not marker.exists()


def test_lightning_hyperparameter_objects_load_inertly(tmp_path, monkeypatch):
    """An allow-listed foreign class (an omegaconf container, as Lightning checkpoints hold) is
    unpickled as an inert stand-in: its own code never runs and the tensors load."""
    marker = tmp_path / "ran_omegaconf_code"

    class DictConfig:
        def __init__(self, content):
            self.content = content

        def __setstate__(self, state):  # the real class's code: must not run on load
            Path(marker).touch()
            self.__dict__.update(state)

    mod = types.ModuleType("omegaconf.dictconfig")
    DictConfig.__module__, DictConfig.__qualname__ = "omegaconf.dictconfig", "DictConfig"
    mod.DictConfig = DictConfig
    monkeypatch.setitem(sys.modules, "omegaconf", types.ModuleType("omegaconf"))
    monkeypatch.setitem(sys.modules, "omegaconf.dictconfig", mod)
    src = create_upsampler("lift", dim=16)
    ckpt = {"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()},
            "hyper_parameters": DictConfig({"lr": 1e-3}), "pytorch-lightning_version": "2.1"}
    path = tmp_path / "official.ckpt"
    torch.save(ckpt, path)
    loaded = create_upsampler("lift", dim=16, weights=path)
    for k, v in src.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert not marker.exists()


# ------------------------------------------------------------------ a tiny task for fit()
class _Up(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class _Task:
    name = "tiny"

    def __init__(self):
        torch.manual_seed(0)
        self.upsampler = _Up()

    def aux_modules(self):
        return {}

    def param_groups(self):
        return [{"params": list(self.upsampler.parameters()), "lr": 1e-2}]

    def loss(self, batch, step, gen):
        noise = torch.randn(batch.shape, generator=gen) * 0.01
        return {"loss": ((self.upsampler(batch + noise) - 0.5) ** 2).mean()}


def _batch(step):
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(100 + step))


def _cfg(lr=1e-2, thresh=0.5, seed=0):
    return {"preset": "small", "upsampler": {"train_lr": lr, "train_log_every": 1},
            "eval": {"prob_thresh": thresh}, "train": {"seed": seed, "epochs": 2}}


def _fit(path, steps=4, config=None, overwrite=False, callbacks=None):
    task = _Task()
    res = fit(task, _batch, steps=steps, optimizer=torch.optim.NAdam(task.param_groups()),
              checkpoint=path, config=config or _cfg(), backbone_id="tiny", log_every=1,
              save_every=2, progress=False, overwrite=overwrite, callbacks=callbacks)
    return task, res


def _weights(task):
    return {k: v.clone() for k, v in task.upsampler.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.reliability("upsampler training with a planted <ckpt>.resume.pt whose pickle runs code")
def test_fit_refuses_code_in_resume_state(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "up.pt"
    _plant(resume_path(path), marker)
    with pytest.raises(ValueError, match=r"refusing to load resumable training state .*"
                                         r"up\.resume\.pt"):
        _fit(path)
    assert not marker.exists()


@pytest.mark.reliability("upsampler training over a final checkpoint whose pickle runs code")
def test_fit_refuses_code_in_final_checkpoint(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "up.pt"
    _plant(path, marker)
    with pytest.raises(ValueError, match=r"refusing to load upsampler training checkpoint"):
        _fit(path)
    assert not marker.exists()


def test_non_defining_difference_keeps_the_finished_checkpoint(tmp_path):
    path = tmp_path / "up.pt"
    t1, _ = _fit(path)
    before = path.read_bytes()
    cfg = _cfg(thresh=0.49)
    cfg["upsampler"]["train_log_every"] = 7  # logging cadence cannot change the weights
    cfg["train"]["epochs"] = 9  # probe training setting
    t2, res = _fit(path, config=cfg)
    assert res.skipped and _same(_weights(t1), _weights(t2))
    assert path.read_bytes() == before


def test_longer_steps_continue_from_the_finished_checkpoint(tmp_path):
    ref_task, ref = _fit(tmp_path / "ref.pt", steps=8)
    path = tmp_path / "up.pt"
    _fit(path, steps=4)
    task, res = _fit(path, steps=8)
    assert res.resumed_from == 4 and not res.skipped
    # constant learning rate: continuing 4 -> 8 equals an uninterrupted 8-step run, bit for bit
    assert _same(_weights(ref_task), _weights(task))
    assert [h["loss"] for h in res.history] == [h["loss"] for h in ref.history]
    ck = torch.load(path, weights_only=True)
    assert ck["step"] == 8 and ck["extended_from"] == [4]


@pytest.mark.reliability("upsampler training rerun with a different learning rate over a "
                         "finished checkpoint")
def test_defining_difference_stops_and_names_keys_and_flag(tmp_path):
    path = tmp_path / "up.pt"
    _fit(path)
    before = path.read_bytes()
    with pytest.raises(CheckpointConflict, match=r"(?s)upsampler\.train_lr: saved 0\.01, "
                                                 r"requested 0\.001.*overwrite=True"):
        _fit(path, config=_cfg(lr=1e-3))
    with pytest.raises(CheckpointConflict, match=r"train\.seed: saved 0, requested 1"):
        _fit(path, config=_cfg(seed=1))
    assert path.read_bytes() == before  # never replaced without the flag
    _, res = _fit(path, config=_cfg(lr=1e-3), overwrite=True)
    assert not res.skipped and res.resumed_from == 0
    assert torch.load(path, weights_only=True)["config"]["upsampler"]["train_lr"] == 1e-3


@pytest.mark.reliability("upsampler training with fewer steps than the finished checkpoint")
def test_fewer_steps_than_finished_stops(tmp_path):
    path = tmp_path / "up.pt"
    _fit(path, steps=4)
    with pytest.raises(CheckpointConflict, match=r"trained for 4 steps, more than the 2 "
                                                 r"requested: pass steps=4.*overwrite=True"):
        _fit(path, steps=2)


@pytest.mark.reliability("interrupted upsampler training resumed with a different learning rate")
def test_resume_state_with_defining_difference_stops(tmp_path):
    path = tmp_path / "up.pt"

    def interrupt(step, logs):
        if step == 2:
            raise KeyboardInterrupt

    # the interrupt is how the test stops training, not a message for the table: caught by hand
    try:
        _fit(path, steps=6, callbacks=[interrupt])
    except KeyboardInterrupt:
        pass
    else:
        pytest.fail("the callback's KeyboardInterrupt did not stop training")
    assert resume_path(path).exists()
    with pytest.raises(CheckpointConflict, match=r"(?s)resumable state \(step 2\).*"
                                                 r"upsampler\.train_lr.*overwrite=True"):
        _fit(path, steps=6, config=_cfg(lr=5e-3))
    assert resume_path(path).exists()  # kept
    # an evaluation setting does not define the weights: the run resumes
    ref_task, _ = _fit(tmp_path / "ref.pt", steps=6)
    task, res = _fit(path, steps=6, config=_cfg(thresh=0.3))
    assert res.resumed_from == 2 and _same(_weights(ref_task), _weights(task))


# ------------------------------------------------------------------ seeded API training
def test_api_training_init_is_seeded_from_the_config():
    from probe_lib.backbones import create_backbone
    from probe_lib.config import make_config
    from probe_lib.upsampler_training.recipes import _trainable

    bb = create_backbone("test_tiny")
    cfg = make_config("small")
    torch.manual_seed(1)
    a = _trainable("lift", bb, cfg, device="cpu").state_dict()
    torch.manual_seed(2)  # a different global RNG state, as in another process
    b = _trainable("lift", bb, cfg, device="cpu").state_dict()
    c = _trainable("lift", bb, make_config("small", seed=3), device="cpu").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the seed does reach the init


# ------------------------------------------------------------------ orphan temporary files
def test_orphan_tmp_from_a_killed_write_is_removed_on_next_start(tmp_path):
    target = tmp_path / "up.pt"
    code = ("import os, sys; from pathlib import Path; from probe_lib.utils import _atomic_replace\n"
            "def w(f):\n    f.write(b'x' * 1000); f.flush(); os.kill(os.getpid(), 9)\n"
            "_atomic_replace(Path(sys.argv[1]), w)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(target)], check=False,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == -9
    orphans = list(tmp_path.glob(".up.pt.*.tmp"))
    assert len(orphans) == 1 and not target.exists()
    live = tmp_path / f".other.pt.pid{os.getpid()}.abcd1234.tmp"  # a write in progress here
    live.write_bytes(b"y")
    foreign = tmp_path / ".notes.tmp"  # not ours
    foreign.write_bytes(b"z")
    _fit(target, steps=2)  # the next start of the training cleans the folder
    assert not orphans[0].exists() and live.exists() and foreign.exists()
    assert target.exists()


def test_atomic_write_cleans_its_own_orphans(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          check=True, capture_output=True, text=True).stdout.strip()
    orphan = tmp_path / f".a.pt.pid{dead}.zz9_ab12.tmp"
    orphan.write_bytes(b"half")
    atomic_torch_save({"x": torch.ones(1)}, tmp_path / "a.pt")
    assert not orphan.exists()
    assert remove_orphan_tmp_files(tmp_path) == []


# ------------------------------------------------------------------ sweep --force
@pytest.mark.reliability("sweep --force whose rerun fails")
def test_sweep_force_keeps_old_results_until_the_rerun_succeeds(tmp_path, monkeypatch,
                                                                 reliability_message):
    from probe_lib import sweep as sweep_mod

    fail = {"on": False}

    def fake(stem, out_path, parameters, log):  # a fake notebook: writes a result or fails
        if fail["on"] and stem == sweep_mod.EVAL_NOTEBOOK:
            raise RuntimeError("evaluation exploded")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text("{}")
        (out_path.parent / f"{stem}.result").write_text("new" if fail["on"] else "old")
        return 0.01

    monkeypatch.setattr(sweep_mod, "_execute", fake)
    run = sweep_mod.Run("bilinear", "patch_embed", "early")
    st = sweep_mod.run_one("small", run, tmp_path, log=lambda m: None)
    run_dir = tmp_path / run.name("small")
    assert st["status"] == "done"
    before = {p.name: p.read_text() for p in run_dir.iterdir()}
    fail["on"] = True
    logs = []
    st = sweep_mod.run_one("small", run, tmp_path, force=True, log=logs.append)
    assert st["status"] == "failed"
    assert "evaluation exploded" in st["message"] and "previous results restored" in st["message"]
    reliability_message("run status failed", st["message"])
    assert {p.name: p.read_text() for p in run_dir.iterdir()} == before  # old results intact
    assert not sweep_mod.force_backup_dir(tmp_path, run.name("small")).exists()
    assert (tmp_path / f"{run.name('small')}.force-failed.json").is_file()
    # a successful --force rerun replaces the folder and drops the backup
    fail["on"] = False
    st = sweep_mod.run_one("small", run, tmp_path, force=True, log=logs.append)
    assert st["status"] == "done"
    assert not sweep_mod.force_backup_dir(tmp_path, run.name("small")).exists()


def test_sweep_restores_results_kept_aside_by_a_killed_force_rerun(tmp_path, monkeypatch):
    from probe_lib import sweep as sweep_mod

    calls = []
    monkeypatch.setattr(sweep_mod, "_execute", lambda stem, out, params, log: calls.append(stem))
    run = sweep_mod.Run("bilinear", "patch_embed", "early")
    name = run.name("small")
    backup = sweep_mod.force_backup_dir(tmp_path, name)
    backup.mkdir(parents=True)
    (backup / "precious.txt").write_text("old")
    (tmp_path / name).mkdir()
    (tmp_path / name / "partial.txt").write_text("half")  # the killed rerun's leftovers
    logs = []
    sweep_mod.run_one("small", run, tmp_path, log=logs.append)
    assert (tmp_path / name / "precious.txt").read_text() == "old"
    assert not backup.exists() and any("interrupted --force" in m for m in logs)


# ------------------------------------------------------------------ downloader: no stitched files
class _Server(http.server.BaseHTTPRequestHandler):
    """Serves ``files[path] = (data, etag)``; honours Range + If-Range; ``cut[path] = n`` sends
    only n bytes of the body and drops the connection (an interrupted transfer)."""

    files: dict = {}  # noqa: RUF012 - reset by the fixture
    cut: dict = {}  # noqa: RUF012
    log: list = []  # noqa: RUF012

    def do_GET(self):
        rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        type(self).log.append((self.path, rng, if_range))
        if self.path not in self.files:
            self.send_error(404)
            return
        data, etag = self.files[self.path]
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if rng and if_range and if_range != etag:
            start = 0  # changed file: RFC 7233 says send it whole
        partial = rng is not None and start > 0
        body = data[start:]
        self.send_response(206 if partial else 200)
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.end_headers()
        n = self.cut.pop(self.path, None)
        self.wfile.write(body[:n] if n is not None else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBE_LIB_CACHE", str(tmp_path / "cache"))
    _Server.files, _Server.cut, _Server.log = {}, {}, []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


def _data(n, seed):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_resume_same_url_same_etag_continues_but_records_no_hash(tmp_path, server, capsys):
    from probe_lib.data import download as dl

    data = _data(300_000, 1)
    _Server.files["/a.zip"] = (data, '"v1"')
    _Server.cut["/a.zip"] = 100_000
    dest = tmp_path / "a.zip"
    with pytest.raises(dl.DownloadError, match="run again to resume"):
        dl.download_file(f"{server}/a.zip", dest, key="X/a.zip", progress=False)
    dl.download_file(f"{server}/a.zip", dest, key="X/a.zip", progress=False)
    assert dest.read_bytes() == data
    assert _Server.log[-1][1:] == ("bytes=100000-", '"v1"')  # resumed, validated by If-Range
    assert "no sha256 recorded" in capsys.readouterr().out
    assert dl.expected_sha256("X/a.zip", None) == (None, "none")  # resumed: never trusted
    assert list(tmp_path.glob("a.zip.*")) == []  # partial and its source record cleaned


def test_changed_file_at_same_url_starts_over(tmp_path, server):
    from probe_lib.data import download as dl

    old, new = _data(300_000, 1), _data(300_000, 2)
    _Server.files["/a.zip"] = (old, '"v1"')
    _Server.cut["/a.zip"] = 100_000
    dest = tmp_path / "a.zip"
    with pytest.raises(dl.DownloadError):
        dl.download_file(f"{server}/a.zip", dest, key="X/a.zip", progress=False)
    _Server.files["/a.zip"] = (new, '"v2"')  # same size, other content
    dl.download_file(f"{server}/a.zip", dest, key="X/a.zip", progress=False)
    assert dest.read_bytes() == new  # not old[:100000] + new[100000:]
    # one clean transfer: now trusted on first use
    assert dl.expected_sha256("X/a.zip", None)[1] == "recorded"


def test_mirror_never_continues_another_urls_partial(tmp_path, server):
    from probe_lib.data import download as dl

    first, mirror = _data(300_000, 1), _data(300_000, 3)
    _Server.files["/a.zip"] = (first, '"v1"')
    _Server.files["/m/a.zip"] = (mirror, '"v1"')  # same size and even the same ETag
    _Server.cut["/a.zip"] = 100_000
    man = {"X": {"description": "t", "license": "t", "citation": "t",
                 "files": [{"name": "a.zip", "url": f"{server}/a.zip", "unpack": False,
                            "mirrors": [f"{server}/m/a.zip"], "sha256": None}]}}
    # the first URL drops mid-transfer, the mirror then serves the whole file
    dl.fetch_dataset("X", tmp_path / "data", manifest=man, progress=False)
    got = (tmp_path / "data" / "_downloads" / "a.zip").read_bytes()
    assert got == mirror
    assert _Server.log[-1] == ("/m/a.zip", None, None)  # fetched from byte 0


def test_server_without_range_support_starts_over(tmp_path, server, monkeypatch):
    from probe_lib.data import download as dl

    data = _data(200_000, 4)
    _Server.files["/a.zip"] = (data, '"v1"')
    _Server.cut["/a.zip"] = 50_000
    dest = tmp_path / "a.zip"
    with pytest.raises(dl.DownloadError):
        dl.download_file(f"{server}/a.zip", dest, progress=False)
    real = _Server.do_GET

    def ignore_range(self):  # an old server: always the whole file with 200
        del self.headers["Range"]
        real(self)

    monkeypatch.setattr(_Server, "do_GET", ignore_range)
    dl.download_file(f"{server}/a.zip", dest, progress=False)
    assert dest.read_bytes() == data


def test_file_url_partial_not_continued_after_the_source_changed(tmp_path):
    from probe_lib.data import download as dl

    src = tmp_path / "src.bin"
    src.write_bytes(_data(100_000, 5))
    part = dl.partial_path(tmp_path / "d.bin", src.as_uri())
    part.write_bytes(src.read_bytes()[:40_000])
    part.with_name(part.name + ".json").write_text(json.dumps(
        {"size": 100_000, "mtime_ns": src.stat().st_mtime_ns}))
    time.sleep(0.01)
    new = _data(100_000, 6)
    src.write_bytes(new)  # same size, new mtime
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10_000_000))
    dl.download_file(src.as_uri(), tmp_path / "d.bin", progress=False)
    assert (tmp_path / "d.bin").read_bytes() == new


@pytest.mark.reliability("download whose sha256 differs from a wrongly recorded first-use hash")
def test_forget_hash_clears_a_bad_record(tmp_path, server, capsys, reliability_message):
    from probe_lib.data import download as dl

    data = _data(50_000, 7)
    _Server.files["/a.zip"] = (data, '"v1"')
    dl.record_sha256("X/a.zip", "0" * 64, 1, "bad earlier download")
    man_path = tmp_path / "manifest.json"
    man_path.write_text(json.dumps({"X": {
        "description": "t", "license": "t", "citation": "t",
        "files": [{"name": "a.zip", "url": f"{server}/a.zip", "unpack": False, "mirrors": [],
                   "sha256": None}]}}))
    root = tmp_path / "data"
    rc = dl.main(["X", "--root", str(root), "--manifest", str(man_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "sha256 mismatch" in err and "--forget-hash X/a.zip" in err
    line = next(ln for ln in err.splitlines() if "sha256 mismatch" in ln)
    # the partial's name holds a hash of the URL (random port): fixed so the table is stable
    reliability_message("exit 1, stderr", re.sub(r"\.[0-9a-f]{12}\.part", ".<url hash>.part", line))
    # the advised fix works: forget the record, download again
    assert dl.main(["--forget-hash", "X"]) == 0
    assert "forgot recorded sha256 of X/a.zip" in capsys.readouterr().out
    rc = dl.main(["X", "--root", str(root), "--manifest", str(man_path), "--no-progress"])
    assert rc == 0 and (root / "_downloads" / "a.zip").read_bytes() == data
    assert dl.expected_sha256("X/a.zip", None)[0] == dl.sha256_file(root / "_downloads" / "a.zip")


def test_existing_download_is_verified_but_never_recorded(tmp_path):
    from probe_lib.data import download as dl

    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    dest = tmp_path / "dl" / "f.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"whatever was left here")  # e.g. put there by hand, or stitched earlier
    dl.download_file(src.as_uri(), dest, key="Y/f.bin", progress=False)
    assert dl.expected_sha256("Y/f.bin", None) == (None, "none")
