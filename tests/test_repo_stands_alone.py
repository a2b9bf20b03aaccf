"""The repository stands alone: no tracked text file points at a document the repo does not contain.

Facts are cited by paper (arXiv id, section or table), by a public reference repository's file, or
by this repo's own ``docs/`` pages. Third-party GitHub issues are cited by their full URL, which the
patterns below do not match.
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".toml", ".json", ".yml", ".yaml", ".cfg", ".txt"}
# Outside references: a specification file, a sibling folder, or a tracker item named without URL.
# (assembled from parts so that this file itself holds none of the cited strings)
_SPEC, _SIB = "SPEC", re.escape("../" + "shared")
FORBIDDEN = re.compile(rf"{_SPEC} §|{_SPEC}\.md|{_SIB}|\b[Ii]ssue #?\d+|§ ?\d")
THIS_FILE = Path(__file__).resolve()


def _tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    files = [ROOT / line for line in out.stdout.splitlines()]
    return [f for f in files
            if (f.suffix in TEXT_SUFFIXES or f.name == "Makefile") and f.is_file()
            and f.resolve() != THIS_FILE]


def find_outside_references(text: str) -> list[str]:
    """Lines of ``text`` that cite something outside the repository."""
    return [line.strip() for line in text.splitlines() if FORBIDDEN.search(line)]


def test_pattern_catches_outside_references():
    spec, sib = "SP" + "EC", ".." + "/shared"
    bad = [f"see {spec} §5.3", f"from {sib}/notes", f"{spec}.md table", "(issue 6)", "Issue #13",
           "as in §4.2"]
    for line in bad:
        assert find_outside_references(line), line
    good = ["iSegProbe `core/inference/utils.py`", "https://github.com/uncbiag/SegNext/issues/10",
            "LoftUp, arXiv 2504.14032, Tab. 4", "docs/evaluation.md", "tissue 3"]
    for line in good:
        assert not find_outside_references(line), line


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_no_tracked_file_cites_outside_documents():
    files = _tracked_text_files()
    assert len(files) > 50, "git ls-files found too few files; is this the repository root?"
    hits = []
    for f in files:
        for line in find_outside_references(f.read_text(encoding="utf-8", errors="replace")):
            hits.append(f"{f.relative_to(ROOT)}: {line[:120]}")
    assert not hits, "outside references remain:\n" + "\n".join(hits)
