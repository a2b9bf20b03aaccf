"""Write docs/notebooks/NN_name.ipynb: executed copies of the notebooks, readable without running.

Each notebook is executed at a preset (default ``small``) with papermill, its kernel drawing
figures inline; every figure is then downscaled (at most ``--max-width`` px wide, PNG optimised
or JPEG, whichever is smaller) so that each copy stays under 1 MB and all of them under 10 MB;
a markdown cell on top states the date, the machine (CPU model, cores) and the preset.

    python tools/render_notebooks.py                  # all notebooks, in order (make render)
    python tools/render_notebooks.py --only 01 02     # some of them
    python tools/render_notebooks.py --executed DIR   # reuse DIR/<name>.ipynb where current

Notebooks run in numbered order and share the data, results and checkpoint folders
(``PROBE_LIB_DATA`` / ``PROBE_LIB_RESULTS`` / ``PROBE_LIB_CACHE``), as in the README's path: later
notebooks load what earlier ones trained. ``--executed`` takes an already executed copy (e.g.
from a test run) when its code cells equal the source notebook's; otherwise it executes.

tests/test_rendered_notebooks.py fails when a rendered copy's code differs from its source
notebook (a stale copy): rerun this tool after editing a notebook.
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime as dt
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
OUT = REPO / "docs" / "notebooks"
HEADER_TAG = "rendered-header"
INJECTED_TAG = "injected-parameters"  # papermill's cell with the parameters it was given
MAX_FILE_BYTES = 1_000_000
MAX_TOTAL_BYTES = 10_000_000


def code_sources(nb: dict) -> list[str]:
    """The code cells' sources of a notebook (dict as in the .ipynb JSON), without the rendered
    header and papermill's injected-parameters cell: what must match between a rendered copy and
    its source notebook."""
    out = []
    for c in nb["cells"]:
        tags = c.get("metadata", {}).get("tags", [])
        if c["cell_type"] != "code" or HEADER_TAG in tags or INJECTED_TAG in tags:
            continue
        src = c.get("source", "")
        out.append("".join(src) if isinstance(src, list) else src)
    return out


def downscale_image(data: bytes, max_width: int = 700, jpeg_quality: int = 80
                    ) -> tuple[str, bytes]:
    """Shrink one figure: resize to at most ``max_width`` px wide (aspect kept, never enlarged),
    then keep an optimised PNG unless a JPEG (``jpeg_quality``; transparency flattened onto
    white) is under 70 % of its size: line plots stay crisp PNGs, photo-like panels turn JPEG.

    Args:
        data: the encoded image (PNG, or anything PIL reads).
    Returns:
        ``(mime, bytes)`` with mime ``"image/png"`` or ``"image/jpeg"``.
    """
    from PIL import Image

    if max_width < 1:
        raise ValueError(f"max_width must be >= 1 px, got {max_width}")
    img = Image.open(io.BytesIO(data))
    img.load()
    if img.width > max_width:
        h = max(1, round(img.height * max_width / img.width))
        img = img.resize((max_width, h), Image.LANCZOS)
    png = io.BytesIO()
    img.save(png, format="PNG", optimize=True)
    rgb = img.convert("RGBA") if img.mode in ("P", "LA") else img
    if rgb.mode == "RGBA":  # JPEG has no alpha: matplotlib's transparent parts are white anyway
        flat = Image.new("RGB", rgb.size, "white")
        flat.paste(rgb, mask=rgb.getchannel("A"))
        rgb = flat
    jpg = io.BytesIO()
    rgb.convert("RGB").save(jpg, format="JPEG", quality=jpeg_quality, optimize=True)
    if jpg.tell() < 0.7 * png.tell():
        return "image/jpeg", jpg.getvalue()
    return "image/png", png.getvalue()


def shrink_outputs(nb: dict, max_width: int = 700, jpeg_quality: int = 80) -> dict:
    """A copy of ``nb`` with every image/png output downscaled (:func:`downscale_image`) and the
    per-cell execution metadata (timestamps) dropped."""
    nb = copy.deepcopy(nb)
    for c in nb["cells"]:
        c.get("metadata", {}).pop("execution", None)
        c.get("metadata", {}).pop("papermill", None)
        for out in c.get("outputs", []):
            data = out.get("data", {})
            if "image/png" not in data:
                continue
            raw = data.pop("image/png")
            raw = "".join(raw) if isinstance(raw, list) else raw
            mime, small = downscale_image(base64.b64decode(raw), max_width, jpeg_quality)
            data[mime] = base64.b64encode(small).decode("ascii")
            meta = out.get("metadata", {})
            meta.pop("image/png", None)  # its width/height were the original's
    return nb


def machine_description() -> str:
    """CPU model, core count and GPU (if any) of this machine, one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} logical cores, {platform.system()}"
    try:
        import torch

        if torch.cuda.is_available():
            desc += f", GPU {torch.cuda.get_device_name(0)}"
        else:
            desc += ", no GPU"
    except ImportError:
        pass
    return desc


def header_cell(name: str, preset: str, seconds: float | None, when: dt.datetime) -> dict:
    """The markdown cell put on top of a rendered copy."""
    took = f", ran in {seconds / 60:.1f} min" if seconds else ""
    text = (f"> **Rendered copy** of [`notebooks/{name}`](../../notebooks/{name}), executed at "
            f"preset `{preset}` on {when:%Y-%m-%d} ({machine_description()}{took}). Figures are "
            f"downscaled; the numbers are those of this run. Regenerate with `make render`.")
    return {"cell_type": "markdown", "id": "rendered-header",
            "metadata": {"tags": [HEADER_TAG]}, "source": text}


def execute(src: Path, out: Path, preset: str) -> float:
    """Run ``src`` with papermill at ``preset`` into ``out``; returns the seconds it took."""
    import papermill

    from probe_lib.sweep import KERNEL_MPLBACKEND

    os.environ["MPLBACKEND"] = KERNEL_MPLBACKEND  # the kernel inherits it: figures drawn inline
    params = {} if preset == "small" else {"PRESET": preset}  # small is every notebook's default
    t0 = time.perf_counter()
    papermill.execute_notebook(str(src), str(out), parameters=params, cwd=str(NOTEBOOKS),
                               kernel_name="python3", progress_bar=False, log_output=False)
    return time.perf_counter() - t0


def render_one(src: Path, executed: dict, preset: str, seconds: float | None,
               when: dt.datetime) -> tuple[dict, int, int]:
    """The rendered copy of ``src`` from its executed notebook: header + shrunk figures, the
    width reduced until the file fits in MAX_FILE_BYTES. Returns ``(nb, bytes, max_width)``."""
    if code_sources(executed) != code_sources(json.loads(src.read_text())):
        raise ValueError(f"{src.name}: the executed notebook's code differs from {src}")
    for width, quality in ((700, 80), (560, 70), (420, 60), (320, 50)):
        nb = shrink_outputs(executed, width, quality)
        nb["cells"].insert(0, header_cell(src.name, preset, seconds, when))
        nb.get("metadata", {}).pop("papermill", None)
        size = len(dumps(nb).encode())
        if size <= MAX_FILE_BYTES:
            return nb, size, width
    raise ValueError(f"{src.name}: {size} bytes even with figures {width} px wide (limit "
                     f"{MAX_FILE_BYTES}); reduce its figures or text output")


def dumps(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--only", nargs="*", default=None,
                   help="notebook numbers or names (default: all, in order)")
    p.add_argument("--executed", type=Path, default=None,
                   help="folder of executed notebooks to reuse where their code is current")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    sources = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if a.only:
        sources = [s for s in sources if s.name[:2] in a.only or s.stem in a.only]
        if not sources:
            p.error(f"--only {' '.join(a.only)}: no such notebook in {NOTEBOOKS}")
    a.out.mkdir(parents=True, exist_ok=True)
    when = dt.datetime.now()
    with tempfile.TemporaryDirectory(prefix="render_") as tmp:
        for src in sources:
            reuse = a.executed / src.name if a.executed else None
            seconds = None
            if reuse and reuse.is_file() and code_sources(json.loads(reuse.read_text())) \
                    == code_sources(json.loads(src.read_text())):
                executed_path = reuse
                print(f"{src.name}: reusing {reuse}", flush=True)
            else:
                executed_path = Path(tmp) / src.name
                print(f"{src.name}: executing at {a.preset} ...", flush=True)
                seconds = execute(src, executed_path, a.preset)
            executed = json.loads(executed_path.read_text())
            if seconds is None:
                seconds = executed.get("metadata", {}).get("papermill", {}).get("duration")
            nb, size, width = render_one(src, executed, a.preset, seconds, when)
            (a.out / src.name).write_text(dumps(nb))
            print(f"  -> {a.out / src.name}: {size / 1e6:.2f} MB (figures <= {width} px)",
                  flush=True)
    total = sum(f.stat().st_size for f in a.out.glob("*.ipynb"))
    print(f"total {total / 1e6:.2f} MB in {a.out}")
    if total > MAX_TOTAL_BYTES:
        print(f"ERROR: the rendered notebooks take {total} bytes, over {MAX_TOTAL_BYTES}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
