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
integers up to 32 bits, which covers int8 weights and int32 quantized biases). Splats (one
value repeated) stay inline: they cost nothing and the compiler folds them. i64, index and i1
constants stay inline: they are indices and shapes the compiler wants to see. Values are read
and written by IREE's own `iree-io-export-parameters` pass, so dense and dense_resource
constants (torch, ONNX) are handled alike without copying them through Python.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

SCOPE = "model"
_WEIGHT_TYPE = re.compile(r"(f\d+.*|bf16|tf32|[su]?i(8|16|32)|i4|si4|ui4)")
_RESOURCE_NAME = re.compile(r"dense_resource<([^>]+)>")


def externalize(module, archive: Path, threshold: int) -> list[dict]:
    """Move module's large constants into archive (written only when there are any).

    Returns what moved: [{"name", "shape", "dtype"}] in archive order."""
    from iree.compiler import ir, passmanager
    with module.context, ir.Location.unknown():
        named = _named_globals(module, threshold)   # before lifting adds globals of its own
        moved = [*_lift_constants(module, threshold), *named]
        if not moved:
            return []
        held_back = _hold_back_other_globals(module, {m["name"] for m in moved})
        passmanager.PassManager.parse(
            f"builtin.module(iree-io-export-parameters{{path={SCOPE}={archive} minimum-size=0}})"
        ).run(module.operation)
        for op, value in held_back:
            op.attributes["initial_value"] = value
    return sorted(moved, key=lambda m: m["name"])


def _is_weight(value, threshold: int) -> dict | None:
    """Shape and dtype of a constant attribute worth moving out, else None."""
    from iree.compiler import ir
    value_type = value.type
    if not isinstance(value_type.maybe_downcast(), ir.RankedTensorType):
        return None
    tensor_type = ir.RankedTensorType(value_type)
    dtype = str(tensor_type.element_type)
    shape = list(tensor_type.shape)
    if math.prod(shape) < threshold or not _WEIGHT_TYPE.fullmatch(dtype):
        return None
    dense = value.maybe_downcast()
    if isinstance(dense, ir.DenseElementsAttr) and dense.is_splat:
        return None
    return {"shape": shape, "dtype": dtype}


def _lift_constants(module, threshold: int) -> list[dict]:
    """Turn each large arith.constant into a private global and a load of it."""
    from iree.compiler import ir
    constants = []   # (op, its shape and dtype)

    def visit(op):
        weight = _is_weight(op.attributes["value"], threshold) if op.name == "arith.constant" \
            else None
        if weight:
            constants.append((op, weight))
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    taken = _symbol_names(module)
    first = module.body.operations[0]
    moved = []
    for position, (op, weight) in enumerate(constants):
        value = op.attributes["value"]
        name = _unique(_resource_name(value) or f"constant.{position}", taken)
        with ir.InsertionPoint(first):
            ir.Operation.create("util.global", attributes={
                "sym_name": ir.StringAttr.get(name),
                "sym_visibility": ir.StringAttr.get("private"),
                "type": ir.TypeAttr.get(value.type),
                "initial_value": value})
        with ir.InsertionPoint(op):
            load = ir.Operation.create("util.global.load", results=[value.type], attributes={
                "global": ir.FlatSymbolRefAttr.get(name), "is_immutable": ir.UnitAttr.get()})
        op.results[0].replace_all_uses_with(load.results[0])
        op.erase()
        moved.append({"name": name, **weight})
    return moved


def _named_globals(module, threshold: int) -> list[dict]:
    """Globals the framework already named (e.g. TF variables) that hold a large constant."""
    moved = []
    for op in _initialized_globals(module):
        weight = _is_weight(op.attributes["initial_value"], threshold)
        name = str(op.attributes["sym_name"]).strip('"')
        if weight and "is_mutable" not in op.attributes and not name.startswith(f"{SCOPE}."):
            moved.append({"name": name, **weight})
    return moved


def _hold_back_other_globals(module, names: set[str]) -> list:
    """The export pass takes every initialized global: hide the initial value of those that
    stay inline (small, splat, mutable) while it runs; the caller puts them back."""
    held = []
    for op in _initialized_globals(module):
        if str(op.attributes["sym_name"]).strip('"') not in names:
            held.append((op, op.attributes["initial_value"]))
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
    match = _RESOURCE_NAME.match(str(value)[:300])
    return match.group(1).strip('"') if match else None


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        candidate, n = f"{name}.{n}", n + 1
    taken.add(candidate)
    return candidate
