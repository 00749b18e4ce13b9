"""Numerical comparison of a module's outputs with the framework's answer, for every dtype.

Validate's verdict comes from here. Floats (and complex): within atol + rtol * |reference|,
with NaN and ±Inf matching only where the reference has the same value at the same place;
any other NaN/Inf is counted as a non-finite mismatch and leaves the output's error None
(meaningless), never "0 off". Integers: compared by value without wrap-around (uint64 near
2**64 included, no float128 needed) and exactly, unless a per-output tolerance says the
output is quantized. Bools: exactly. Shapes must match exactly; a zero-size dimension is an
ordinary static shape. Every number returned is a finite float or None, so it is JSON-safe.

The float64 noise rule (noise_rule, float64_error): where the framework could also compute
the model in float64, a float output is judged by how far it is from that float64 answer
compared with how far the framework's own float32 answer is: a deep net's f32 rounding
noise grows with depth, so a fixed atol/rtol either flips on reassociation noise or is too
loose for a shallow model. A target may be FACTOR times as far off as the framework, and is
never held to less than FLOOR ulps of the output's scale (an exactly-right framework would
otherwise make the bound 0).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # (numpy is imported where used: planning imports none)
    import numpy as np

from pipeline.stage import StageError

# divisor floor for the relative error where the reference is 0
TINY = 1e-30

# How many times the framework's own f32 error (vs float64) a target's may be. Measured on
# kiln's models (target error / max(framework error, floor), worst output, default flags):
#   mlp      cpu 0.081  vmvx 0.081  vulkan 0.053   (floor-bound; target/framework 1.4, 1.4, 0.95)
#   jax_mlp  cpu 0.079  vmvx 0.069  vulkan 0.069   (floor-bound; target/framework 1.5, 1.3, 1.3)
#   resnet   cpu 0.32   vmvx 0.25   vulkan 0.11    (floor-bound; target/framework 1.8, 1.4, 0.63)
#   a 20-conv random-weight CNN (tests/test_noise_rule.py) on cpu: below 1, where a fixed
#   atol/rtol of 1e-6 fails it by ~100x
# FACTOR leaves room above the worst of these; a matmul demoted to bf16 (mlp on cpu, error
# ~2e-3) is hundreds of times the framework's error and fails.
FACTOR = 8.0
# the floor of the framework's error: this many ulps (eps of the output's dtype) of the
# largest |float64 output|, so an exactly-right framework (a 1-layer model) allows a few ulps
FLOOR_ULPS = 16


def compare(outputs: list[np.ndarray], reference: list[np.ndarray], atol: float, rtol: float,
            tolerances: list[tuple[float, float] | None] | None = None) -> dict:
    """Compare output i with reference i under (atol, rtol), or under tolerances[i] where
    that entry is given (e.g. a quantized output's steps): it replaces the global pair and
    makes an integer output compare within tolerance instead of exactly."""
    import numpy as np
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
    import numpy as np
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
    import numpy as np
    got_negative, got_size = _sign_and_magnitude(got)
    want_negative, want_size = _sign_and_magnitude(want)
    # same sign: the magnitudes' difference, exact in uint64 (the unused branch may wrap)
    apart = np.where(got_size >= want_size, got_size - want_size, want_size - got_size)
    # opposite signs: the magnitudes' sum, which can pass 2**64, so in float64 (>= 1)
    across = got_size.astype(np.float64) + want_size.astype(np.float64)
    diff = np.where(got_negative == want_negative, apart.astype(np.float64), across)
    return diff, want_size.astype(np.float64)


def _sign_and_magnitude(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np
    if values.dtype.kind != "i":   # bool and unsigned: never negative, fit uint64
        return np.zeros(values.shape, bool), values.astype(np.uint64)
    negative = values < 0
    bits = values.astype(np.int64).view(np.uint64)
    # two's-complement negation modulo 2**64: exact for every int64, -2**63 included
    return negative, np.where(negative, np.negative(bits), bits)


def _float_distance(got: np.ndarray, want: np.ndarray):
    """|got - want| and |want| where both are finite (0 elsewhere), and the mask of
    elements where a NaN/±Inf on either side is not matched by the same on the other."""
    import numpy as np
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


def float64_error(got: np.ndarray, want64: np.ndarray) -> float | None:
    """max |got - want64| over the elements where both are finite; None where a NaN/±Inf
    on one side is not the same on the other (no meaningful distance)."""
    import numpy as np
    diff, _, nonfinite_bad = _float_distance(np.asarray(got), np.asarray(want64))
    return None if nonfinite_bad.any() else _finite_or_none(diff.max(initial=0.0))


def judged_by_float64(reference: np.ndarray, quantized: bool) -> bool:
    """Whether an output is judged by the noise rule: a float output, not quantized (its
    tolerance is a quantization step, not rounding noise). Integers and bools are exact."""
    import numpy as np
    return not quantized and np.asarray(reference).dtype.kind == "f"


def noise_floor(reference64: np.ndarray, dtype) -> float:
    """FLOOR_ULPS ulps (of the reference's dtype) of the output's largest finite magnitude."""
    import numpy as np
    values = np.abs(np.asarray(reference64, np.float64))
    finite = values[np.isfinite(values)]
    scale = float(finite.max()) if finite.size else 0.0
    eps = float(np.finfo(dtype).eps) if np.dtype(dtype).kind == "f" else float(np.finfo(np.float32).eps)
    return FLOOR_ULPS * eps * scale


def noise_rule(got: np.ndarray, reference64: np.ndarray, framework_error: float,
               dtype="float32", factor: float = FACTOR, rule: str = "f64-noise") -> dict:
    """Judge one output by the float64 noise rule: its error vs the float64 answer must be
    at most `factor` times the framework's own f32 error (framework_error, from capture),
    that error taken as at least noise_floor(). The fields validate records per output.
    rule="spread": where the framework has no float64 answer, the same bound with the
    reference itself in reference64's place and, as framework_error, the spread between
    the framework's own two implementations (LiteRT's XNNPACK and reference kernels)."""
    target_error = float64_error(got, reference64)
    allowed_error = max(framework_error, noise_floor(reference64, dtype))
    measured = None if target_error is None else \
        _finite_or_none(target_error / allowed_error) if allowed_error > 0 else \
        (0.0 if target_error == 0 else None)
    passed = target_error is not None and target_error <= factor * allowed_error
    return {"rule": rule, "passed": passed, "framework_error": float(framework_error),
            "target_error": target_error, "floor": allowed_error if allowed_error > framework_error
            else None, "factor": measured, "factor_allowed": float(factor)}


def describe_noise(judged: dict) -> str:
    """The noise rule's verdict on an output in words, for a failure message."""
    spread = judged.get("rule") == "spread"
    against = "the reference" if spread else "float64"
    if judged["target_error"] is None:
        return f"NaN/Inf where {against} has none (or the other way round)"
    own = "the spread between the framework's own kernels" if spread else \
        "the framework's own f32 error"
    base = f"{own} {judged['framework_error']:.2g}"
    if judged.get("floor") is not None:
        base = f"the floor {judged['floor']:.2g} ({FLOOR_ULPS} ulps of the output's scale; " \
            f"{own} is {judged['framework_error']:.2g})"
    factor = "an unbounded number of" if judged["factor"] is None else f"{judged['factor']:.3g}x"
    return f"error vs {against} {judged['target_error']:.2g} is {factor} {base} " \
        f"(allowed {judged['factor_allowed']:g}x)"
