"""`doit list` and `doit help <task>` on a copy of the project (kiln's own dodo.py, its
stages and pyproject.toml, whose command plugin replaces doit's help): every stage described
in a line, every key=value option a task takes listed with an example. Builds nothing."""
from __future__ import annotations

import shutil

from conftest import REPO, SHARED_TOOLCHAINS

import stages
from pipeline.plan.variables import VARIABLES


def test_doit_list_describes_every_stage_in_a_line(project):
    # (tune's tasks exist where tuning is on and the tuned variant tried; relegalize's where a
    # target is built with a release other than kiln's)
    proc = project.doit("list", "tune=on", "variants=default,tuned", "iree=3.12.0,3.13.0",
                        env_extra={"KILN_TOOLCHAINS": str(SHARED_TOOLCHAINS)})
    listed = dict(line.split(None, 1) for line in proc.stdout.splitlines())
    # a stage whose group others join (pick joins validate) is listed by the group's words
    joined = {}
    for stage in stages.pipeline():   # (the first stage to name a group says its words)
        if stage.group:
            joined.setdefault(stage.group, stage.group_doc)
    for stage in stages.pipeline():
        assert stage.doc, stage.name
        assert listed[stage.name] == joined.get(stage.name, stage.doc), proc.stdout
    assert listed["compile"].startswith("compile the selected models")
    assert listed["prune"].startswith("drop cache entries")


def test_doit_help_lists_every_option_a_task_takes_with_an_example(project):
    shutil.copy2(REPO / "pyproject.toml", project.root / "pyproject.toml")
    out = project.doit("help", "validate").stdout
    lines = out.splitlines()
    assert lines[0] == ("validate  validate (and time) every variant; pick each target's fastest; "
                        "bisect what is off")
    assert any(line.split()[:1] == ["pick"] for line in lines)   # the stages it runs
    assert "usage: doit validate [key=value ...]" in lines
    example = next(line for line in lines if line.startswith("  e.g. doit validate "))
    assert "model=" in example and "target=" in example, out
    for name in VARIABLES:
        listed = any(line.startswith(f"  {name}=") for line in lines)
        assert listed == (name != "days"), (name, out)   # days= is prune's alone
    for option in ("model", "target", "variants", "inputs", "shapes", "executor", "shard",
                   "timing", "xfail", "retry", "strict", "against"):
        assert f"  {option}=" in out
    prune = project.doit("help", "prune").stdout
    assert "  days=" in prune and "  model=" not in prune and "e.g. doit prune days=7" in prune
    usage = project.doit("help").stdout   # doit's own, with a line for kiln's
    assert "kiln: doit help <task> lists the key=value options" in usage
