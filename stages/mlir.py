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


_DTYPES = {"f16": "float16", "bf16": "bfloat16", "f32": "float32", "f64": "float64",
           "i1": "bool", "i8": "int8", "si8": "int8", "ui8": "uint8", "i16": "int16",
           "si16": "int16", "i32": "int32", "si32": "int32", "ui32": "uint32", "i64": "int64",
           "si64": "int64"}


def entry_inputs(module, entry: str) -> list[tuple[str, list, str]]:
    """(name, dims, dtype) of each input of a legalized entry function, read from its
    hal.tensor.import ops (the ABI wrapper turns every tensor argument into one)."""
    import re

    from iree.compiler import ir
    inputs = []
    for op in module.body.operations:
        attrs = op.operation.attributes
        # the coarse-fences variant, where there is one, holds the imports
        if "sym_name" not in attrs or str(attrs["sym_name"]).strip('"') not in (entry, f"{entry}$async"):
            continue
        if inputs:
            break

        def visit(inner):
            if inner.name == "hal.tensor.import":
                text = str(inner.results[0].type)
                match = re.fullmatch(r"tensor<(?:([\d?x]*)x)?(\w+)>", text)
                if not match:
                    raise ValueError(f"unsupported input type {text}")
                dims = [None if d == "?" else int(d) for d in (match.group(1) or "").split("x") if d]
                inputs.append((f"input{len(inputs)}", dims, _DTYPES.get(match.group(2), match.group(2))))
            return ir.WalkResult.ADVANCE

        op.operation.walk(visit)
    return inputs
