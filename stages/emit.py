"""Stage 5, emit: publish the legalized MLIR as the one target-independent artifact every
target's lowering starts from: the model's structure (model.mlirbc, weight-free unless the
model keeps its weights inline), its weights (model.irpa, an IREE parameter archive; empty
when nothing moved) and model.json (entry point, inputs, digest, the parameters moved).

Because the weights live apart, a re-trained checkpoint changes model.irpa only: lower and
codegen read model.mlirbc alone and are reused; validate reads both."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.cache.digest import digest_file
from pipeline.stage import ByRole, Stage
from pipeline.vocab import Role
from stages.frameworks.refusals import refusals_of
from stages.legalize import STAGE as LEGALIZE

HERE = Path(__file__).parent
IREE_BINDINGS = ("iree.compiler",)


# what a target's stages read: emit's, or (a target built with another release of IREE) the
# stage that legalizes and emits again with that release (stages/relegalize.py)
EMITTED = ByRole(Role.EMITTED)
EMITTERS = {"emit"}   # the names of the stages of that role (relegalize adds its own)


def emitted(ctx) -> Path:
    """The directory of the emitted model a target's stage reads (EMITTED)."""
    return next(iter(ctx.built(EMITTED).values()))


class Emit(Stage):
    name = "emit"
    doc = "publish the MLIR every target starts from, its weights (.irpa) and model.json"
    role = Role.EMITTED
    inputs = (LEGALIZE.name,)
    code = (HERE / "weights.py", HERE / "mlir.py", HERE / "frameworks" / "refusals.py")

    def outputs(self, model):
        return ("model.mlirbc", "model.irpa", "model.json")

    def key_params(self, model, target):
        return {"weights": model.weights, "threshold": model.weights_threshold}

    def run(self, ctx):
        from stages.mlir import parse
        from stages.weights import externalize
        legalized = ctx.inputs[LEGALIZE.name]
        module = parse((legalized / "legalized.mlirbc").read_bytes())
        archive = ctx.out / "model.irpa"
        # an exception is IREE's bindings' or passes' (a verdict), or kiln's own (a bug: no
        # verdict, said so with the traceback in the log)
        with refusals_of(IREE_BINDINGS, ctx.model):
            moved = [] if ctx.model.weights == "inline" else \
                externalize(module, archive, ctx.model.weights_threshold, ctx.log)
        if not archive.exists():
            archive.write_bytes(b"")   # a declared output: empty means "no parameters"
        with open(ctx.out / "model.mlirbc", "wb") as f:
            module.operation.write_bytecode(f)
        info = json.loads((legalized / "legalize.json").read_text())
        parameters = {"scope": "model", "count": len(moved), "bytes": archive.stat().st_size,
                      "threshold": ctx.model.weights_threshold, "mode": ctx.model.weights}
        (ctx.out / "model.json").write_text(json.dumps(
            {"entry": info["entry"], "inputs": info["inputs"],
             "sha256": digest_file(ctx.out / "model.mlirbc"), "phase": "input",
             "parameters": parameters, "parameter_tensors": moved},
            indent=1, sort_keys=True))
        ctx.log(f"emit: {len(moved)} weights moved to model.irpa ({parameters['bytes']} bytes)")
        return {"parameters": parameters}


STAGE = Emit()
