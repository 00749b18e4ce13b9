"""Stage 3, import: interchange format -> MLIR in the framework's input dialect, with every
debug location stripped so no path of this machine reaches an artifact. (The module is
importer.py because `import` is a Python keyword; stages/__init__.py's ORDER holds the stage
itself, and its tasks are import:<model>.)"""
from __future__ import annotations

from pathlib import Path

from stages.framework_stage import FrameworkStage
from stages.serialize import STAGE as SERIALIZE

MLIR = Path(__file__).parent / "mlir.py"


class Import(FrameworkStage):
    name = "import"
    doc = "import the interchange format to MLIR in the framework's input dialect"
    inputs = (SERIALIZE.name,)
    code = FrameworkStage.code + (MLIR,)

    def outputs(self, model):
        return ("imported.mlirbc",)

    def work(self, adapter, ctx):
        source = ctx.inputs[SERIALIZE.name] / adapter.serialized \
            if SERIALIZE.name in ctx.inputs \
            else Path(ctx.model.sources["model"])
        adapter.import_mlir(source, ctx.out / "imported.mlirbc")


STAGE = Import()
