"""Numerical comparison of a module's outputs with the framework's answer, for every dtype.

Floats: within atol + rtol * |reference|, with NaN and ±Inf matching only where the
reference has the same value at the same place (a NaN is never "0 off"). Integers: compared
in a wide signed type (no uint8 wrap-around) and exactly, unless a per-output tolerance says
the output is quantized. Bools: exactly. Shapes must match exactly; a zero-size dimension is
an ordinary static shape.
"""
from __future__ import annotations

import numpy as np

from pipeline.stage import StageError


def compare(outputs: list[np.ndarray], reference: list[np.ndarray], atol: float, rtol: float,
            tolerances: list[tuple[float, float] | None] | None = None) -> dict:
    """Compare output i with reference i under (atol, rtol), or tolerances[i] where given."""
    if len(outputs) != len(reference):
        raise StageError(f"module returned {len(outputs)} outputs, the reference has {len(reference)}")
    per_output = []
    for index, (got, want) in enumerate(zip(outputs, reference)):
        if got.shape != want.shape:
            raise StageError(f"output {index}: shape {got.shape} differs from the reference's "
                             f"{want.shape}")
        given = (tolerances or [None] * len(outputs))[index] if tolerances else None
        per_output.append(_compare_one(index, np.asarray(got), np.asarray(want),
                                       *(given or (atol, rtol)), quantized=given is not None))
    finite = [o for o in per_output if o["max_abs_error"] is not None]
    return {"passed": all(o["passed"] for o in per_output),
            "max_abs_error": max((o["max_abs_error"] for o in finite), default=None),
            "max_rel_error": max((o["max_rel_error"] for o in finite), default=None),
            "atol": atol, "rtol": rtol, "outputs": per_output}


def _compare_one(index: int, got: np.ndarray, want: np.ndarray, atol: float, rtol: float,
                 quantized: bool) -> dict:
    if got.dtype.kind in "iu" and want.dtype.kind in "iu" and got.dtype != want.dtype \
            and got.dtype.itemsize == want.dtype.itemsize:
        # IREE's module interface has no unsigned types: a uint8 answer comes back as the
        # same bits typed int8. Same width, other signedness: read the bits as the reference's
        got = got.view(want.dtype)
    exact = not quantized and (want.dtype.kind in "biu" or got.dtype.kind == "b")
    if want.dtype.kind in "biu" and got.dtype.kind in "biu":
        # Python ints via object arrays would be slow; int64 covers all but uint64 > 2**63
        wide = np.float128 if hasattr(np, "float128") else np.float64
        diff = np.abs(got.astype(wide) - want.astype(wide)).astype(np.float64)
        magnitude = np.abs(want.astype(wide)).astype(np.float64)
        nonfinite_mismatch = 0
        bad = diff > 0 if exact else diff > atol + rtol * magnitude
    else:
        got64, want64 = got.astype(np.float64), want.astype(np.float64)
        same_nonfinite = (np.isnan(got64) & np.isnan(want64)) | \
            (np.isinf(got64) & np.isinf(want64) & (np.sign(got64) == np.sign(want64)))
        either_nonfinite = ~np.isfinite(got64) | ~np.isfinite(want64)
        nonfinite_mismatch = int((either_nonfinite & ~same_nonfinite).sum())
        both_finite = ~either_nonfinite
        with np.errstate(invalid="ignore"):   # inf - inf where both are inf: masked out below
            diff = np.where(both_finite, np.abs(got64 - want64), 0.0)
        magnitude = np.where(both_finite, np.abs(want64), 0.0)
        bad = (diff > 0 if exact else diff > atol + rtol * magnitude) | \
            (either_nonfinite & ~same_nonfinite)
    max_abs = float(diff.max(initial=0.0))
    max_rel = float((diff / np.maximum(magnitude, 1e-30)).max(initial=0.0))
    return {"index": index, "dtype": want.dtype.name, "shape": list(want.shape),
            "max_abs_error": max_abs, "max_rel_error": max_rel,
            "mismatched": int(bad.sum()), "nonfinite_mismatch": nonfinite_mismatch,
            "exact": exact, "passed": not bad.any(),
            **({"atol": atol, "rtol": rtol} if quantized else {})}
