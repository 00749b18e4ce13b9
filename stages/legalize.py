"""Stage 4, legalize: convert the input dialect to IREE's (iree-compile --compile-to=input,
target-independent), then walk the result and fail with the ops IREE cannot take."""
from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline.stage import Stage, StageError
from stages import frameworks
from stages.iree_tools import iree_compile
from stages.mlir import entry_inputs, op_names, parse, public_functions

HERE = Path(__file__).parent

# dialects IREE lowers from the input phase on; anything else left is an input-dialect op
# (torch.*, stablehlo.*, tosa.*, ...) that input conversion could not legalize
IREE_DIALECTS = {"builtin", "func", "util", "hal", "flow", "stream", "arith", "math", "linalg",
                 "tensor", "scf", "cf", "complex", "iree_linalg_ext", "iree_tensor_ext",
                 "iree_encoding", "affine", "bufferization", "ml_program", "io_parameters"}
ILLEGAL = re.compile(r"failed to legalize operation '([\w.]+)'(?:.*?<\{name = \"([\w.]+)\"\}>)?")


class Legalize(Stage):
    name = "legalize"
    inputs = ("import",)
    code = (HERE / "iree_tools.py", HERE / "mlir.py")

    def outputs(self, model):
        return ("legalized.mlirbc", "legalize.json")

    def tools(self, model):
        return ("iree-compile",)

    def params(self, model, target):
        return {"input_type": frameworks.get(model.framework).input_type}

    def run(self, ctx):
        adapter = frameworks.get(ctx.model.framework)
        source = ctx.inputs["import"] / "imported.mlirbc" if "import" in ctx.inputs \
            else Path(ctx.model.sources["model"])
        out = ctx.out / "legalized.mlirbc"
        flags = [f"--iree-input-type={adapter.input_type}", "--compile-to=input",
                 "--emit-mlir-bytecode"]
        try:
            iree_compile(source, out, flags, ctx)
        except StageError as err:
            illegal = sorted({b or a for a, b in ILLEGAL.findall("\n".join(ctx.log_lines))})
            if illegal:
                raise StageError(f"ops IREE cannot legalize: {', '.join(illegal)}",
                                 command=err.command) from None
            raise
        module = parse(out.read_bytes())
        ops = op_names(module)
        illegal = sorted(n for n in ops if n.split(".", 1)[0] not in IREE_DIALECTS)
        if illegal:
            raise StageError(f"ops IREE cannot legalize: {', '.join(illegal)}")
        entries = [f for f in public_functions(module) if not f.endswith("$async")]
        if not entries:
            raise StageError("the imported module has no public function to run")
        (ctx.out / "legalize.json").write_text(json.dumps(
            {"entry": entries[0], "functions": entries, "inputs": entry_inputs(module, entries[0]),
             "ops": dict(sorted(ops.items()))},
            indent=1, sort_keys=True))


STAGE = Legalize()
