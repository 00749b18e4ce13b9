"""Stage 7, codegen: per target, from the lowered (flow) phase to the deployable .vmfb."""
from __future__ import annotations

from pipeline.stage import Role
from stages.iree_tools import iree_compile
from stages.lower import PHASE, Lower
from stages.targets import compile_flags


class Codegen(Lower):
    name = "codegen"
    doc = "compile each target's flow to its deployable module (.vmfb)"
    group = "compile"
    role = Role.MODULE
    group_doc = "compile the selected models for the selected targets (model=, target=)"
    inputs = ("lower",)

    def outputs(self, model):
        return ("module.vmfb",)

    def reads(self, upstream, outputs, model, target):
        return outputs

    def key_params(self, model, target):
        return {"flags": compile_flags(target), "from": PHASE}

    def run(self, ctx):
        flags = [f"--compile-from={PHASE}", *compile_flags(ctx.target)]
        iree_compile(ctx.inputs["lower"] / "lowered.mlir", ctx.out / "module.vmfb", flags, ctx)


STAGE = Codegen()
