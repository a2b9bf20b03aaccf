"""docs/reliability.md is generated from the tests marked ``reliability`` and must stay current.

Cheap checks (no marked test is run here): every marked test appears in the table and every row
belongs to a marked test; each recorded message still matches a ``match=`` pattern its test
asserts. ``python tools/reliability_table.py`` regenerates the page after a change.
"""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
REGEN = "run `python tools/reliability_table.py` to regenerate docs/reliability.md"


def _tool():
    spec = importlib.util.spec_from_file_location("reliability_table",
                                                  REPO / "tools" / "reliability_table.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def table():
    tool = _tool()
    return tool, tool.find_marked(REPO / "tests"), tool.parse_doc(DOC.read_text())


def _function(test_id: str) -> str:
    return test_id.split("[", 1)[0].split("::")[-1]


def test_every_marked_test_is_in_the_table(table):
    _tool, marked, rows = table
    assert marked, "no test is marked @pytest.mark.reliability"
    in_doc = {(r["file"], _function(r["test"])) for r in rows}
    missing = [f"{m.file}::{m.name}" for m in marked if (m.file, m.name) not in in_doc]
    assert not missing, f"marked tests missing from docs/reliability.md: {missing}; {REGEN}"


def test_every_row_belongs_to_a_marked_test_and_has_a_message(table):
    _tool, marked, rows = table
    known = {(m.file, m.name) for m in marked}
    stale = [f"{r['file']}::{r['test']}" for r in rows if (r["file"], _function(r["test"]))
             not in known]
    assert not stale, f"rows of tests that are gone or unmarked: {stale}; {REGEN}"
    empty = [r["test"] for r in rows if not r["messages"]]
    assert not empty, f"rows without a message (the test caught nothing?): {empty}"


def test_messages_match_what_the_tests_assert(table):
    _tool, marked, rows = table
    patterns = {(m.file, m.name): m.patterns for m in marked}
    stale = []
    for r in rows:
        pats = patterns.get((r["file"], _function(r["test"])), [])
        for _kind, text in r["messages"]:
            if not pats or text.endswith("…"):  # computed patterns / shortened text: not checked
                continue
            # the table collapses whitespace; so may the message under test
            if not any(re.search(p, text) or re.search(p, " ".join(text.split()))
                       for p in pats):
                stale.append(f"{r['test']}: {text[:120]!r}")
    assert not stale, f"messages in docs/reliability.md no longer match their tests: {stale}; " \
                      + REGEN


def test_render_is_deterministic_and_escapes():
    tool = _tool()
    rec = {"tests/test_x.py::test_b": {"input": "a <b> | c", "messages": [
               {"kind": "ValueError", "text": "x | y\nz <tmp>/f"}], "outcome": "passed"},
           "tests/test_x.py::test_a[p]": {"input": "in", "messages": [], "outcome": "failed"}}
    text = tool.render(rec)
    assert text == tool.render(dict(reversed(list(rec.items()))))
    rows = tool.parse_doc(text)
    assert [r["test"] for r in rows] == ["test_a[p]", "test_b"]
    assert rows[1]["input"] == "a <b> | c"
    assert rows[1]["messages"] == [("ValueError", "x | y z <tmp>/f")]
    assert "(test failed)" in text
