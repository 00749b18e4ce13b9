"""kiln's stages, in pipeline order, and the hooks the engine needs from them.

Each module holds one stage and registers it as STAGE; other stages name it through that
object (CODEGEN.name), never by a string of their own. ORDER holds the stages themselves: a
new stage is its module and its place here, nothing else (tests/test_new_stage.py). Framework
specifics live in stages/frameworks/ (one adapter per framework). Importing this package
imports no framework and no IREE module: that happens inside each stage's run().
"""
from __future__ import annotations

from stages.bisect import STAGE as BISECT
from stages.capture import STAGE as CAPTURE
from stages.codegen import STAGE as CODEGEN
from stages.emit import STAGE as EMIT
from stages.frameworks import companions, detect
from stages.importer import STAGE as IMPORT
from stages.iree_tools import ask_devices_ahead
from stages.legalize import STAGE as LEGALIZE
from stages.lower import STAGE as LOWER
from stages.pick import STAGE as PICK
from stages.relegalize import STAGE as RELEGALIZE
from stages.serialize import STAGE as SERIALIZE
from stages.targets import resolve
from stages.toolchains import with_release
from stages.tune import STAGE as TUNE
from stages.validate import STAGE as VALIDATE

ORDER = (CAPTURE, SERIALIZE, IMPORT, LEGALIZE, EMIT, RELEGALIZE, LOWER, CODEGEN, TUNE, VALIDATE,
         PICK, BISECT)


def pipeline() -> list:
    return list(ORDER)


def resolve_target(target, **tuning):
    """stages.targets.resolve, with the target's release of IREE provisioned (stages.
    toolchains); and the runtime's devices, which validate's key names, asked meanwhile in
    the background (the plan asks for them only after building its graph)."""
    ask_devices_ahead()
    return with_release(resolve(target, **tuning))


__all__ = ["pipeline", "detect", "companions", "resolve_target"]
