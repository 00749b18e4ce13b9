"""Stage 5, emit: publish the imported, legalized MLIR as bytecode plus its digest and entry
point: the one target-independent artifact every target's lowering starts from."""
from __future__ import annotations

import json
import shutil

from pipeline.keys import digest_file
from pipeline.stage import Stage


class Emit(Stage):
    name = "emit"
    inputs = ("legalize",)

    def outputs(self, model):
        return ("model.mlirbc", "model.json")

    def run(self, ctx):
        legalized = ctx.inputs["legalize"]
        shutil.copyfile(legalized / "legalized.mlirbc", ctx.out / "model.mlirbc")
        info = json.loads((legalized / "legalize.json").read_text())
        (ctx.out / "model.json").write_text(json.dumps(
            {"entry": info["entry"], "inputs": info["inputs"], "sha256": digest_file(ctx.out / "model.mlirbc"),
             "phase": "input"}, indent=1, sort_keys=True))


STAGE = Emit()
