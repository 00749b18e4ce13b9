"""Stage 3, import: interchange format -> MLIR in the framework's input dialect, with every
debug location stripped so no path of this machine reaches an artifact."""
from __future__ import annotations

from pathlib import Path

from stages.framework_stage import FrameworkStage

MLIR = Path(__file__).parent / "mlir.py"


class Import(FrameworkStage):
    name = "import"
    doc = "import the interchange format to MLIR in the framework's input dialect"
    inputs = ("serialize",)
    code = FrameworkStage.code + (MLIR,)

    def outputs(self, model):
        return ("imported.mlirbc",)

    def work(self, adapter, ctx):
        source = ctx.inputs["serialize"] / adapter.serialized if "serialize" in ctx.inputs \
            else Path(ctx.model.sources["model"])
        adapter.import_mlir(source, ctx.out / "imported.mlirbc")


STAGE = Import()
