"""MLIR helpers on IREE's own Python bindings: strip debug info, write, walk."""
from __future__ import annotations

from pathlib import Path


def write_stripped(module, path: Path, bytecode: bool = True) -> None:
    """Strip every location (no machine path may reach an artifact), then write."""
    from iree.compiler import passmanager
    with module.context:
        passmanager.PassManager.parse("builtin.module(strip-debuginfo)").run(module.operation)
    if bytecode:
        with open(path, "wb") as f:
            module.operation.write_bytecode(f)
    else:
        path.write_text(module.operation.get_asm(enable_debug_info=False))


def parse(data: bytes):
    from iree.compiler import ir
    context = ir.Context()
    return ir.Module.parse(data, context)


def op_names(module) -> dict[str, int]:
    from iree.compiler import ir
    counts: dict[str, int] = {}

    def visit(op):
        counts[op.name] = counts.get(op.name, 0) + 1
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    return counts


def public_functions(module) -> list[str]:
    names = []
    for op in module.body.operations:
        attrs = op.operation.attributes
        if op.operation.name.endswith(".func") and "sym_name" in attrs:
            visibility = str(attrs["sym_visibility"]).strip('"') if "sym_visibility" in attrs else "public"
            if visibility == "public":
                names.append(str(attrs["sym_name"]).strip('"'))
    return names
