"""Already-imported MLIR (.mlir text or .mlirbc bytecode) given as a file: it enters the
pipeline at legalize, with IREE detecting its input dialect. There is no framework to ask
for a reference, so validation checks only that the module runs on each target."""
from __future__ import annotations

import os

from .base import Framework, suffix_of


class ImportedMlir(Framework):
    name = "mlir"
    extra = ""        # needs nothing beyond kiln itself
    suffixes = (".mlir", ".mlirbc")
    input_type = "auto"
    first_stage = "legalize"
    has_reference = False

    def matches(self, path: str) -> bool:
        return suffix_of(path) in self.suffixes and os.path.isfile(path)   # (the stat last: rarely)


ADAPTER = ImportedMlir()
