"""Every citation of the design document resolves: a comment, docstring or page that says
`docs/DESIGN.md §N` (or `§N.M`, or a list such as `§9.1, §9.2`) names a heading that
docs/DESIGN.md has (`## N. ...` or `### N.M ...`), and names the document by its path."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DESIGN = REPO / "docs" / "DESIGN.md"
SKIP = {".venv", "build", "cache", ".git", "node_modules", "__pycache__"}
SUFFIXES = {".py", ".md", ".yaml", ".yml"}

SECTION = r"§\d+(?:\.\d+)?"
# "docs/DESIGN.md §N.M", a list "... §N, §M", a bare "DESIGN §N": the sections after the name
# (a citation wrapped over two comment lines is one citation: the "#" between is skipped)
SECTIONS = rf"{SECTION}(?:\s*(?:,|and|or)\s*{SECTION})*"
CITATION = re.compile(rf"\b((?:docs/)?DESIGN(?:\.md)?)[\s#]+({SECTIONS})")
HEADING = re.compile(r"^#{2,3}\s+(\d+(?:\.\d+)?)[.\s]", re.MULTILINE)


def _files() -> list[Path]:
    return sorted(p for p in REPO.rglob("*") if p.suffix in SUFFIXES and p.is_file()
                  and not SKIP.intersection(p.relative_to(REPO).parts))


def _citations() -> list[tuple[str, str, str]]:
    """(file:line, the name it used, a section number) for every citation in the repo."""
    found = []
    for path in _files():
        text = path.read_text(errors="replace")
        for match in CITATION.finditer(text):
            where = f"{path.relative_to(REPO)}:{text.count(chr(10), 0, match.start()) + 1}"
            for section in re.findall(r"§(\d+(?:\.\d+)?)", match.group(2)):
                found.append((where, match.group(1), section))
    return found


def test_the_design_document_has_numbered_headings():
    headings = HEADING.findall(DESIGN.read_text())
    top = [h for h in headings if "." not in h]
    assert top == [str(n) for n in range(1, len(top) + 1)], f"sections out of order: {top}"
    assert {h.split(".")[0] for h in headings} <= set(top), "a subsection without its section"
    assert len(headings) == len(set(headings)), "a section number used twice"


def test_the_repo_cites_the_design_document():
    assert _citations(), "no citation found: is the pattern still right?"


def test_every_citation_names_a_section_that_exists():
    sections = set(HEADING.findall(DESIGN.read_text()))
    missing = [f"{where}: §{section}" for where, _, section in _citations()
               if section not in sections]
    assert not missing, "citations of sections docs/DESIGN.md lacks: " + "; ".join(missing)


def test_every_citation_names_the_document_by_its_path():
    bare = [f"{where}: {name}" for where, name, _ in _citations()
            if name != "docs/DESIGN.md"]
    assert not bare, "cite it as docs/DESIGN.md §N: " + "; ".join(bare)
