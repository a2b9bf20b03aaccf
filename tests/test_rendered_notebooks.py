"""docs/notebooks/: the rendered (executed) copies of the notebooks must be current and small.

A rendered copy's code cells must equal its source notebook's (tools/render_notebooks.py adds a
header cell and papermill an injected-parameters cell; both are ignored): after editing a
notebook, ``make render`` regenerates the copies. Nothing is executed here.
"""

import base64
import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RENDERED = sorted((REPO / "docs" / "notebooks").glob("*.ipynb"))
REGEN = "run `make render` (tools/render_notebooks.py) to regenerate docs/notebooks/"


def _tool():
    spec = importlib.util.spec_from_file_location("render_notebooks",
                                                  REPO / "tools" / "render_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


tool = _tool()


@pytest.mark.parametrize("path", RENDERED, ids=[p.name for p in RENDERED])
def test_rendered_copy_is_current(path):
    src = REPO / "notebooks" / path.name
    assert src.is_file(), f"docs/notebooks/{path.name} has no source notebook {src}"
    rendered = json.loads(path.read_text())
    first = rendered["cells"][0]
    assert tool.HEADER_TAG in first.get("metadata", {}).get("tags", []), \
        f"{path.name}: first cell should be the rendered header (date, machine, preset)"
    assert tool.code_sources(rendered) == tool.code_sources(json.loads(src.read_text())), \
        f"docs/notebooks/{path.name} is stale: its code differs from notebooks/{path.name}; {REGEN}"
    assert path.stat().st_size <= tool.MAX_FILE_BYTES, f"{path.name}: over 1 MB; {REGEN}"


def test_rendered_copies_total_size():
    total = sum(p.stat().st_size for p in RENDERED)
    assert total <= tool.MAX_TOTAL_BYTES, f"docs/notebooks/ holds {total} bytes (> 10 MB)"


def _nb(*code, header=False, injected=None):
    cells = []
    if header:
        cells.append(tool.header_cell("01_x.ipynb", "small", 3.0, tool.dt.datetime(2026, 1, 1)))
    for i, src in enumerate(code):
        cells.append({"cell_type": "code", "metadata": {}, "source": src, "outputs": []})
        if i == 0 and injected:
            cells.append({"cell_type": "code", "metadata": {"tags": ["injected-parameters"]},
                          "source": injected, "outputs": []})
        cells.append({"cell_type": "markdown", "metadata": {}, "source": f"text {i}"})
    return {"cells": cells, "metadata": {}}


def test_code_sources_ignore_header_and_injected_parameters_but_not_edits():
    source = _nb('PRESET = "small"', ["x = 1\n", "print(x)"])
    rendered = _nb('PRESET = "small"', "x = 1\nprint(x)", header=True, injected='PRESET = "full"')
    assert tool.code_sources(rendered) == tool.code_sources(source)
    edited = _nb('PRESET = "small"', "x = 2\nprint(x)", header=True)
    assert tool.code_sources(edited) != tool.code_sources(source)
    src_path = REPO / "notebooks" / "01_patchification.ipynb"
    with pytest.raises(ValueError, match="01_patchification.ipynb: the executed notebook's code"):
        tool.render_one(src_path, edited, "small", None, tool.dt.datetime(2026, 1, 1))


def _png(w, h, mode="RGB"):
    from PIL import Image, ImageDraw

    img = Image.new(mode, (w, h), "white")
    d = ImageDraw.Draw(img)
    for k in range(0, w, 37):  # a line plot's worth of detail
        d.line([(k, 0), (w - k, h - 1)], fill=(200, 30, 30) + (() if mode == "RGB" else (255,)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _size(data):
    from PIL import Image

    return Image.open(io.BytesIO(data)).size


def test_downscale_image_limits_width_and_keeps_aspect():
    mime, data = tool.downscale_image(_png(1400, 600), max_width=700)
    assert mime in ("image/png", "image/jpeg")
    assert _size(data) == (700, 300)
    _, data = tool.downscale_image(_png(1000, 333, "RGBA"), max_width=500)
    assert _size(data) == (500, 166) or _size(data) == (500, 167)
    mime, data = tool.downscale_image(_png(300, 200), max_width=700)  # never enlarged
    assert _size(data) == (300, 200)
    with pytest.raises(ValueError, match="max_width"):
        tool.downscale_image(_png(10, 10), max_width=0)


def test_downscale_image_picks_jpeg_for_photo_like_figures():
    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 255, (400, 900, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    mime, data = tool.downscale_image(buf.getvalue(), max_width=700)
    assert mime == "image/jpeg" and len(data) < len(buf.getvalue()) / 3


def test_shrink_outputs_replaces_figures_and_keeps_the_source():
    big = base64.b64encode(_png(1400, 700)).decode()
    nb = _nb("plot()")
    nb["cells"][0]["outputs"] = [{"output_type": "display_data", "metadata": {
        "image/png": {"width": 1400}}, "data": {"image/png": big, "text/plain": "<Figure>"}}]
    nb["cells"][0]["metadata"]["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00"}
    out = tool.shrink_outputs(nb, max_width=350)
    o = out["cells"][0]["outputs"][0]
    (mime,) = [k for k in o["data"] if k.startswith("image/")]
    assert _size(base64.b64decode(o["data"][mime])) == (350, 175)
    assert "image/png" not in o["metadata"] and "execution" not in out["cells"][0]["metadata"]
    assert nb["cells"][0]["outputs"][0]["data"]["image/png"] == big  # input left untouched
    assert tool.code_sources(out) == ["plot()"]
