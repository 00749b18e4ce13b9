"""Stage 7, codegen: per target, from the lowered (flow) phase to the deployable .vmfb.

It builds the module validate, pick and bisect read (role 'module', read by them ByRole:
MODULE), so a stage placed after it that remakes the module (a tuning stage) is theirs
instead, with no change here or there."""
from __future__ import annotations

from pipeline.stage import Role, Stage
from stages.iree_tools import COMPILE_CODE, iree_compile
from stages.lower import PHASE
from stages.lower import STAGE as LOWER
from stages.targets import compile_flags


class Codegen(Stage):
    name = "codegen"
    doc = "compile each target's flow to its deployable module (.vmfb)"
    group = "compile"
    role = Role.MODULE
    group_doc = "compile the selected models for the selected targets (model=, target=)"
    per_target = True
    inputs = (LOWER.name,)
    code = COMPILE_CODE

    def outputs(self, model):
        return ("module.vmfb",)

    def tools(self, model):
        return ("iree-compile",)

    def key_params(self, model, target):
        return {"flags": compile_flags(target), "from": PHASE}

    def rebuild_flags(self, model, target, built):
        """The iree-compile flags that build this stage's module again from emit's MLIR
        (the input phase): what a stage that rebuilds the module traced (bisect) compiles
        with. Every stage of role 'module' says this (built: its own output directory,
        where a tuning stage's spec would be), so that the rebuild is the module validated."""
        return compile_flags(target)

    def run(self, ctx):
        flags = [f"--compile-from={PHASE}", *compile_flags(ctx.target)]
        iree_compile(ctx.inputs[LOWER.name] / "lowered.mlir", ctx.out / "module.vmfb", flags, ctx)


STAGE = Codegen()
