"""Numerical comparison of a module's outputs with the framework's answer, for every dtype.

Validate's verdict comes from here. Floats (and complex): within atol + rtol * |reference|,
with NaN and ±Inf matching only where the reference has the same value at the same place;
any other NaN/Inf is counted as a non-finite mismatch and leaves the output's error None
(meaningless), never "0 off". Integers: compared by value without wrap-around (uint64 near
2**64 included, no float128 needed) and exactly, unless a per-output tolerance says the
output is quantized. Bools: exactly. Shapes must match exactly; a zero-size dimension is an
ordinary static shape. Every number returned is a finite float or None, so it is JSON-safe.
"""
from __future__ import annotations

import math

import numpy as np

from pipeline.stage import StageError

# divisor floor for the relative error where the reference is 0
TINY = 1e-30


def compare(outputs: list[np.ndarray], reference: list[np.ndarray], atol: float, rtol: float,
            tolerances: list[tuple[float, float] | None] | None = None) -> dict:
    """Compare output i with reference i under (atol, rtol), or under tolerances[i] where
    that entry is given (e.g. a quantized output's steps): it replaces the global pair and
    makes an integer output compare within tolerance instead of exactly."""
    if len(outputs) != len(reference):
        raise StageError(f"module returned {len(outputs)} outputs, the reference has {len(reference)}")
    per_output = []
    for index, (got, want) in enumerate(zip(outputs, reference)):
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape:
            raise StageError(f"output {index}: shape {got.shape} differs from the reference's "
                             f"{want.shape}")
        given = _tolerance_for(tolerances, index)
        per_output.append(_compare_one(index, got, want, *(given or (atol, rtol)),
                                       quantized=given is not None))
    return {"passed": all(o["passed"] for o in per_output),
            "max_abs_error": _worst(per_output, "max_abs_error"),
            "max_rel_error": _worst(per_output, "max_rel_error"),
            "atol": float(atol), "rtol": float(rtol), "outputs": per_output}


def _tolerance_for(tolerances, index: int) -> tuple[float, float] | None:
    # outputs past the end of a short list fall back to the global pair
    return tolerances[index] if tolerances and index < len(tolerances) else None


def _worst(per_output: list[dict], key: str) -> float | None:
    # one output whose error is meaningless (NaN/Inf mismatch) makes the overall one so too:
    # the others' maximum would read as "this much off" when it is not
    values = [o[key] for o in per_output]
    return None if None in values else max(values, default=0.0)


def _compare_one(index: int, got: np.ndarray, want: np.ndarray, atol: float, rtol: float,
                 quantized: bool) -> dict:
    got = _as_reference_signedness(got, want)
    # an integer or bool reference is an exact answer; so is a bool output
    exact = not quantized and (want.dtype.kind in "biu" or got.dtype.kind == "b")
    if got.dtype.kind in "biu" and want.dtype.kind in "biu":
        diff, magnitude = _integer_distance(got, want)
        nonfinite_bad = np.zeros(want.shape, bool)
    else:
        diff, magnitude, nonfinite_bad = _float_distance(got, want)
    out_of_tolerance = diff > 0 if exact else diff > atol + rtol * magnitude
    bad = out_of_tolerance | nonfinite_bad
    nonfinite_mismatch = int(nonfinite_bad.sum())
    with np.errstate(over="ignore"):   # a huge diff over a tiny reference: inf, then None
        max_rel = (diff / np.maximum(magnitude, TINY)).max(initial=0.0)
    meaningful = nonfinite_mismatch == 0
    return {"index": index, "dtype": want.dtype.name, "shape": list(want.shape),
            "max_abs_error": _finite_or_none(diff.max(initial=0.0)) if meaningful else None,
            "max_rel_error": _finite_or_none(max_rel) if meaningful else None,
            "mismatched": int(bad.sum()), "nonfinite_mismatch": nonfinite_mismatch,
            "exact": exact, "passed": not bad.any(),
            **({"atol": float(atol), "rtol": float(rtol)} if quantized else {})}


def _as_reference_signedness(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    if got.dtype.kind in "iu" and want.dtype.kind in "iu" and got.dtype != want.dtype \
            and got.dtype.itemsize == want.dtype.itemsize:
        # IREE's module interface has no unsigned types: a uint8 answer comes back as the
        # same bits typed int8. Same width, other signedness: read the bits as the reference's
        return got.view(want.dtype)
    return got


def _integer_distance(got: np.ndarray, want: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|got - want| and |want| as float64, never wrapping and never 0 for unequal values
    (float64, or a missing float128, would round 2**64-1 and 2**64-2 to the same number)."""
    got_negative, got_size = _sign_and_magnitude(got)
    want_negative, want_size = _sign_and_magnitude(want)
    # same sign: the magnitudes' difference, exact in uint64 (the unused branch may wrap)
    apart = np.where(got_size >= want_size, got_size - want_size, want_size - got_size)
    # opposite signs: the magnitudes' sum, which can pass 2**64, so in float64 (>= 1)
    across = got_size.astype(np.float64) + want_size.astype(np.float64)
    diff = np.where(got_negative == want_negative, apart.astype(np.float64), across)
    return diff, want_size.astype(np.float64)


def _sign_and_magnitude(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if values.dtype.kind != "i":   # bool and unsigned: never negative, fit uint64
        return np.zeros(values.shape, bool), values.astype(np.uint64)
    negative = values < 0
    bits = values.astype(np.int64).view(np.uint64)
    # two's-complement negation modulo 2**64: exact for every int64, -2**63 included
    return negative, np.where(negative, np.negative(bits), bits)


def _float_distance(got: np.ndarray, want: np.ndarray):
    """|got - want| and |want| where both are finite (0 elsewhere), and the mask of
    elements where a NaN/±Inf on either side is not matched by the same on the other."""
    wide = np.complex128 if "c" in (got.dtype.kind, want.dtype.kind) else np.float64
    got_wide, want_wide = got.astype(wide), want.astype(wide)
    both_finite = np.isfinite(got_wide) & np.isfinite(want_wide)
    same_nonfinite = (np.isnan(got_wide) & np.isnan(want_wide)) | \
        (np.isinf(got_wide) & (got_wide == want_wide))   # +Inf never equals -Inf
    # inf - inf where a side is non-finite is masked out; a finite overflow stays inf
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(both_finite, np.abs(got_wide - want_wide), 0.0)
    magnitude = np.where(both_finite, np.abs(want_wide), 0.0)
    return diff, magnitude, ~both_finite & ~same_nonfinite


def _finite_or_none(value) -> float | None:
    # JSON has no Infinity: an error past float64's range is reported as meaningless
    value = float(value)
    return value if math.isfinite(value) else None
