"""Bisect against the framework: where IREE's backends agree with each other but not with the
framework, name the first framework op whose IREE counterpart differs (docs/DESIGN.md §10.8).

Comparing two IREE builds (stages/bisect.py) finds a fault in one backend's code. When the
reference backend computes the same wrong answer as the failing target, the fault is upstream
of codegen (the converter's or importer's program, or IREE's shared flow) and two IREE
builds agree dispatch by dispatch. Then an IREE build's dispatch outputs are paired with the
framework's own intermediate tensors (its adapter's intermediates(): every op's output, in
execution order):

- a dispatch output can stand only for a framework tensor of the same shape, leaving out
  unit dimensions or merging adjacent ones (IREE prints 1x8x8x16 as 64x16: the same elements
  in the same order), and of its kind of number; it agrees where one of those agrees;
- integers compare as the framework's own type (IREE's are signless: its bits are read back
  as int8, uint8, ...), exactly; a quantized tensor compares its codes, and a difference of
  QUANT_STEPS steps of its scale is rounding; floats within the target's atol/rtol;
- a framework tensor that no dispatch output matches may have been fused into a dispatch
  with the ops after it (an elementwise op's output is rarely materialized), and IREE may run
  independent ops in another order than the framework. So the dispatch outputs are taken in
  IREE's order, and the first that agrees with none of the framework tensors it can stand
  for is where the two part: it starts after the framework tensors its inputs agree with
  (or follow, through dispatches whose outputs stand for none: partial sums), and it stands
  for the last tensor of the run of that layout after them (a dispatch writes its fused
  chain's last result).

The record names that tensor's op and the ops between the start and it that agree nowhere:
IREE computed them in that one dispatch, and the difference is made by one of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # (numpy is imported where used: planning imports none)
    import numpy as np

from stages import frameworks
from stages.capture import STAGE as CAPTURE
from stages.dispatch_trace import PRINTED_RTOL, Dispatch, Tensor, same_layout
from stages.framework_stage import FRAMEWORK_LOCK
from stages.frameworks import Intermediate, NoIntermediates
from stages.frameworks.base import QUANT_STEPS  # (steps of a scale that are rounding)
from stages.frameworks.refusals import framework_refusals

# how many of the framework's ops the result names before the first that differs
SHOWN = 5


@dataclass
class Compared:
    """A framework tensor against one IREE dispatch output of its shape."""
    dispatch: Dispatch
    tensor: Tensor
    agrees: bool
    max_abs_error: float | None      # in the framework's units (real values where quantized);
    # None where NaN/Inf on one side only make it meaningless
    steps: int | None = None         # quantized: the largest difference in codes


def compare(want: Intermediate, got: Tensor, atol: float, rtol: float) -> tuple:
    """(agrees, max abs error, steps) of IREE's tensor against the framework's."""
    import numpy as np
    expected = np.asarray(want.values)
    if expected.dtype.kind in "iub":
        return _compare_integers(want, expected.ravel(), got)
    values = got.values.astype(np.float64)
    reference = expected.ravel().astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(values - reference)
    finite = np.isfinite(values) & np.isfinite(reference)
    same = ~finite & ((values == reference) | (np.isnan(values) & np.isnan(reference)))
    if np.any(~finite & ~same):
        return False, None, None
    diff = np.where(finite, diff, 0.0)
    allowed = atol + (rtol + PRINTED_RTOL) * np.abs(reference)
    largest = float(diff.max(initial=0.0))
    if want.scale is None:
        return bool(np.all(diff <= allowed)), largest, None
    # dequantized from codes of want.scale: its rounding is steps of it
    return bool(np.all(diff <= allowed + QUANT_STEPS * want.scale)), largest, \
        round(largest / want.scale)


def _compare_integers(want: Intermediate, expected: np.ndarray, got: Tensor) -> tuple:
    """Integers as the framework's own type: IREE's signless bits read back as it (an
    unsigned code printed as a negative i8 is the same byte)."""
    import numpy as np
    if expected.dtype.kind == "b":
        values = got.values != 0
    else:
        values = got.values.astype(np.int64).astype(expected.dtype)   # (wraps: the bits)
    codes = np.abs(values.astype(np.int64) - expected.astype(np.int64))
    largest = int(codes.max(initial=0))
    if want.scale is None:
        return largest == 0, float(largest), None
    return largest <= QUANT_STEPS, largest * want.scale, largest


def _comparable(want: Intermediate, got: Tensor) -> bool:
    """Same layout, and numbers of one kind: floats with floats, integers with integers of
    the same width (an i32 accumulator is not the int8 tensor it becomes)."""
    import numpy as np
    expected = np.asarray(want.values)
    if got.values.size != expected.size or not same_layout(expected.shape, got.shape):
        return False
    if expected.dtype.kind == "f":
        return got.dtype.startswith(("f", "bf"))
    width = "".join(c for c in got.dtype if c.isdigit())
    return got.dtype.lstrip("su").startswith("i") and int(width or 0) == 8 * expected.itemsize


def _op_outputs(dispatches: list[Dispatch]) -> list[tuple[Dispatch, Tensor]]:
    """The traced dispatch outputs that ops compute, in order (initializers compute
    weights)."""
    return [(d, t) for d in dispatches if not d.initializer for t in d.outputs]


def diagnose(tensors: list[Intermediate], dispatches: list[Dispatch], atol: float,
             rtol: float) -> dict:
    """The first IREE dispatch output (in IREE's order) that agrees with no framework tensor
    it can stand for, and the framework ops it computes, as a record (see the module)."""
    agreed: set[int] = set()
    # per traced value (its digest), the last framework tensor it is known to follow: its
    # own where it agrees with one, else the latest its dispatch's inputs follow
    follows: dict[str, int] = {}
    for dispatch, got in _op_outputs(dispatches):
        compared = {i: Compared(dispatch, got, *compare(want, got, atol, rtol))
                    for i, want in enumerate(tensors) if _comparable(want, got)}
        agreeing = [i for i, c in compared.items() if c.agrees]
        start = max((follows.get(t.digest, -1) for t in dispatch.inputs), default=-1)
        follows[got.digest] = max(agreeing, default=start)
        if agreeing or not compared:
            agreed.update(agreeing)
            continue
        place = _stands_for(tensors, [i for i in compared if i > start] or list(compared))
        if start < 0:   # (its inputs followed nothing known: the last agreeing before it)
            start = max((i for i in agreed if i < place), default=-1)
        return _differs(tensors, place, compared[place], start, sorted(agreed))
    return _none_differs(tensors, sorted(agreed))


def _stands_for(tensors: list[Intermediate], candidates: list[int]) -> int:
    """The framework tensor a dispatch output that agrees with none stands for: the last
    candidate in the run of tensors of the first one's layout (a dispatch writes its fused
    chain's last op's result; an elementwise chain keeps its layout)."""
    import numpy as np
    first = min(candidates)
    end = first
    while end + 1 < len(tensors) and same_layout(np.shape(tensors[end + 1].values),
                                                 np.shape(tensors[first].values)):
        end += 1
    return max(i for i in candidates if i <= end)


def _op(tensors: list[Intermediate], place: int) -> dict:
    import numpy as np
    tensor = tensors[place]
    return {"position": place, "op": tensor.op, "tensor": tensor.name,
            "shape": list(np.shape(tensor.values)), "dtype": np.asarray(tensor.values).dtype.name}


def _differs(tensors, place: int, counterpart: Compared, last: int,
             agreeing: list[int]) -> dict:
    # (a tensor of another branch that agreed is no part of it)
    fused = [_op(tensors, p) for p in range(last + 1, place) if p not in agreeing]
    first = {**_op(tensors, place), "dispatch": counterpart.dispatch.symbol,
             "ordinal": counterpart.dispatch.position, "iree_type": counterpart.tensor.type,
             "max_abs_error": counterpart.max_abs_error, "steps": counterpart.steps,
             "scale": tensors[place].scale, "agreeing_before": sum(p < place for p in agreeing),
             "last_agreeing": _op(tensors, last) if last >= 0 else None,
             "fused_with": fused}
    return {"first_differing_op": first, "tensors": len(tensors), "agreeing": len(agreeing),
            "agreed": [_op(tensors, p) for p in agreeing if p < place][-SHOWN:]}


def _none_differs(tensors, agreeing: list[int]) -> dict:
    return {"first_differing_op": None, "tensors": len(tensors), "agreeing": len(agreeing),
            "agreed": [_op(tensors, p) for p in agreeing][-SHOWN:]}


def summary(found: dict, framework: str, builds: str) -> str:
    """One line: what the pairing says, for the console and report (builds: which IREE
    builds agree with each other, e.g. "cpu's and vmvx's builds")."""
    first = found["first_differing_op"]
    if first is None:
        if not found["agreeing"]:
            return (f"{builds} agree with each other, not with {framework}, and no IREE "
                    f"dispatch output pairs with one of {framework}'s {found['tensors']} "
                    "tensors (shape and values): the difference cannot be placed")
        return (f"{builds} agree with each other, not with {framework}; each of the "
                f"{found['agreeing']} {framework} tensors that IREE materializes agrees: the "
                "difference is in ops whose results IREE does not write out (fused into "
                "others, or written padded): the converter's or importer's program for them")
    if first["steps"] is not None:
        error = f"{first['steps']} steps of its scale {first['scale']:.3g}"
    elif first["max_abs_error"] is None:
        error = "NaN/Inf where the framework has none"
    else:
        error = f"max abs error {first['max_abs_error']:.3g}"
    ops = ", ".join(f"{o['op']} '{o['tensor']}'" for o in [*first["fused_with"], first])
    last = first["last_agreeing"]
    before = f"the {first['agreeing_before']} tensors before it agree" + \
        (f" (the last: {last['op']} '{last['tensor']}')" if last else "")
    if first["fused_with"]:
        where = (f"the first IREE dispatch that differs from {framework}, #{first['ordinal']} "
                 f"{first['dispatch']}, computes {ops} in one; its output differs from "
                 f"{first['op']}'s by {error}; {before}. The difference is made by one of "
                 "those ops")
    else:
        where = (f"the first {framework} op whose IREE counterpart differs is {ops}, dispatch "
                 f"#{first['ordinal']} {first['dispatch']}: {error}; {before}")
    return (f"{builds} agree with each other, not with {framework}: {where}: the converter's "
            "or importer's program for it (or IREE's shared flow) differs from the framework")


# --- what bisect asks (stages/bisect.py) -------------------------------------------------

def captured_files(model) -> tuple[str, ...]:
    """Capture's framework artifacts, which intermediates() runs (bisect reads them)."""
    return frameworks.get(model.framework).captured


def adapter_code(model) -> tuple:
    """The adapter's code files: its intermediates() enter bisect's key."""
    return frameworks.get(model.framework).code_files()


def against_framework(ctx, result: dict, dispatches: list[Dispatch], inputs: list,
                      atol: float, rtol: float) -> dict:
    """What bisect adds to its record where its reference build agrees with the failing one
    dispatch by dispatch but not with the framework (result: bisect's record so far;
    dispatches: the reference build's): the pairing with the framework's own tensors under
    "framework", and its summary as the record's (the dispatch search's kept as
    "dispatch_summary"). Nothing where the builds disagree or the framework's answer is the
    reference's."""
    reference = result["reference_target"]
    outcome = next(t for t in result["references_tried"] if t["target"] == reference)
    if outcome.get("matches_framework", True) or CAPTURE.name not in ctx.inputs or \
            result["first_bad_dispatch"] or result.get("first_differing_dispatch"):
        return {}
    adapter = frameworks.get(ctx.model.framework)
    with FRAMEWORK_LOCK, framework_refusals(adapter, ctx.model):
        try:   # (inside: the refusals' wording would call it kiln's own error)
            tensors = adapter.intermediates(ctx.inputs[CAPTURE.name], inputs)
        except NoIntermediates as err:
            return {"framework": {"available": False, "why": str(err)}}
    found = diagnose(tensors, dispatches, atol, rtol)
    said = summary(found, adapter.name, f"{ctx.target.name}'s and {reference}'s builds")
    return {"framework": {**found, "available": True, "paired_build": reference, "summary": said},
            "summary": said, "dispatch_summary": result["summary"],
            # (not "accumulated rounding": IREE's two builds agree, the framework differs)
            "finding": "framework"}
