"""Weights as external parameters: the one mechanism every framework goes through.

Emit hands the legalized, target-independent module to `externalize`: every large constant
(an `arith.constant` or an immutable `util.global` initial value) moves into an IREE
parameter archive (.irpa, scope "model") and the module keeps a
`util.global @name = #flow.parameter.named<"model"::"name">` in its place. The module then
holds the model's structure only, so new weights give byte-identical MLIR and lower/codegen
are reused; validate loads the archive at run time.

Names say where a weight sits, never what it holds: a framework-named global keeps its name
(TF's variables), a constant from a named resource keeps the resource's name (the torch
adapter names them by state-dict key), anything else is named by its position
(`constant.<n>` in walk order).

What moves: tensors of at least `threshold` elements with a weight element type (floats and
integers up to 32 bits, which covers int8 weights and int32 quantized biases, and complex
numbers of those floats: an STFT's DFT matrix). Splats (one value repeated) stay inline: they
cost nothing and the compiler folds them. i64, index and i1 constants stay inline: they are
indices and shapes the compiler wants to see; a constant of any other element type stays
inline too, and the log says so (`kept_inline`). Values are read and written by IREE's own
`iree-io-export-parameters` pass, so dense and dense_resource constants (torch, ONNX) are
handled alike without copying them through Python.

IREE's Python bindings cannot hold a dense complex attribute (every access raises "Can't cast
unknown element type", iree-base-compiler 3.13): kiln decides from the op's result type, never
its value, and lifts such a constant through its printed text (_opaque_global).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

SCOPE = "model"
_WEIGHT_TYPE = re.compile(r"(f\d+.*|bf16|tf32|[su]?i(8|16|32)|i4|si4|ui4)")
_COMPLEX_TYPE = re.compile(r"complex<(.+)>")
# indices, shapes and masks: the compiler wants to see them (not "kept inline" news in the log)
_INLINE_BY_DESIGN = re.compile(r"[su]?i64|index|i1")
_RESOURCE_NAME = re.compile(r"dense_resource<([^>]+)>")
_SPLAT_TEXT = re.compile(r"dense<[^\[]")   # dense<(1.0,0.0)>, not dense<[...]>
_CONSTANT_TEXT = re.compile(r"arith\.constant\s+(.*)", re.DOTALL)


def externalize(module, archive: Path, threshold: int, log=None) -> list[dict]:
    """Move module's large constants into archive (written only when there are any); `log`
    (a function of one line) hears of each element type kept inline that kiln does not store.

    Returns what moved: [{"name", "shape", "dtype"}] in archive order."""
    from iree.compiler import ir, passmanager
    kept_inline: dict[str, int] = {}
    with module.context, ir.Location.unknown():
        named = _named_globals(module, threshold)   # before lifting adds globals of its own
        moved = [*_lift_constants(module, threshold, kept_inline), *named]
        for dtype, count in sorted(kept_inline.items()):
            (log or (lambda line: None))(
                f"emit: {count} constant(s) of element type {dtype} kept inline (kiln stores "
                "only float, complex and 4- to 32-bit integer elements in the parameter archive)")
        if not moved:
            return []
        held_back = _hold_back_other_globals(module, {m["name"] for m in moved})
        passmanager.PassManager.parse(
            f"builtin.module(iree-io-export-parameters{{path={SCOPE}={archive} minimum-size=0}})"
        ).run(module.operation)
        for op, value in held_back:
            op.attributes["initial_value"] = value
    return sorted(moved, key=lambda m: m["name"])


def storable(dtype: str) -> bool:
    """An element type the parameter archive holds and kiln moves there: the archive stores raw
    bytes, a complex number as its two parts side by side."""
    complex_part = _COMPLEX_TYPE.fullmatch(dtype)
    return bool(_WEIGHT_TYPE.fullmatch(complex_part.group(1) if complex_part else dtype))


def _weight_type(value_type, threshold: int, kept_inline: dict | None = None) -> dict | None:
    """Shape and dtype of a tensor type large enough and of an element type to move out, else
    None (an element type that stays inline is counted in kept_inline, by design's aside)."""
    from iree.compiler import ir
    if not isinstance(value_type.maybe_downcast(), ir.RankedTensorType):
        return None
    tensor_type = ir.RankedTensorType(value_type)
    dtype = str(tensor_type.element_type)
    shape = list(tensor_type.shape)
    if math.prod(shape) < threshold:
        return None
    if not storable(dtype):
        if kept_inline is not None and not _INLINE_BY_DESIGN.fullmatch(dtype):
            kept_inline[dtype] = kept_inline.get(dtype, 0) + 1
        return None
    return {"shape": shape, "dtype": dtype}


def _is_weight(value, threshold: int) -> dict | None:
    """Shape and dtype of a constant attribute worth moving out, else None."""
    from iree.compiler import ir
    weight = _weight_type(value.type, threshold)
    dense = value.maybe_downcast()
    if weight is None or isinstance(dense, ir.DenseElementsAttr) and dense.is_splat:
        return None
    return weight


def _attribute(op, name: str):
    """op's attribute, or None where the Python bindings cannot hold it (a dense complex one)."""
    try:
        return op.attributes[name]
    except TypeError:
        return None


def _constant_weight(op, threshold: int, kept_inline: dict) -> dict | None:
    """Shape and dtype of an arith.constant worth moving out, decided from its result type
    first: its value may be one the bindings cannot hold."""
    weight = _weight_type(op.results[0].type, threshold, kept_inline)
    if weight is None:
        return None
    value = _attribute(op, "value")
    if value is None:   # held only as text
        return None if _SPLAT_TEXT.match(_constant_text(op)) else weight
    return _is_weight(value, threshold)


def _lift_constants(module, threshold: int, kept_inline: dict) -> list[dict]:
    """Turn each large arith.constant into a private global and a load of it."""
    from iree.compiler import ir
    constants = []   # (op, its shape and dtype)

    def visit(op):
        weight = _constant_weight(op, threshold, kept_inline) \
            if op.name == "arith.constant" else None
        if weight:
            constants.append((op, weight))
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    taken = _symbol_names(module)
    first = module.body.operations[0]
    moved = []
    for position, (op, weight) in enumerate(constants):
        value = _attribute(op, "value")
        resource = _resource_name(value) if value is not None else \
            _resource_name_in_text(_constant_text(op))
        name = _unique(resource or f"constant.{position}", taken)
        with ir.InsertionPoint(first):
            _global(op, value, name)
        result_type = op.results[0].type
        with ir.InsertionPoint(op):
            load = ir.Operation.create("util.global.load", results=[result_type], attributes={
                "global": ir.FlatSymbolRefAttr.get(name), "is_immutable": ir.UnitAttr.get()})
        op.results[0].replace_all_uses_with(load.results[0])
        op.erase()
        moved.append({"name": name, **weight})
    return moved


def _global(op, value, name: str) -> None:
    """A private util.global named name holding the constant op's value, at the insertion
    point."""
    from iree.compiler import ir
    if value is None:
        ir.InsertionPoint.current.insert(_opaque_global(op, name))
        return
    ir.Operation.create("util.global", attributes={
        "sym_name": ir.StringAttr.get(name),
        "sym_visibility": ir.StringAttr.get("private"),
        "type": ir.TypeAttr.get(value.type),
        "initial_value": value})


def _opaque_global(op, name: str):
    """The util.global for a constant whose value the bindings cannot hold, parsed from the
    constant's printed value (`dense<...> : tensor<...>` reads the same in both ops)."""
    from iree.compiler import ir
    return ir.Operation.parse(f"util.global private @{json.dumps(name)} = {_constant_text(op)}")


def _constant_text(op) -> str:
    """The `value : type` of an arith.constant as printed (its whole data: kept for constants
    the bindings cannot hold, rare and small, an STFT's DFT matrix)."""
    return _CONSTANT_TEXT.search(op.get_asm()).group(1).strip()


def _named_globals(module, threshold: int) -> list[dict]:
    """Globals the framework already named (e.g. TF variables) that hold a large constant."""
    moved = []
    for op in _initialized_globals(module):
        value = _attribute(op, "initial_value")
        # one the bindings cannot hold could not be held back from the export pass either:
        # it moves whatever its size
        weight = _is_weight(value, threshold) if value is not None else \
            _weight_type(op.attributes["type"].value, 0)
        name = str(op.attributes["sym_name"]).strip('"')
        if weight and "is_mutable" not in op.attributes and not name.startswith(f"{SCOPE}."):
            moved.append({"name": name, **weight})
    return moved


def _hold_back_other_globals(module, names: set[str]) -> list:
    """The export pass takes every initialized global: hide the initial value of those that
    stay inline (small, splat, mutable) while it runs; the caller puts them back."""
    held = []
    for op in _initialized_globals(module):
        value = _attribute(op, "initial_value")
        if value is not None and str(op.attributes["sym_name"]).strip('"') not in names:
            held.append((op, value))
            del op.attributes["initial_value"]
    return held


def _initialized_globals(module) -> list:
    return [op.operation for op in module.body.operations
            if op.operation.name == "util.global" and "initial_value" in op.operation.attributes]


def _symbol_names(module) -> set[str]:
    return {str(op.operation.attributes["sym_name"]).strip('"') for op in module.body.operations
            if "sym_name" in op.operation.attributes}


def _resource_name(value) -> str | None:
    """The resource key of a dense_resource constant (an ONNX initializer's name)."""
    from iree.compiler import ir
    if isinstance(value.maybe_downcast(), ir.DenseElementsAttr):
        return None   # inline data: printing it would print every value
    return _resource_name_in_text(str(value)[:300])


def _resource_name_in_text(text: str) -> str | None:
    match = _RESOURCE_NAME.match(text)
    return match.group(1).strip('"') if match else None


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        candidate, n = f"{name}.{n}", n + 1
    taken.add(candidate)
    return candidate
