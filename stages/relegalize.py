"""Stage 5b, relegalize: legalize and emit again, per target built with another release of
IREE (Target.toolchain: iree=3.12.0), with that release's iree-compile: its own input phase
(torch-mlir's ONNX and torch conversions, StableHLO's, TOSA's) on the imported module, then
the same emit. So an upgrade's answer covers the whole compiler, not only its back end.

It publishes what emit does (model.mlirbc, model.irpa, model.json: role EMITTED), so the
target's lower, validate and bisect read it where they read emit's elsewhere; and it stands
for the model's own legalize and emit in that target's row: a failure of those (kiln's
release) is no failure of this target's release (docs/DESIGN.md §11.2)."""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from pipeline.stage import Stage
from pipeline.vocab import Role
from stages.emit import EMITTERS
from stages.emit import STAGE as EMIT
from stages.importer import STAGE as IMPORT
from stages.legalize import STAGE as LEGALIZE


class Relegalize(Stage):
    name = "relegalize"
    doc = "legalize and emit again with the target's own release of IREE (iree=)"
    per_target = True
    role = Role.EMITTED
    inputs = (IMPORT.name,)
    stands_for = (LEGALIZE.name, EMIT.name)

    def outputs(self, model):
        return (*EMIT.outputs(model), "legalize.json")

    def code_files(self, model):
        return (*super().code_files(model), *LEGALIZE.code_files(model), *EMIT.code_files(model))

    def tools(self, model):
        return LEGALIZE.tools(model)

    def key_params(self, model, target):
        return {**LEGALIZE.key_params(model, None), **EMIT.key_params(model, None)}

    def applies_to(self, model, target):
        # (per variant too, each variant's lower reading its own: a variant's flags do not
        # reach the input phase, so its key is the target's and the store restores the node)
        return target is not None and target.toolchain is not None \
            and LEGALIZE.applies_to(model, None) and EMIT.applies_to(model, None)

    def run(self, ctx):
        with tempfile.TemporaryDirectory(dir=ctx.out.parent) as tmp:
            legalized = Path(tmp)
            LEGALIZE.run(dataclasses.replace(ctx, out=legalized))
            (ctx.out / "legalize.json").write_bytes((legalized / "legalize.json").read_bytes())
            return EMIT.run(dataclasses.replace(ctx, inputs={**ctx.inputs,
                                                             LEGALIZE.name: legalized}))


STAGE = Relegalize()
EMITTERS.add(STAGE.name)
