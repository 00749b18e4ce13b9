"""Stage 6, lower: per target, iree-compile from the input phase to flow with that target's
flags. From here on artifacts carry the target, so its flags are in the key.

The flow phase is handed on as *text* without debug info: parsed from stdin, every op gets a
'-:line:col' location. As bytecode, ops with unknown locations leave an uninitialised line
number in the llvm-cpu ELF's export table and the .vmfb differs on every build."""
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
        return ("lowered.mlir",)

    def tools(self, model):
        return ("iree-compile",)

    def params(self, model, target):
        return {"flags": compile_flags(target), "to": PHASE}

    def run(self, ctx):
        flags = ["--compile-from=input", f"--compile-to={PHASE}", *compile_flags(ctx.target)]
        iree_compile(ctx.inputs["emit"] / "model.mlirbc", ctx.out / "lowered.mlir", flags, ctx)


STAGE = Lower()
