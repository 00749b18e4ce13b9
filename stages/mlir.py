"""MLIR helpers on IREE's own Python bindings: strip debug info, write, walk.

entry_inputs reads an entry function's inputs from a framework importer's hal.tensor.import
ABI wrapper (and the module before legalize, for an argument no import reads), or, for MLIR
written by hand (a plain func.func taking ranked tensors, e.g.
tensor<?x8xf32>, with no wrapper), from the function's own signature."""
from __future__ import annotations

import re
from pathlib import Path

from pipeline.stage import StageError


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


def parse(data: bytes, unregistered: bool = False, source: str | Path = "the module"):
    """The module; unregistered: ops of dialects IREE does not know are kept (to name them).
    Bytes that are no module IREE's bindings can read are a StageError (a verdict on them)
    naming source and why: MLIRError's first line says only "Unable to parse module
    assembly:", with the reason on the lines after it."""
    from iree.compiler import ir
    context = ir.Context()
    context.allow_unregistered_dialects = unregistered
    try:
        return ir.Module.parse(data, context)
    except ir.MLIRError as err:
        why = "; ".join(d.message.strip() for d in err.error_diagnostics) or str(err)
        lines = [LINE.search(str(d.location)) for d in err.error_diagnostics]
        line = next((f":{m[1]}" for m in lines if m and m[1] != "0"), "")
        raise StageError(f"{source}{line}: not MLIR IREE can read: "
                         f"{' '.join(why.split())}") from None


LINE = re.compile(r'loc\("-":(\d+):\d+\)')   # a diagnostic's place in the parsed text


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
           "si16": "int16", "ui16": "uint16", "i32": "int32", "si32": "int32", "ui32": "uint32",
           "i64": "int64", "si64": "int64", "ui64": "uint64"}


def entry_inputs(module, entry: str, source=None) -> list[tuple[str, list, str]]:
    """(name, dims, dtype) of each input of a legalized entry function, named input0, input1, ...

    Each !hal.buffer_view argument is typed by the hal.tensor.import that reads it (a
    framework's importer wraps each tensor argument in one; the coarse-fences variant,
    `$async`, holds them). An argument no import reads (one the model returns as it is, or
    never uses: IREE folds its import away) is typed from the same argument of the entry in
    source(), the module before legalize (`!torch.vtensor<[3,4],si8>`, `tensor<3x4xi8>`). MLIR
    written by hand with a plain func.func (legalize makes it a util.func of the same
    signature) takes ranked tensors: its argument types are its inputs."""
    functions = {_symbol(f): f for f in _functions_named(module, (entry, f"{entry}$async"))}
    function = functions.get(f"{entry}$async") or functions.get(entry)
    if function is None:
        return []
    imported = _imported_by_argument(function)
    types, original = [], None
    for index, text in enumerate(_argument_types(function)):
        if text == "!hal.fence":     # the coarse-fences variant's wait and signal fences
            continue
        if text == "!hal.buffer_view" and index not in imported:
            original = original if original is not None else _source_arguments(source, entry)
            text = original[index] if index < len(original) else text
        types.append(imported.get(index, text))
    return _typed_inputs(types)


def _symbol(op) -> str | None:
    attrs = op.operation.attributes
    return str(attrs["sym_name"]).strip('"') if "sym_name" in attrs else None


def _functions_named(module, names) -> list:
    return [op for op in module.body.operations if _symbol(op) in names]


def _imported_by_argument(function) -> dict[int, str]:
    """Argument position -> the tensor type the hal.tensor.import reading it yields."""
    from iree.compiler import ir
    types: dict[int, str] = {}

    def visit(inner):
        read = inner.operands[0] if inner.name == "hal.tensor.import" else None
        # a block argument of the function's own body (not of a region inside it)
        if read is not None and isinstance(read.owner, ir.Block) \
                and read.owner.owner == function.operation:
            types.setdefault(ir.BlockArgument(read).arg_number, str(inner.results[0].type))
        return ir.WalkResult.ADVANCE

    function.operation.walk(visit)
    return types


def _argument_types(function) -> list[str]:
    from iree.compiler import ir
    signature = ir.FunctionType(ir.TypeAttr(function.operation.attributes["function_type"]).value)
    return [str(t) for t in signature.inputs]


_VTENSOR = re.compile(r"!torch\.vtensor<\[([-\d,]*)\],(\w+)>")


def _source_arguments(source, entry: str) -> list[str]:
    """The entry's argument types in the module before legalize (source(): that module, or
    None), torch's value tensors written as builtin tensors: [] when there is none."""
    module = source() if source is not None else None
    found = _functions_named(module, (entry,)) if module is not None else []
    if not found:
        return []
    types = []
    for text in _argument_types(found[0]):
        match = _VTENSOR.fullmatch(text)
        if match:   # [3,-1] si8 -> tensor<3x?xsi8>; [] -> a 0-d tensor<si8>
            dims = ["?" if d == "-1" else d for d in match.group(1).split(",") if d]
            text = f"tensor<{''.join(d + 'x' for d in dims)}{match.group(2)}>"
        types.append(text)
    return types


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
