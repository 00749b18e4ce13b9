"""Validation's comparison for every dtype: NaN/Inf, wide integers, bools, empty shapes,
per-output (quantized) tolerances, the float64 noise rule, and the failure message built
from them. Pure numpy: the
numbers are the test."""
import json

import numpy as np
import pytest

from pipeline.stage import StageError
from stages.compare import (
    FACTOR,
    FLOOR_ULPS,
    compare,
    describe_noise,
    float64_error,
    judged_by_float64,
    noise_floor,
    noise_rule,
)
from stages.validate import failure_message, judge


def one(got, want, atol=1e-4, rtol=1e-4, tolerances=None):
    return compare([np.asarray(got)], [np.asarray(want)], atol, rtol, tolerances)


def test_nan_and_inf_where_the_reference_has_them_match():
    result = one([np.nan, np.inf, -np.inf, 1.0], [np.nan, np.inf, -np.inf, 1.0])
    assert result["passed"] and result["max_abs_error"] == 0.0
    assert result["outputs"][0]["nonfinite_mismatch"] == 0


def test_nan_against_a_finite_value_fails_and_is_not_reported_as_zero_error():
    result = one([np.nan, 1.0], [0.5, 1.0])
    assert not result["passed"]
    assert result["outputs"][0]["nonfinite_mismatch"] == 1
    assert result["outputs"][0]["mismatched"] == 1
    assert result["max_abs_error"] is None and result["outputs"][0]["max_abs_error"] is None
    assert one([1.0], [np.nan])["outputs"][0]["nonfinite_mismatch"] == 1


def test_opposite_infinities_fail():
    result = one([np.inf], [-np.inf])
    assert not result["passed"] and result["outputs"][0]["nonfinite_mismatch"] == 1


def test_results_are_strict_json_even_when_float64_overflows():
    result = one(np.array([1e308, np.nan]), np.array([-1e308, 0.0]))
    json.dumps(result, allow_nan=False)   # raises on NaN or Infinity
    assert not result["passed"] and result["outputs"][0]["mismatched"] == 2


def test_uint8_differences_do_not_wrap():
    result = one(np.array([0, 255], np.uint8), np.array([255, 0], np.uint8))
    assert result["max_abs_error"] == 255.0 and result["outputs"][0]["mismatched"] == 2


def test_uint64_above_2_63_compares_by_value():
    big = np.array([2**64 - 1], np.uint64)
    assert one(big, big)["passed"]
    # float64 would round both to 2**64 and call them equal
    neighbour = one(big, np.array([2**64 - 2], np.uint64))
    assert not neighbour["passed"] and neighbour["max_abs_error"] == 1.0
    assert one(big, np.array([2**63], np.uint64))["max_abs_error"] == float(2**63 - 1)


def test_int64_extremes_do_not_overflow():
    result = one(np.array([-2**63], np.int64), np.array([2**63 - 1], np.int64))
    assert result["max_abs_error"] == float(2**64 - 1)


def test_integers_of_other_widths_compare_by_value():
    assert one(np.array([-3, 7], np.int32), np.array([-3, 7], np.int64))["passed"]
    assert one(np.array([3.0], np.float32), np.array([3], np.int64))["passed"]
    assert not one(np.array([3], np.int32), np.array([3.5]))["passed"]


def test_integers_compare_exactly_unless_given_a_tolerance():
    exact = one(np.array([3], np.int8), np.array([4], np.int8), atol=10)
    assert not exact["passed"] and exact["outputs"][0]["exact"] is True
    quantized = one(np.array([3], np.int8), np.array([4], np.int8), tolerances=[(2.0, 0.0)])
    assert quantized["passed"] and quantized["outputs"][0]["atol"] == 2.0
    assert quantized["outputs"][0]["exact"] is False
    assert not one(np.array([1], np.int8), np.array([4], np.int8), tolerances=[(2.0, 0.0)])["passed"]


def test_a_per_output_tolerance_applies_to_its_output_only():
    outputs = [np.array([1.5]), np.array([1.5])]
    result = compare(outputs, [np.array([1.0]), np.array([1.0])], 1e-4, 0.0, [(1.0, 0.0)])
    assert [o["passed"] for o in result["outputs"]] == [True, False]


def test_bools_compare_exactly():
    assert one([True, False], [True, False])["passed"]
    result = one([True, True, False], [True, False, True], atol=10)
    assert not result["passed"] and result["outputs"][0]["mismatched"] == 2


def test_complex_outputs_keep_their_imaginary_part():
    result = one(np.array([1 + 1j]), np.array([1 + 2j]))
    assert not result["passed"] and result["max_abs_error"] == 1.0


def test_zero_size_shapes_are_static_and_equal():
    result = one(np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32))
    assert result["passed"] and result["max_abs_error"] == 0.0
    assert result["outputs"][0]["shape"] == [0, 4]
    assert one(np.zeros((0, 4), np.int8), np.zeros((0, 4), np.int8))["passed"]


def test_a_shape_or_count_mismatch_names_the_output():
    with pytest.raises(StageError, match=r"output 1: shape \(3,\)"):
        compare([np.zeros(2), np.zeros(3)], [np.zeros(2), np.zeros(4)], 1e-4, 1e-4)
    with pytest.raises(StageError, match=r"output 0: shape \(0, 4\)"):
        compare([np.zeros((0, 4))], [np.zeros((4, 0))], 1e-4, 1e-4)
    with pytest.raises(StageError, match="returned 1 outputs, the reference has 2"):
        compare([np.zeros(2)], [np.zeros(2), np.zeros(2)], 1e-4, 1e-4)


def test_floats_within_tolerance_pass_and_outside_fail():
    assert one([1.00001], [1.0])["passed"]
    result = one([1.1], [1.0])
    assert not result["passed"] and abs(result["max_abs_error"] - 0.1) < 1e-9
    assert result["outputs"][0]["exact"] is False


def test_same_width_integers_of_other_signedness_are_the_same_bits():
    # IREE returns a uint8 output typed int8: 200 arrives as -56
    assert one(np.array([-56, 3], np.int8), np.array([200, 3], np.uint8))["passed"]


def test_failure_message_names_nonfinite_mismatches_without_a_number():
    result = one([np.nan, 1.0], [0.5, 1.0], tolerances=[(0.5, 0.0)])
    message = failure_message(result, 1e-4, 1e-4)
    assert "max abs error n/a" in message and "1 elements NaN/Inf" in message
    assert "output 0: max abs error n/a against its own atol 0.5" in message


# --- the float64 noise rule -----------------------------------------------------------------

def deep_answers(noise: float, seed: int = 0):
    """(float64 answer, the framework's f32 answer `noise` off it, its error)."""
    rng = np.random.default_rng(seed)
    exact = rng.standard_normal(64)
    framework = (exact + rng.uniform(-noise, noise, 64)).astype(np.float32)
    return exact, framework, float(np.abs(framework.astype(np.float64) - exact).max())


def test_a_target_as_noisy_as_the_framework_passes_where_a_fixed_tolerance_fails():
    exact, framework, framework_error = deep_answers(noise=5e-2)
    target = (exact + np.random.default_rng(1).uniform(-5e-2, 5e-2, 64)).astype(np.float32)
    judged = noise_rule(target, exact, framework_error)
    assert judged["passed"] and judged["rule"] == "f64-noise"
    assert judged["factor"] < 2.5 and judged["factor_allowed"] == FACTOR
    assert judged["target_error"] == pytest.approx(float(np.abs(target - exact).max()))
    assert judged["framework_error"] == framework_error
    assert not one(target, framework)["passed"]   # atol 1e-4 / rtol 1e-4 flips on the noise


def test_a_target_far_beyond_the_framework_noise_fails_and_says_by_how_much():
    exact, _, framework_error = deep_answers(noise=1e-5)
    target = (exact + 20 * FACTOR * framework_error).astype(np.float32)
    judged = noise_rule(target, exact, framework_error)
    assert not judged["passed"] and judged["factor"] > FACTOR
    words = describe_noise(judged)
    assert f"x the framework's own f32 error {framework_error:.2g}" in words
    assert f"(allowed {FACTOR:g}x)" in words


def test_an_exactly_right_framework_still_allows_a_few_ulps():
    exact = np.linspace(-4, 4, 32)
    framework = exact.astype(np.float32)   # 1 rounding: error ~ half an ulp of 4
    target = (exact + 8 * np.finfo(np.float32).eps * 4).astype(np.float32)
    judged = noise_rule(target, exact, framework_error=0.0)
    assert judged["passed"] and judged["floor"] == noise_floor(exact, np.float32)
    assert judged["floor"] == pytest.approx(FLOOR_ULPS * np.finfo(np.float32).eps * 4)
    # ...and not a gross error
    assert not noise_rule(framework + 1e-3, exact, framework_error=0.0)["passed"]


def test_nan_in_the_target_where_float64_has_a_number_fails_the_rule():
    exact, framework, framework_error = deep_answers(noise=1e-3)
    target = framework.copy()
    target[3] = np.nan
    judged = noise_rule(target, exact, framework_error)
    assert not judged["passed"] and judged["target_error"] is None
    assert "NaN/Inf" in describe_noise(judged)


def test_only_unquantized_float_outputs_are_judged_by_float64():
    assert judged_by_float64(np.zeros(2, np.float32), quantized=False)
    assert not judged_by_float64(np.zeros(2, np.float32), quantized=True)
    assert not judged_by_float64(np.zeros(2, np.int8), quantized=False)
    assert not judged_by_float64(np.zeros(2, bool), quantized=False)
    assert float64_error(np.array([1.0, np.inf], np.float32), np.array([1.5, np.inf])) == 0.5
    assert float64_error(np.array([1.0, np.inf], np.float32), np.array([1.5, 2.0])) is None


class Model:
    atol = rtol = None


def answer_with_float64(reference, reference64, framework_error):
    from stages.validate import Answer
    return Answer(inputs=[], reference=[reference], reference64=[reference64],
                  f64={"available": True, "why": "", "framework_error": [framework_error]})


def test_validate_judges_by_float64_and_keeps_the_tolerance_verdict_in_the_record():
    exact, framework, framework_error = deep_answers(noise=5e-2)
    answer = answer_with_float64(framework, exact, framework_error)
    result = judge([framework + np.float32(1e-2)], answer, Model(), 1e-4, 1e-3)
    output = result["outputs"][0]
    assert result["passed"] and result["rule"] == output["rule"] == "f64-noise"
    assert output["tolerance_passed"] is False   # atol/rtol alone would have failed it
    assert {"framework_error", "target_error", "factor", "factor_allowed"} <= result.keys()
    json.dumps(result)


def test_a_genuinely_wrong_target_fails_validate_with_the_factor_in_words():
    exact, framework, framework_error = deep_answers(noise=1e-5)
    answer = answer_with_float64(framework, exact, framework_error)
    wrong = framework + np.float32(2e-3)   # a bf16-sized error
    result = judge([wrong], answer, Model(), 1e-4, 1e-3)
    assert not result["passed"] and result["factor"] > 100
    message = failure_message(result, 1e-4, 1e-3)
    assert message.startswith("outputs differ from the reference: output 0: error vs float64 ")
    assert "x the framework's own f32 error" in message and "(allowed 8x)" in message


def test_a_model_with_its_own_tolerance_is_judged_by_it_alone():
    exact, framework, framework_error = deep_answers(noise=5e-2)
    answer = answer_with_float64(framework, exact, framework_error)

    class Strict:
        atol, rtol = 1e-4, None
    result = judge([framework + np.float32(1e-2)], answer, Strict(), 1e-4, 1e-3)
    assert not result["passed"] and result["rule"] == "atol/rtol"
    assert result["rule_why"] == "the model's own atol/rtol"


# --- no float64, but the framework's own second implementation (LiteRT's reference kernels) --

def answer_with_alternative(reference, alternative, tolerances=None):
    from stages.compare import float64_error
    from stages.validate import Answer
    spread = [None if tolerances and tolerances[0] else float64_error(reference, alternative)]
    return Answer(inputs=[], reference=[reference], tolerances=tolerances,
                  alternative=[alternative],
                  alternative_record={"from": "LiteRT's reference kernels", "spread": spread})


def test_without_float64_the_spread_of_the_frameworks_own_kernels_is_its_noise():
    rng = np.random.default_rng(0)
    xnnpack = rng.normal(0, 5, 1000).astype(np.float32)
    reference_kernels = xnnpack + np.float32(2.5e-4)   # LiteRT against itself
    answer = answer_with_alternative(xnnpack, reference_kernels)
    near = judge([xnnpack + np.float32(2e-4)], answer, Model(), 1e-4, 1e-3)
    assert near["passed"] and near["rule"] == "spread", near
    assert near["outputs"][0]["tolerance_passed"] is False   # atol 1e-4 alone fails it
    assert near["outputs"][0]["spread_from"] == "LiteRT's reference kernels"
    far = judge([xnnpack + np.float32(0.1)], answer, Model(), 1e-4, 1e-3)
    assert not far["passed"] and far["factor"] > 8
    assert "the spread between the framework's own kernels" in failure_message(far, 1e-4, 1e-3)


def test_a_quantized_output_matching_the_reference_kernels_passes_and_says_so():
    xnnpack = np.array([10, -3, 40], np.int8)
    reference_kernels = np.array([10, -3, 6], np.int8)   # XNNPACK rounds 34 steps otherwise
    steps = [{"atol": 2.0, "rtol": 0.0, "why": "2 steps"}]
    answer = answer_with_alternative(xnnpack, reference_kernels, steps)
    matching = judge([reference_kernels.copy()], answer, Model(), 1e-4, 1e-3)
    assert matching["passed"] and matching["outputs"][0]["matched"] == \
        "LiteRT's reference kernels", matching
    assert "match LiteRT's reference kernels" in matching["matched"]
    neither = judge([np.array([10, -3, 20], np.int8)], answer, Model(), 1e-4, 1e-3)
    assert not neither["passed"] and "matched" not in neither["outputs"][0]


def test_a_dynamic_range_output_whose_kernels_differ_beyond_its_steps_is_judged_by_their_spread():
    from stages.compare import float64_error
    from stages.validate import Answer
    rng = np.random.default_rng(1)
    xnnpack = rng.normal(0, 5, 1000).astype(np.float32)
    steps = [{"atol": 0.1, "rtol": 0.0, "why": "2 int8 steps of the output"}]

    def answer(reference_kernels):
        return Answer(inputs=[], reference=[xnnpack], tolerances=steps,
                      alternative=[reference_kernels],
                      alternative_record={"from": "LiteRT's reference kernels",
                                          "spread": [float64_error(xnnpack, reference_kernels)]})
    # LiteRT's two kernel sets 1.5 apart, IREE 1.7 off: past the steps, within their noise
    noisy = answer(xnnpack + np.float32(1.5))
    within = judge([xnnpack - np.float32(1.7)], noisy, Model(), 1e-4, 1e-3)
    assert within["passed"] and within["rule"] == "spread", within
    assert within["outputs"][0]["tolerance_passed"] is False
    assert "more than this output's steps allow" in within["outputs"][0]["spread_why"]
    beyond = judge([xnnpack - np.float32(20.0)], noisy, Model(), 1e-4, 1e-3)
    assert not beyond["passed"] and beyond["factor"] > 8
    # kernels that agree within the steps leave the steps to decide
    agreeing = answer(xnnpack + np.float32(0.05))
    stepped = judge([xnnpack - np.float32(0.3)], agreeing, Model(), 1e-4, 1e-3)
    assert not stepped["passed"] and stepped["rule"] == "atol/rtol", stepped
