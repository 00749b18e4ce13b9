"""Validation's comparison for every dtype: NaN/Inf, wide integers, bools, empty shapes,
per-output (quantized) tolerances, and the failure message built from it. Pure numpy: the
numbers are the test."""
import json

import numpy as np
import pytest

from pipeline.stage import StageError
from stages.compare import compare
from stages.validate import _failure_message


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
    message = _failure_message(result, 1e-4, 1e-4)
    assert "max abs error n/a" in message and "1 elements NaN/Inf" in message
    assert "output 0: max abs error n/a against its own atol 0.5" in message
