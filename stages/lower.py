"""Stage 6, lower: per target, iree-compile from the input phase to flow with that target's
flags. From here on artifacts carry the target, so its flags are in the key.

The flow phase is handed on as *text* without debug info: parsed from stdin, every op gets a
'-:line:col' location. As bytecode, ops with unknown locations leave an uninitialised line
number in the llvm-cpu ELF's export table and the .vmfb differs on every build."""
from __future__ import annotations

from pathlib import Path

from pipeline.stage import Stage
from stages.emit import EMITTED, emitted
from stages.iree_tools import COMPILE_CODE, iree_compile
from stages.targets import compile_flags
from stages.weights import SCOPE

HERE = Path(__file__).parent
PHASE = "flow"


class Lower(Stage):
    name = "lower"
    doc = "iree-compile to flow with each target's (and each variant's) flags"
    per_target = True
    inputs = (EMITTED,)
    code = (*COMPILE_CODE, HERE / "weights.py")

    def outputs(self, model):
        return ("lowered.mlir",)

    def tools(self, model):
        return ("iree-compile",)

    def reads(self, upstream, outputs, model, target):
        # the weights only when this target takes them into its module
        return ("model.mlirbc", *(("model.irpa",) if inline_weights(model, target) else ()))

    def key_params(self, model, target):
        return {"flags": compile_flags(target), "to": PHASE,
                "weights": "inline" if inline_weights(model, target) else "external"}

    def run(self, ctx):
        source = emitted(ctx)
        iree_compile(source / "model.mlirbc", ctx.out / "lowered.mlir",
                     flow_flags(source, ctx.model, ctx.target, compile_flags(ctx.target)), ctx)


def flow_flags(emitted: Path, model, target, flags: list[str]) -> list[str]:
    """iree-compile's flags from the input phase (emit's model.mlirbc) to flow with these
    target flags (the target's own, or the tune stage's candidates: stages/tune.py)."""
    phase = ["--compile-from=input", f"--compile-to={PHASE}", *flags]
    if inline_weights(model, target) and (emitted / "model.irpa").stat().st_size:
        # IREE imports the archive's values back into the module: no size limit
        phase += [f"--iree-parameter-import={SCOPE}={emitted / 'model.irpa'}",
                  f"--iree-parameter-import-maximum-size={1 << 62}"]
    return phase


def inline_weights(model, target) -> bool:
    """This target's module carries the weights itself (`params: inline` on the target)."""
    return target.weights == "inline" and model.weights != "inline"


STAGE = Lower()
