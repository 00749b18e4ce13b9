"""The plan memo (pipeline/plan/memo.py): a no-op run reuses the last task list without making
the plan, and any change to what the plan was made from makes it again."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Project, copy_project, without_kiln_settings
from test_mlir_files import matmul_mlir
from test_probes import make_tool

from pipeline.cache import probes
from pipeline.plan import memo

CONFIG = """targets:
  cpu:
    backend: llvm-cpu
    arch: host
  vmvx:
    backend: vmvx
models:
{models}
matrices:
  default:
    models: [{names}]
    targets: [cpu]
    variants: [default]
"""
# what only making the plan imports: a no-op run from the memo never needs them
PLAN_ONLY_MODULES = ("networkx", "yaml", "numpy", "stages", "tabulate")


def mlir_project(root: Path, names=("m1", "m2")) -> Project:
    copy_project(root)
    (root / "mlir").mkdir(exist_ok=True)
    for name in names:
        (root / "mlir" / f"{name}.mlir").write_text(matmul_mlir())
    write_config(root, names)
    return Project(root)


def write_config(root: Path, names, extra: str = "") -> None:
    models = "\n".join(f"  {n}:\n    framework: mlir\n    file: mlir/{n}.mlir" for n in names)
    (root / "targets.yaml").write_text(CONFIG.format(models=models, names=", ".join(names))
                                       + extra)


def listed(project: Project, *variables: str, env: dict | None = None) -> tuple[list[str], bool]:
    """(the tasks `doit list` shows, whether the plan was made: its modules were imported)."""
    proc = project.doit("list", "--all", "-q", *variables,
                        env_extra={"PYTHONPROFILEIMPORTTIME": "1", **(env or {})})
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    return sorted(proc.stdout.split()), "networkx" in imported


@pytest.fixture
def mlir(tmp_path) -> Project:
    return mlir_project(tmp_path / "proj")


def test_the_second_list_comes_from_the_memo(mlir):
    first, planned = listed(mlir)
    assert planned and "lower:m1@cpu" in first and "lower:m2@cpu" in first
    second, planned = listed(mlir)
    assert second == first and not planned
    fresh, planned = listed(mlir, env={"KILN_PLAN_MEMO": "0"})
    assert fresh == first and planned


@pytest.mark.parametrize("change", ["config", "variable", "environment", "code", "source",
                                    "new models file", "damaged memo"])
def test_what_the_plan_was_made_from_makes_it_again(mlir, change):
    before, _ = listed(mlir)
    listed(mlir)
    root, variables, env = mlir.root, (), {}
    if change == "config":            # a model added to the matrix
        write_config(root, ("m1", "m2", "m3"))
        (root / "mlir" / "m3.mlir").write_text(matmul_mlir())
    elif change == "variable":
        variables = ("model=m1",)
    elif change == "environment":     # what selects the devices the tasks are planned for
        env = {"VK_ICD_FILENAMES": "/nonexistent.json"}
    elif change == "code":            # kiln's own code: a stage's outputs or reads may differ
        with open(root / "stages" / "lower.py", "a") as f:
            f.write("\n# edited\n")
    elif change == "source":          # the model file itself
        (root / "mlir" / "m1.mlir").write_text(matmul_mlir() + "\n")
    elif change == "new models file":
        (root / "models" / "extra.py").write_text("FRAMEWORK = 'torch'\n\ndef build(:\n")
    elif change == "damaged memo":
        memo_file = root / "build" / ".kiln" / "plan-memo.marshal"
        memo_file.write_bytes(memo_file.read_bytes()[:100])
    after, planned = listed(mlir, *variables, env=env)
    assert planned, f"after a {change} change the plan was not made again"
    expected = {"config": lambda: set(before) | {t.replace("m1", "m3") for t in before
                                                 if "m1" in t},
                "variable": lambda: {t for t in before if "m2" not in t}}
    if change in expected:
        assert set(after) == expected[change]()
    else:
        assert after == before
    again, planned = listed(mlir, *variables, env=env)
    assert again == after and not planned   # and remembered again


def test_a_warning_from_making_the_plan_is_shown_on_every_run(mlir):
    (mlir.root / "models" / "broken.py").write_text("FRAMEWORK = 'torch'\n\ndef build(:\n")
    for _ in range(2):   # the second run is served by the memo
        proc = mlir.doit("list")
        assert "warning: model broken left out" in proc.stderr


def test_a_changed_tool_makes_the_plan_again(tmp_path, monkeypatch):
    """Tool versions and device lists are in the tasks (their up-to-date check): a new
    build of a probed executable, or a changed device, voids the memo."""
    monkeypatch.setenv(probes.PROBE_CACHE_ENV, str(tmp_path / "probes.json"))
    exe = make_tool(tmp_path)
    place = tmp_path / "icd.d"
    place.mkdir()
    probes.PROBED.clear()
    probes.probe(str(exe), ("--version",), lambda: "1.0")
    probes.probe(str(exe), ("--list_devices",), lambda: ["local-task://"],
               probes.Watch(places=(str(place),)))
    ctx = {"vars": {}}
    memo_file = tmp_path / "memo.json"

    def remember():
        memo.save(memo_file, ctx, {}, memo.probe_facts(), [{"basename": "t"}], [])

    remember()
    assert memo.load(memo_file, ctx) is not None
    make_tool(tmp_path, version="2.0.1")   # another build: another size
    assert memo.load(memo_file, ctx) is None
    remember()
    (place / "driver.json").write_text("{}")
    os.utime(place, ns=(1, place.stat().st_mtime_ns + 1_000_000_000))
    assert memo.load(memo_file, ctx) is None
    probes.PROBED.clear()


def test_a_no_op_run_makes_no_plan_and_an_edit_still_rebuilds(tmp_path):
    """Built for real (one small model on cpu): the next run imports nothing that making
    the plan needs; a changed compile flag still re-runs exactly what it reaches."""
    project = mlir_project(tmp_path / "proj", names=("m1",))
    project.doit()
    project.doit()
    proc = project.doit(env_extra={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    heavy = [m for m in imported if m.split(".")[0] in PLAN_ONLY_MODULES]
    assert heavy == [], f"a no-op run imported {heavy}"
    assert set(project.statuses().values()) == {"up-to-date"}
    (project.root / "targets.yaml").write_text((project.root / "targets.yaml").read_text()
        .replace("arch: host", "arch: host\n    flags: [--iree-opt-level=O1]"))
    project.doit()
    ran = {t for t, s in project.statuses().items() if s == "ran"}
    assert ran == {"lower:m1@cpu", "codegen:m1@cpu"}, project.statuses()   # the flag's reach
    assert project.statuses()["legalize:m1"] == "up-to-date"


def test_the_record_is_not_rewritten_by_a_no_op_run(tmp_path):
    project = mlir_project(tmp_path / "proj", names=("m1",))
    project.doit()
    first = project.doit().stdout
    run_json = project.root / "build" / "run.json"
    stamp = run_json.stat().st_mtime_ns
    second = project.doit().stdout
    assert run_json.stat().st_mtime_ns == stamp            # same record: not written again
    assert summary_of(second) == summary_of(first) and "m1" in second and "up-to-date" in second
    run_json.unlink()                                      # a report gone is written again
    project.doit()
    assert json.loads(run_json.read_text())["tasks"]


def summary_of(out: str) -> str:
    """A run's printout less doit's task lines, whose order doit leaves open where tasks
    wait on others (its waiting set: bisect and pick both wait on validate)."""
    return out.split("\n\n", 1)[1]


def test_a_no_op_summary_is_reused_only_over_the_same_tasks_and_database(tmp_path):
    """A no-op run after a no-op run prints the last summary without building the record
    (report.record.reuse); another selection, or a task that ran in between, builds it."""
    project = mlir_project(tmp_path / "proj")
    project.doit()
    project.doit()
    summary = project.root / "build" / ".kiln" / "summary.json"
    assert json.loads(summary.read_text())["stamp"] is not None   # what the next reuse checks
    first = summary_of(project.doit().stdout)
    assert summary_of(project.doit().stdout) == first and "m2" in first
    project.doit("model=m1")                                   # another task list
    assert {t.split(":")[1].split("@")[0] for t in project.statuses()} == {"m1"}
    assert summary_of(project.doit().stdout) == first
    vmfb = project.root / "build" / "m2" / "cpu" / "codegen" / "module.vmfb"
    damaged = bytearray(vmfb.read_bytes())
    damaged[-1] ^= 0xFF
    vmfb.write_bytes(bytes(damaged))                           # restored: its row changes
    project.doit()
    assert project.statuses()["codegen:m2@cpu"] == "cached"
    project.doit()
    assert set(project.statuses().values()) == {"up-to-date"}
    assert summary_of(project.doit().stdout) == first


def test_a_run_in_processes_leaves_a_no_op(tmp_path):
    """With -n (doit's child processes) the stage's values reach doit's database too: the
    next run, -n or not, runs nothing (they used to be lost, and every -n run ran every
    task again, restoring each from the cache)."""
    project = mlir_project(tmp_path / "proj")
    project.doit("-n", "2")
    assert {"ran", "cached"} >= set(project.statuses().values())
    project.doit("-n", "2")
    assert set(project.statuses().values()) == {"up-to-date"}
    project.doit()
    assert set(project.statuses().values()) == {"up-to-date"}


# `doit list` of the plan (made: KILN_PLAN_MEMO=0) in this interpreter, then the modules it left
LIST_AND_SAY_IMPORTED = """import runpy, sys
sys.argv = ["doit", "list", "--all", "-q", "model=m1,add.onnx", "target=cpu"]
try:
    runpy.run_module("doit", run_name="__main__")
except SystemExit as stop:
    assert not stop.code, stop.code
print(" ".join(sorted(sys.modules)))"""


def test_making_a_plan_imports_no_numpy(mlir):
    """numpy's import is a twentieth of a cold plan's time (docs/DESIGN.md §10.6): a plan, with
    every stage module and framework adapter loaded, imports none (they import it where used)."""
    from onnx import TensorProto, helper
    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in "xyz"]
    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "add", values[:2],
                              values[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    assert b"\x70\x01" not in model   # (else the ONNX hook parses it, with onnx and numpy)
    (mlir.root / "add.onnx").write_bytes(model)
    proc = subprocess.run([sys.executable, "-c", LIST_AND_SAY_IMPORTED], cwd=mlir.root,
                          env={**without_kiln_settings(os.environ), "KILN_PLAN_MEMO": "0"},
                          capture_output=True, text=True, check=True)
    *listed, imported = proc.stdout.splitlines()
    assert "validate:add.onnx@cpu" in map(str.strip, listed)
    imported = set(imported.split())
    assert {"networkx", "stages.validate", "stages.runtime", "stages.frameworks.onnx_fw",
            "stages.frameworks.tflite_fw"} <= imported
    assert not {m for m in imported if m.split(".")[0] in ("numpy", "onnx", "tarfile")}


def test_the_tasks_kiln_makes_are_those_doit_makes_of_the_dicts(mlir):
    """pipeline.driver.doit_tasks makes doit's Task objects itself (docs/DESIGN.md §10.6): from
    a real plan's specs (with a task whose extra field leaves it to doit), each task equals
    the one doit's loader makes of the same dict, in the same order, and no two share a
    container (a task's values, its file_dep ...)."""
    import marshal

    from doit.loader import generate_tasks
    from doit.task import Task

    from pipeline.driver.doit_tasks import TaskMaker
    listed(mlir)
    specs = marshal.loads((mlir.root / "build" / ".kiln" / "plan-memo.marshal").read_bytes())["tasks"]
    specs.append({"basename": "lower", "name": "extra", "verbosity": 2, "task_dep": ["lower:*"]})

    def check(task, values):   # (an up-to-date check: a callable)
        return None

    def dicts():
        for spec in specs:
            task = {k: v for k, v in spec.items() if not k.startswith("kiln_")}
            if "name" in spec and spec["name"] is not None:
                task |= {"actions": [(print, [spec["name"]])], "uptodate": [check]}
            elif "actions" not in spec:
                task["actions"] = [(print, [])]
            yield task

    maker = TaskMaker()
    made = [maker.make(task) for task in dicts()]
    assert sum(isinstance(t, Task) for t in made) > 10 and isinstance(made[-1], dict)
    theirs = generate_tasks("stages", dicts())
    ours = generate_tasks("stages", (task for task in made))

    def attrs(task: Task) -> dict:
        return {k: repr(v) if k == "io" else v for k, v in vars(task).items()}

    assert [t.name for t in ours] == [t.name for t in theirs]
    assert [attrs(t) for t in ours] == [attrs(t) for t in theirs]
    assert "lower:extra" in next(t for t in ours if t.name == "lower").task_dep
    for key, value in vars(ours[0]).items():
        if not isinstance(value, (type(None), bool, int, str, tuple)):
            assert len({id(getattr(t, key)) for t in ours}) == len(ours), key
