"""Validation's comparison for every dtype: NaN/Inf, wide integers, bools, empty shapes,
per-output (quantized) tolerances. Pure numpy: the numbers are the test."""
import numpy as np
import pytest

from pipeline.stage import StageError
from stages.compare import compare


def one(got, want, atol=1e-4, rtol=1e-4, tolerances=None):
    return compare([np.asarray(got)], [np.asarray(want)], atol, rtol, tolerances)


def test_nan_and_inf_where_the_reference_has_them_match():
    assert one([np.nan, np.inf, -np.inf, 1.0], [np.nan, np.inf, -np.inf, 1.0])["passed"]


def test_nan_against_a_finite_value_fails_and_is_counted():
    result = one([np.nan, 1.0], [0.5, 1.0])
    assert not result["passed"]
    assert result["outputs"][0]["nonfinite_mismatch"] == 1
    assert not one([np.inf], [-np.inf])["passed"]
    assert not one([1.0], [np.nan])["passed"]


def test_uint8_differences_do_not_wrap():
    result = one(np.array([0, 255], np.uint8), np.array([255, 0], np.uint8))
    assert result["max_abs_error"] == 255 and result["outputs"][0]["mismatched"] == 2
    big = np.array([2**64 - 1], np.uint64)
    assert one(big, big)["passed"]
    assert one(big, np.array([2**63], np.uint64))["max_abs_error"] > 9e18


def test_integers_compare_exactly_unless_quantized():
    assert not one(np.array([3], np.int8), np.array([4], np.int8), atol=10)["passed"]
    quantized = one(np.array([3], np.int8), np.array([4], np.int8), tolerances=[(2.0, 0.0)])
    assert quantized["passed"] and quantized["outputs"][0]["atol"] == 2.0
    assert not one(np.array([1], np.int8), np.array([4], np.int8), tolerances=[(2.0, 0.0)])["passed"]


def test_bools_compare_exactly():
    assert one([True, False], [True, False])["passed"]
    assert one([True, True], [True, False])["outputs"][0]["mismatched"] == 1


def test_zero_size_shapes_are_static_and_equal():
    result = one(np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32))
    assert result["passed"] and result["max_abs_error"] == 0


def test_a_shape_or_count_mismatch_names_the_output():
    with pytest.raises(StageError, match=r"output 1: shape \(3,\)"):
        compare([np.zeros(2), np.zeros(3)], [np.zeros(2), np.zeros(4)], 1e-4, 1e-4)
    with pytest.raises(StageError, match="returned 1 outputs, the reference has 2"):
        compare([np.zeros(2)], [np.zeros(2), np.zeros(2)], 1e-4, 1e-4)


def test_floats_within_tolerance_pass_and_outside_fail():
    assert one([1.00001], [1.0])["passed"]
    result = one([1.1], [1.0])
    assert not result["passed"] and abs(result["max_abs_error"] - 0.1) < 1e-9


def test_same_width_integers_of_other_signedness_are_the_same_bits():
    # IREE returns a uint8 output typed int8: 200 arrives as -56
    assert one(np.array([-56, 3], np.int8), np.array([200, 3], np.uint8))["passed"]
