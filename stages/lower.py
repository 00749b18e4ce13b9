"""Stage 6, lower: per target, iree-compile from the input phase to flow (bytecode-safe) with
that target's flags. From here on artifacts carry the target, so its flags are in the key."""
from __future__ import annotations

from pathlib import Path

from pipeline.stage import Stage
from stages.iree_tools import iree_compile
from stages.targets import compile_flags

HERE = Path(__file__).parent
PHASE = "flow"


class Lower(Stage):
    name = "lower"
    per_target = True
    inputs = ("emit",)
    code = (HERE / "iree_tools.py", HERE / "targets.py")

    def outputs(self, model):
        return ("lowered.mlirbc",)

    def tools(self, model):
        return ("iree-compile",)

    def params(self, model, target):
        return {"flags": compile_flags(target), "to": PHASE}

    def run(self, ctx):
        flags = ["--compile-from=input", f"--compile-to={PHASE}", "--emit-mlir-bytecode",
                 *compile_flags(ctx.target)]
        iree_compile(ctx.inputs["emit"] / "model.mlirbc", ctx.out / "lowered.mlirbc", flags, ctx)


STAGE = Lower()
