"""MLIR helpers on IREE's own Python bindings: strip debug info, write, walk.

entry_inputs reads an entry function's inputs from a framework importer's hal.tensor.import
ABI wrapper, or, for MLIR written by hand (a plain func.func taking ranked tensors, e.g.
tensor<?x8xf32>, with no wrapper), from the function's own signature."""
from __future__ import annotations

import re
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
    """(name, dims, dtype) of each input of a legalized entry function, named input0, input1, ...

    Read from its hal.tensor.import ops where it has them (a framework's importer wraps each
    tensor argument in one); else, for MLIR written by hand with a plain func.func (legalize
    turns it into a util.func of the same signature), from the function's argument types."""
    functions = _functions_named(module, (entry, f"{entry}$async"))
    # the coarse-fences variant ($async), where there is one, holds the imports
    for function in functions:
        imported = _imported_types(function)
        if imported:
            return _typed_inputs(imported)
    plain = [f for f in functions if _symbol(f) == entry]
    return _typed_inputs(_argument_types(plain[0])) if plain else []


def _symbol(op) -> str | None:
    attrs = op.operation.attributes
    return str(attrs["sym_name"]).strip('"') if "sym_name" in attrs else None


def _functions_named(module, names) -> list:
    return [op for op in module.body.operations if _symbol(op) in names]


def _imported_types(function) -> list[str]:
    from iree.compiler import ir
    types = []

    def visit(inner):
        if inner.name == "hal.tensor.import":
            types.append(str(inner.results[0].type))
        return ir.WalkResult.ADVANCE

    function.operation.walk(visit)
    return types


def _argument_types(function) -> list[str]:
    from iree.compiler import ir
    signature = ir.FunctionType(ir.TypeAttr(function.operation.attributes["function_type"]).value)
    return [str(t) for t in signature.inputs]


_TENSOR = re.compile(r"tensor<(?:([\d?x]*)x)?(\w+)>")


def _typed_inputs(types: list[str]) -> list[tuple[str, list, str]]:
    return [(f"input{i}", *_dims_and_dtype(text)) for i, text in enumerate(types)]


def _dims_and_dtype(text: str) -> tuple[list, str]:
    """tensor<?x8xf32> -> ([None, 8], "float32"); a dynamic dimension is None."""
    match = _TENSOR.fullmatch(text)
    if not match:   # e.g. a scalar f32 or a !hal.buffer_view argument: no array to feed it
        raise ValueError(f"unsupported input type {text}: the entry function must take "
                         "ranked tensors, e.g. tensor<4x8xf32>")
    dims = [None if d == "?" else int(d) for d in (match.group(1) or "").split("x") if d]
    return dims, _DTYPES.get(match.group(2), match.group(2))
