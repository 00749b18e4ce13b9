"""Stage 5b, relegalize: legalize and emit again, per target built with another release of
IREE (Target.toolchain: iree=3.12.0), with that release's iree-compile: its own input phase
(torch-mlir's ONNX and torch conversions, StableHLO's, TOSA's) on the imported module, then
the same emit. So an upgrade's answer covers the whole compiler, not only its back end.

Between releases a module goes as text: 3.11.0 and 3.9.0 stop at "unknown attribute code:
23" on most of 3.13.0's emitted bytecode (they read its imported modules and its printed
text), and 3.13.0's bindings cannot read some of 3.11.0's. So legalize's output is printed
as text by the release's iree-opt for emit, and emit's module, written by kiln's bindings,
is printed by kiln's iree-opt and written again as bytecode by the release's.

It publishes what emit does (model.mlirbc, model.irpa, model.json: role EMITTED), so the
target's lower, validate and bisect read it where they read emit's elsewhere; and it stands
for the model's own legalize and emit in that target's row: a failure of those (kiln's
release) is no failure of this target's release (docs/DESIGN.md §11.2)."""
from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from pipeline.cache.digest import digest_file
from pipeline.stage import Stage
from pipeline.vocab import Role
from stages.emit import EMITTERS
from stages.emit import STAGE as EMIT
from stages.importer import STAGE as IMPORT
from stages.iree_tools import iree_opt
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
        return (*LEGALIZE.tools(model), "iree-opt")

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
            result = EMIT.run(dataclasses.replace(ctx, inputs={**ctx.inputs,
                                                               LEGALIZE.name: legalized}))
            _in_releases_bytecode(ctx, legalized / "model.mlir")
        return result


def _in_releases_bytecode(ctx, text: Path) -> None:
    """ctx.out's model.mlirbc written again by the target's release: kiln's iree-opt prints
    it as text, the release's reads that and writes its own bytecode; model.json's digest
    follows."""
    module = ctx.out / "model.mlirbc"
    iree_opt(module, text, [], ctx)
    iree_opt(text, module, ["--emit-bytecode"], ctx, ctx.target.toolchain)
    info_file = ctx.out / "model.json"
    info = json.loads(info_file.read_text())
    info["sha256"] = digest_file(module)
    info_file.write_text(json.dumps(info, indent=1, sort_keys=True))


STAGE = Relegalize()
EMITTERS.add(STAGE.name)
