"""kiln's stages, in pipeline order, and the hooks the engine needs from them.

Each module holds one stage and registers it as STAGE; framework specifics live in
stages/frameworks/ (one adapter per framework). Importing this package imports no framework
and no IREE module: that happens inside each stage's run().
"""
from __future__ import annotations

import importlib

from stages.frameworks import companions, detect
from stages.targets import resolve as resolve_target

ORDER = ("capture", "serialize", "importer", "legalize", "emit", "lower", "codegen", "validate",
         "pick", "bisect")


def pipeline() -> list:
    return [importlib.import_module(f"stages.{name}").STAGE for name in ORDER]


__all__ = ["pipeline", "detect", "companions", "resolve_target"]
