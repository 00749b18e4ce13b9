"""Bad input a user gives kiln, each stopped (or warned of) with a message naming the file,
line or option at fault and what would be valid; a run stopped on it leaves a failed-run
record, never the previous run's looking current. Run on kiln's engine over pure-Python
stages (tests/toy_kiln.py): no framework, no compiler, each run a second or two."""
from __future__ import annotations

import json
from pathlib import Path

from toy_kiln import doit, make_project


def record(root: Path) -> dict:
    return json.loads((root / "build" / "run.json").read_text())


def test_an_xfail_entry_naming_no_known_model_is_a_warning_naming_its_line(tmp_path):
    root = make_project(tmp_path / "toy", cases=3)
    (root / "known.yaml").write_text("cpu:\n  c0001: its reason\n  c0001x: a typo of c0001\n"
                                     "'*':\n  gone: a case removed long ago\n")
    proc = doit(root, "xfail=known.yaml")
    known = root / "known.yaml"
    assert f"kiln: warning: {known}:3: xfail entry cpu: c0001x names no model kiln knows here " \
           "(did you mean c0001?)" in proc.stderr, proc.stderr
    assert f"{known}:5: xfail entry *: gone names no model" in proc.stderr, proc.stderr
    assert "c0001 names" not in proc.stderr and record(root)["tasks"]
    # a narrower selection leaves known cases out: no reason to warn of their entries
    narrow = doit(root, "xfail=known.yaml", "model=c0000")
    assert "c0001 names" not in narrow.stderr and "c0001x names no model" in narrow.stderr
