"""A stage is one module: a stage added between codegen and validate (a pass-through, as a
tuning stage would sit there) touches its own file and stages/__init__.py's ORDER only, and
the stages that read the module built for a target (validate, pick, bisect) then read its
module, not codegen's. A stage may apply to some targets only: where it does not, they read
codegen's module directly."""
from __future__ import annotations

import json

import pytest
from conftest import Project, copy_project
from test_mlir_files import matmul_mlir
from test_targets import add_backend

# the whole stage, as a new engineer would write it: it reads the module built for its
# target (by role: whichever stage before it built one) and hands it on as its own
PASSTHRU = '''"""A pass-through stage: per target (but vmvx), the module built for the target,
handed on unchanged."""
from __future__ import annotations

import shutil

from pipeline.stage import MODULE, Stage
from stages.codegen import STAGE as CODEGEN


class PassThru(Stage):
    name = "passthru"
    doc = "hand the module built for each target on unchanged"
    per_target = True
    role = MODULE.role
    inputs = (MODULE,)

    def outputs(self, model):
        return ("module.vmfb",)

    def applies_to(self, model, target):
        return target is None or target.backend != "vmvx"

    def rebuild_flags(self, model, target, built):
        return CODEGEN.rebuild_flags(model, target, built)

    def run(self, ctx):
        (built,) = ctx.built(MODULE).values()
        shutil.copyfile(built / "module.vmfb", ctx.out / "module.vmfb")


STAGE = PassThru()
'''


def add_passthru(root) -> None:
    """The stage's module, and its place in ORDER before validate (after tune)."""
    (root / "stages" / "passthru.py").write_text(PASSTHRU)
    init = root / "stages" / "__init__.py"
    text = init.read_text()
    placed = text.replace("from stages.codegen import STAGE as CODEGEN\n",
                          "from stages.codegen import STAGE as CODEGEN\n"
                          "from stages.passthru import STAGE as PASSTHRU\n") \
        .replace("TUNE, VALIDATE", "TUNE, PASSTHRU, VALIDATE")
    assert placed.count("PASSTHRU") == 2, "stages/__init__.py's ORDER is not where it was"
    init.write_text(placed)


@pytest.fixture(scope="module")
def with_passthru(tmp_path_factory):
    project = Project(copy_project(tmp_path_factory.mktemp("passthru") / "proj"))
    add_passthru(project.root)
    add_backend(project.root)   # (and a new backend: both at once, nothing else changed)
    model = project.root / "matmul.mlir"
    model.write_text(matmul_mlir())
    project.doit("validate", f"model={model}", "target=cpu,vmvx,sync")
    return project


def read_by(project, task: str) -> set[str]:
    """The upstream stages whose files a task's key holds: what it read."""
    entry = project.root / "build" / ".kiln" / "tasks" / f"{task.replace(':', '.', 1)}.json"
    inputs = json.loads(entry.read_text())["fingerprint"]["inputs"]
    return {name.split("/")[0] for name in inputs}


def test_a_stage_added_before_validate_is_what_validate_reads(with_passthru):
    statuses = with_passthru.statuses()
    assert statuses["passthru:matmul.mlir@cpu"] == "ran"
    assert statuses["validate:matmul.mlir@cpu"] == "ran"
    assert read_by(with_passthru, "validate:matmul.mlir@cpu") >= {"passthru"}
    assert "codegen" not in read_by(with_passthru, "validate:matmul.mlir@cpu")
    assert read_by(with_passthru, "passthru:matmul.mlir@cpu") == {"codegen"}
    # pick keeps the module validate ran
    assert read_by(with_passthru, "pick:matmul.mlir@cpu") == {"validate", "passthru"}


def test_a_stage_may_apply_to_some_targets_only(with_passthru):
    statuses = with_passthru.statuses()
    assert "passthru:matmul.mlir@vmvx" not in statuses
    assert statuses["validate:matmul.mlir@vmvx"] == "ran"
    assert "codegen" in read_by(with_passthru, "validate:matmul.mlir@vmvx")
    assert "passthru" not in read_by(with_passthru, "validate:matmul.mlir@vmvx")


def test_a_new_backend_and_a_new_stage_together(with_passthru):
    """A backend entry and a pass-through stage added to the same project: the model runs
    through both, validate on the new backend reading the new stage's module."""
    rows = {(t["stage"], t["target"]): t for t in with_passthru.record()}
    assert rows[("passthru", "sync")]["status"] == "ran"
    assert rows[("validate", "sync")]["result"]["passed"]
    validate_sync = next(t["task"] for t in with_passthru.record()
                         if t["stage"] == "validate" and t["target"] == "sync")
    assert "passthru" in read_by(with_passthru, validate_sync)
    assert "codegen" not in read_by(with_passthru, validate_sync)
