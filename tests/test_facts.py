"""The model-facts memo (pipeline/plan/facts.py): a stage hook's answer about a model file is
asked once while the file, what it named and what sits beside them are as they were, and
again when any of it changes. Pure-Python hooks that count their calls, each plan in a fresh
ModelFacts (as each doit process makes one); then the ONNX hook through `doit list`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Project, copy_project

from pipeline.cache import files
from pipeline.plan.facts import FACTS_ENV, ModelFacts


class Hooks:
    """detect and companions as a stage would answer them, counting calls: a model file
    'm.fake' names 'm.data' beside it (when there) and every file in 'm.tests/'."""

    def __init__(self):
        self.asked = []

    def detect(self, path):
        self.asked.append(("detect", Path(path).name))
        return "fake" if Path(path).suffix == ".fake" else None

    def companions(self, framework, path):
        self.asked.append(("companions", Path(path).name))
        path = Path(path)
        if path.read_bytes().startswith(b"bad"):
            raise ValueError("not a model")
        found = {"data": path.with_suffix(".data")} if path.with_suffix(".data").exists() else {}
        tests = path.with_suffix(".tests")
        found.update({f"test:{f.name}": f for f in sorted(tests.glob("*"))} if tests.is_dir() else {})
        return found


def plan(facts_file: Path, hooks: Hooks, model: Path) -> dict:
    """What one plan learns of model, through a fresh memo, saved as a plan saves it."""
    facts = ModelFacts(facts_file)
    framework = facts.detect(hooks.detect)(model)
    found = facts.companions(hooks.companions)(framework, model)
    facts.save()
    return {"framework": framework, **{role: str(p) for role, p in found.items()}}


def touch(path: Path, seconds: int = 5) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


@pytest.fixture
def model(tmp_path) -> Path:
    (tmp_path / "models").mkdir()
    path = tmp_path / "models" / "m.fake"
    path.write_bytes(b"weights" * 100)
    return path


def test_an_unchanged_file_is_not_asked_again(tmp_path, model):
    hooks, facts_file = Hooks(), tmp_path / "build" / "facts.json"
    first = plan(facts_file, hooks, model)
    assert first == {"framework": "fake"} and len(hooks.asked) == 2
    assert plan(facts_file, hooks, model) == first
    assert len(hooks.asked) == 2
    # a file coming and going beside it moves the directory's mtime, not what is in it
    (model.parent / "scratch").write_text("x")
    (model.parent / "scratch").unlink()
    touch(model.parent)
    assert plan(facts_file, hooks, model) == first and len(hooks.asked) == 2


@pytest.mark.parametrize("change", ["content", "touched", "companion appears",
                                    "companion changes", "companion goes", "test file added"])
def test_a_change_to_what_the_answer_was_made_from_asks_again(tmp_path, model, change):
    hooks, facts_file = Hooks(), tmp_path / "build" / "facts.json"
    data, tests = model.with_suffix(".data"), model.with_suffix(".tests")
    if change != "companion appears":
        data.write_bytes(b"external" * 10)
    tests.mkdir()
    (tests / "input_0.pb").write_bytes(b"in")
    before = plan(facts_file, hooks, model)
    plan(facts_file, hooks, model)
    assert len(hooks.asked) == 2
    if change == "content":
        model.write_bytes(b"other weights")
    elif change == "touched":
        touch(model)
    elif change == "companion appears":
        data.write_bytes(b"external")
    elif change == "companion changes":
        data.write_bytes(b"external, rewritten")
    elif change == "companion goes":
        data.unlink()
    elif change == "test file added":
        (tests / "output_0.pb").write_bytes(b"out")
    after = plan(facts_file, hooks, model)
    assert hooks.asked.count(("companions", "m.fake")) == 2, f"not asked again after {change}"
    # detect's answer is made from the model and the names beside it only
    beside = change in ("content", "touched", "companion appears", "companion goes")
    assert hooks.asked.count(("detect", "m.fake")) == (2 if beside else 1)
    expected = {"companion appears": {**before, "data": str(data)},
                "companion goes": {k: v for k, v in before.items() if k != "data"},
                "test file added": {**before, "test:output_0.pb": str(tests / "output_0.pb")}}
    assert after == expected.get(change, before)
    asked = len(hooks.asked)
    plan(facts_file, hooks, model)
    assert len(hooks.asked) == asked   # and remembered again


def test_an_error_is_never_remembered(tmp_path, model):
    hooks, facts_file = Hooks(), tmp_path / "build" / "facts.json"
    model.write_bytes(b"bad bytes")
    for _ in range(2):
        with pytest.raises(ValueError, match="not a model"):
            plan(facts_file, hooks, model)
    assert hooks.asked.count(("companions", "m.fake")) == 2


def test_off_read_only_or_damaged_means_asking(tmp_path, model, monkeypatch):
    hooks, facts_file = Hooks(), tmp_path / "build" / "facts.json"
    monkeypatch.setenv(FACTS_ENV, "0")
    plan(facts_file, hooks, model)
    plan(facts_file, hooks, model)
    assert len(hooks.asked) == 4 and not facts_file.exists()
    monkeypatch.delenv(FACTS_ENV)
    files.set_read_only(True)
    try:
        plan(facts_file, hooks, model)
    finally:
        files.set_read_only(False)
    assert not facts_file.exists()
    facts_file.parent.mkdir()
    facts_file.write_text('{"format": 1, "entries": {"detect ' + str(model) + '": [1]}}')
    assert plan(facts_file, hooks, model)["framework"] == "fake" and len(hooks.asked) == 8
    assert plan(facts_file, hooks, model)["framework"] == "fake" and len(hooks.asked) == 8
    assert json.loads(facts_file.read_text())["format"] == 1


def test_the_onnx_hook_parses_a_file_once_per_stat(tmp_path):
    """The real ONNX hook through `doit list` with the plan made every run: the second plan
    of an unchanged model imports no onnx at all; a changed one is parsed again, and a
    missing external data file is the same plan error as without the memo."""
    from test_onnx_files import mlp_model, write_external
    project = Project(copy_project(tmp_path / "proj"))
    path = project.root / "user" / "ext.onnx"
    write_external(mlp_model(1, 16, seed=1)[0], path)

    def listed() -> tuple[bool, dict]:
        proc = project.doit("list", "--all", f"model={path}", "target=cpu",
                            env_extra={"KILN_PLAN_MEMO": "0", "PYTHONPROFILEIMPORTTIME": "1"})
        assert "capture:ext.onnx" in proc.stdout
        imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                    if line.startswith("import time:")}
        facts = json.loads((project.root / "build" / ".kiln" / "model-facts.json").read_text())
        answers = [e["answer"] for k, e in facts["entries"].items() if k.startswith("companions")]
        return "onnx" in imported, answers[0]

    assert listed() == (True, {"data:weights.bin": str(path.parent / "weights.bin")})
    assert listed() == (False, {"data:weights.bin": str(path.parent / "weights.bin")})
    write_external(mlp_model(1, 16, seed=2)[0], path)   # other weights: the model file is rewritten
    assert listed()[0] is True and listed()[0] is False
    (path.parent / "weights.bin").unlink()
    proc = project.doit("list", f"model={path}", "target=cpu", check=False,
                        env_extra={"KILN_PLAN_MEMO": "0"})
    assert proc.returncode != 0 and "keeps its data in 'weights.bin'" in proc.stderr
