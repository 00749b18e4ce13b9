"""stages/dispatch_trace.py: reading a dispatch trace and pairing two builds' dispatches by
their values. The traces here are written as iree-run-module prints them (docs/DESIGN.md §8); the
real ones come from tests/test_bisect.py."""
from __future__ import annotations

import numpy as np
import pytest

from stages.bisect import Search
from stages.dispatch_trace import Values, parse, same_layout, steps


def tensor_line(array: np.ndarray, dtype: str = "f32") -> str:
    rows = "".join("[" + " ".join(f"{v:.6g}" for v in row) + "]" for row in array.reshape(
        array.shape[0], -1)) if array.ndim > 1 else " ".join(f"{v:.6g}" for v in array)
    return f"{'x'.join(map(str, array.shape))}x{dtype}={rows}"


def trace(*dispatches) -> list[str]:
    """Lines of a trace: each dispatch is (executable, symbol, inputs, outputs), tensors as
    (array, dtype)."""
    lines = ["EXEC @main"]
    for executable, symbol, inputs, outputs in dispatches:
        for side, tensors in (("inputs", inputs), ("outputs", outputs)):
            lines.append(f"=== {executable}::{symbol} {side} ===")
            lines += [tensor_line(a, d) for a, d in tensors] + [""]
    return lines + ["result[0]: hal.buffer_view", "2x8xf32=[1 2 3 4 5 6 7 8][1 2 3 4 5 6 7 8]"]


def bf16(array: np.ndarray) -> np.ndarray:
    """array rounded to bfloat16 (round to nearest even), as float32."""
    bits = array.astype(np.float32).view(np.uint32)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 16)).astype(np.float32)
W1 = (RNG.standard_normal((32, 16)) * 0.2).astype(np.float32)
W2 = (RNG.standard_normal((8, 32)) * 0.2).astype(np.float32)
H = np.maximum(X @ W1.T, 0)
Y = H @ W2.T


def reference_trace() -> list[str]:
    return trace(("main$async_dispatch_0", "main$async_dispatch_0_matmul_2x32x16_f32",
                  [(X, "f32"), (W1, "f32")], [(H, "f32")]),
                 ("main$async_dispatch_1", "main$async_dispatch_1_matmul_2x8x32_f32",
                  [(H, "f32"), (W2, "f32")], [(Y, "f32")]))


def demoted_trace(error: float, out: str = "f32") -> list[str]:
    """The bf16 build: a weight converted by an initializer, the input converted (as a flat
    32-element tensor: a reshape), a first matmul off by `error` (its result in `out`), the
    second on its output."""
    h = H + np.float32(error) * (H != 0)
    h = bf16(h) if out == "bf16" else h
    return trace(("_initializer_0_dispatch_0", "_initializer_0_dispatch_0_elementwise_512_f32xbf16",
                  [(W1.ravel(), "f32")], [(bf16(W1).ravel(), "bf16")]),
                 ("main$async_dispatch_0", "main$async_dispatch_0_elementwise_32_f32xbf16",
                  [(X.ravel(), "f32")], [(bf16(X), "bf16")]),
                 ("main$async_dispatch_1", "main$async_dispatch_1_matmul_2x32x16_bf16xbf16xf32",
                  [(bf16(X), "bf16"), (bf16(W1), "bf16")], [(h, out)]),
                 ("main$async_dispatch_2", "main$async_dispatch_2_matmul_2x8x32_f32",
                  [(h, out), (W2, "f32")], [(h @ W2.T, "f32")]))


def reference_values(atol=1e-4, rtol=1e-3) -> Values:
    values = Values(atol, rtol)
    for dispatch in parse(reference_trace()):
        values.add(dispatch)
    return values


def test_parse_reads_each_dispatch_and_skips_the_results():
    dispatches = list(parse(demoted_trace(0.0)))
    assert [d.position for d in dispatches] == [0, 1, 2, 3]
    assert dispatches[0].initializer and not dispatches[2].initializer
    assert dispatches[2].symbol == "main$async_dispatch_1_matmul_2x32x16_bf16xbf16xf32"
    assert [t.type for t in dispatches[2].inputs] == ["2x16xbf16", "32x16xbf16"]
    np.testing.assert_allclose(dispatches[3].inputs[1].values.reshape(8, 32), W2, rtol=1e-5)
    # a tensor printed again is one value (the output of one dispatch, the input of the next)
    assert dispatches[2].outputs[0] is dispatches[3].inputs[0]


def test_the_first_dispatch_whose_inputs_agree_and_outputs_do_not_is_found():
    found = list(steps(reference_values(), parse(demoted_trace(0.01))))
    agree = [s.outputs_agree for s in found]
    assert agree == [True, True, False, False]   # conversions to bf16 agree with f32 values
    first = found[2]
    assert first.inputs_agree and not first.outputs_agree
    described = first.describe()
    assert described["symbol"].endswith("matmul_2x32x16_bf16xbf16xf32")
    assert described["partner"] == "main$async_dispatch_0_matmul_2x32x16_f32"
    assert described["max_abs_error"] == pytest.approx(0.01, abs=1e-5)
    # the next one's input is the bad output: its inputs do not agree
    assert not found[3].inputs_agree
    assert found[3].describe()["partner"] == "main$async_dispatch_1_matmul_2x8x32_f32"


def test_a_build_that_agrees_everywhere_has_no_bad_dispatch():
    found = list(steps(reference_values(), parse(demoted_trace(0.0))))
    assert all(s.outputs_agree and s.inputs_agree for s in found)


def test_a_tensor_with_no_value_of_its_size_is_unpaired():
    odd = trace(("main$async_dispatch_0", "main$async_dispatch_0_generic_7_f32",
                 [(X, "f32")], [(np.arange(7, dtype=np.float32), "f32")]))
    (step,) = steps(reference_values(), parse(odd))
    assert step.inputs[0].paired and step.inputs[0].agrees
    assert not step.paired and step.describe()["max_abs_error"] is None


def test_a_value_of_equal_element_count_and_another_shape_is_no_partner():
    """A 2x8 output where the reference only has a 4x4 of as many elements: never a pair,
    not even where the values agree (ResNet's 64x12544 stem paired with a later layer's
    256x3136 and blamed for a 100% difference); a reshape that keeps the elements' order
    (2x16 read as 32) is one."""
    other = RNG.standard_normal((4, 4)).astype(np.float32)
    reference = Values(1e-4, 1e-3)
    for dispatch in parse(trace(("main$async_dispatch_0", "main$async_dispatch_0_generic_4x4_f32",
                                 [(X, "f32")], [(other, "f32")]))):
        reference.add(dispatch)
    for mine in (RNG.standard_normal((2, 8)).astype(np.float32), other.reshape(2, 8)):
        (step,) = steps(reference, parse(trace(("main$async_dispatch_0",
                                                "main$async_dispatch_0_generic_2x8_f32",
                                                [(X.ravel(), "f32")], [(mine, "f32")]))))
        assert step.inputs[0].paired and step.inputs[0].agrees   # 32 is 2x16's layout
        assert not step.paired and not step.blamed
        assert step.describe()["max_abs_error"] is None and step.describe()["partner"] is None


@pytest.mark.parametrize("a, b, same", [
    ((2, 16), (32,), True), ((1, 64, 112, 112), (64, 12544), True), ((4, 1, 8), (4, 8), True),
    ((2, 3, 4), (6, 4), True), ((2, 3, 4), (2, 12), True), ((64, 12544), (256, 3136), False),
    ((2, 8), (4, 4), False), ((2, 3, 4), (3, 8), False), ((6, 4), (4, 6), False),
    ((3,), (4,), False)])
def test_a_layout_is_the_same_only_where_a_reshape_keeps_the_order(a, b, same):
    assert same_layout(a, b) is same and same_layout(b, a) is same


def test_within_allows_one_step_of_the_less_precise_dtype_and_no_more():
    values = reference_values(atol=0.0, rtol=0.0)
    (rounded,) = [d for d in parse(trace(("e", "e_elementwise_512_f32xbf16", [],
                                          [(bf16(W1), "bf16")])))]
    assert values.match(rounded.outputs[0]).agrees             # a bf16 rounding: one step
    (off,) = [d for d in parse(trace(("e", "e_elementwise_512_f32xbf16", [],
                                      [(bf16(W1 * 1.03), "bf16")])))]
    assert not values.match(off.outputs[0]).agrees             # 3% is many bf16 steps


def test_an_infinity_where_the_reference_has_none_disagrees_with_no_error_figure():
    overflowed = X * np.float32(1e5)
    overflowed[0, 0] = np.inf
    bad = trace(("main$async_dispatch_0", "main$async_dispatch_0_elementwise_32_f32xf16",
                 [(X.ravel(), "f32")], [(overflowed, "f16")]))
    values = reference_values()
    for dispatch in parse(trace(("s", "s_elementwise_32_f32", [(X, "f32")],
                                 [(X * np.float32(1e5), "f32")]))):
        values.add(dispatch)
    (step,) = steps(values, parse(bad))
    assert step.inputs_agree and not step.outputs_agree
    described = step.describe()
    assert described["nonfinite"] == 1 and described["max_abs_error"] is None
    assert described["partner"] == "s_elementwise_32_f32"   # the nearest by its finite values


@pytest.mark.parametrize("out", ["f32", "bf16"])
def test_the_bf16_matmul_is_blamed_and_the_one_reading_its_error_is_not(out):
    found = list(steps(reference_values(), parse(demoted_trace(0.01, out))))
    # the conversions round to bf16 (their own type); the matmul reading bf16 where the
    # reference reads f32 is where the error is made (a bf16 result, as IREE's fused one
    # is, is judged at f32's precision, the reference's); the next one only carries it
    assert [s.blamed for s in found] == [False, False, True, False]
    assert found[3].inherited().abs == pytest.approx(0.01, abs=0.01 if out == "bf16" else 1e-5)


def tanh_net(layers: int, fresh: float, jump_at: int | None = None):
    """A deep random tanh net (gain 2: a perturbation grows layer by layer) as a reference
    trace and a failing one whose every layer adds `fresh` relative rounding (and, at
    jump_at, a 1% error of its own)."""
    rng = np.random.default_rng(1)
    weights = [(rng.standard_normal((64, 64)) * 2 / 8).astype(np.float32) for _ in range(layers)]
    x = rng.standard_normal((4, 64)).astype(np.float32)
    reference, failing, want, got = [], [], x, x
    for n, w in enumerate(weights):
        symbol = f"main$async_dispatch_{n}_matmul_4x64x64_f32"
        out = np.tanh(want.astype(np.float64) @ w.T).astype(np.float32)
        noise = 1 + fresh * rng.standard_normal(out.shape) + (0.01 if n == jump_at else 0.0)
        bad = (np.tanh(got.astype(np.float64) @ w.T) * noise).astype(np.float32)
        reference.append((f"main$async_dispatch_{n}", symbol, [(want, "f32"), (w, "f32")],
                          [(out, "f32")]))
        failing.append((f"main$async_dispatch_{n}", symbol, [(got, "f32"), (w, "f32")],
                        [(bad, "f32")]))
        want, got = out, bad
    values = Values(1e-4, 1e-3)
    for dispatch in parse(trace(*reference)):
        values.add(dispatch)
    return list(steps(values, parse(trace(*failing))))


def test_error_that_grows_layer_by_layer_blames_no_dispatch():
    found = tanh_net(48, fresh=5e-7)
    relative = [s.relative_error() for s in found]
    assert relative[-1] > 1e-3 > relative[5]          # it grew past the tolerance
    assert not all(s.outputs_agree for s in found)   # (the old rule blamed the first over it)
    assert not any(s.blamed for s in found)


def test_an_error_a_dispatch_makes_on_its_own_is_blamed_in_a_deep_net():
    found = tanh_net(48, fresh=5e-7, jump_at=30)
    assert [s.dispatch.position for s in found if s.blamed] == [30]


def test_an_unpaired_input_carries_its_makers_error():
    """A tensor the reference has no layout of (an im2col's patches) carries the error its
    maker's inputs brought: the matmul reading exact patches and going wrong is blamed."""
    patches = np.repeat(X, 3, axis=1)             # 2x48: no reference value of its layout
    w = (RNG.standard_normal((8, 48)) * 0.2).astype(np.float32)
    values = Values(1e-4, 1e-3)
    for dispatch in parse(trace(("r", "r_conv_2x8_f32", [(X, "f32"), (w, "f32")],
                                 [(patches @ w.T, "f32")]))):
        values.add(dispatch)
    found = list(steps(values, parse(trace(
        ("f0", "f0_im2col_2x48_f32", [(X, "f32")], [(patches, "f32")]),
        ("f1", "f1_matmul_2x8x48_f32", [(patches, "f32"), (w, "f32")],
         [(patches @ w.T + 0.05, "f32")])))))
    assert not found[0].paired and found[1].blamed
    assert found[1].describe()["unpaired_inputs"] == ["2x48xf32"]


def test_integers_compare_as_their_own_signed_type():
    """An i8 printed 252 by one build and -4 by the other is one value (an int8 weight
    transpose was reported 'max abs error 252'); a ui8 stays unsigned."""
    weights = np.array([[-4, 5, -128], [1, 2, 127]])
    values = Values(0.0, 0.0)
    for dispatch in parse(trace(("r", "r_transpose_2x3_i8", [], [(weights, "i8")]))):
        values.add(dispatch)
    (read,) = parse(trace(("f", "f_transpose_2x3_i8", [], [(weights % 256, "i8")])))
    assert read.outputs[0].values.tolist() == weights.ravel().tolist()
    match = values.match(read.outputs[0])
    assert match.paired and match.agrees and match.max_abs_error == 0.0
    (unsigned,) = parse(trace(("u", "u_x_3_ui8", [], [(np.array([-4, 200, 3]), "ui8")])))
    assert unsigned.outputs[0].values.tolist() == [252, 200, 3]


@pytest.mark.parametrize("read_as", [(2, 8), (16,)])
def test_a_blame_whose_error_never_reaches_its_reader_is_withdrawn(read_as):
    """ResNet-18's im2col variant against vmvx: a conv's matmul before its ReLU has no
    partner (vmvx traces the conv with the ReLU fused), so it pairs with another tensor of
    its layout, 100% off; the dispatch reading it (the ReLU, which may read it reshaped)
    agrees again. The error never reached its reader: the blame is withdrawn, and no
    dispatch is blamed."""
    w, v = (RNG.standard_normal((8, 16)) * 0.3).astype(np.float32), \
        (RNG.standard_normal((8, 8)) * 0.3).astype(np.float32)
    pre = X @ w.T
    r1 = np.maximum(pre, 0)
    r2 = np.maximum(r1 @ v.T, 0)
    values = Values(1e-4, 1e-3)
    for dispatch in parse(trace(("r0", "r0_conv_relu_2x8_f32", [(X, "f32"), (w, "f32")], [(r1, "f32")]),
                                ("r1", "r1_conv_relu_2x8_f32", [(r1, "f32"), (v, "f32")], [(r2, "f32")]))):
        values.add(dispatch)
    failing = parse(trace(("f0", "f0_matmul_2x8x16_f32", [(X, "f32"), (w, "f32")], [(pre, "f32")]),
                          ("f1", "f1_relu_2x8_f32", [(pre.reshape(read_as), "f32")],
                           [(r1, "f32")]),
                          ("f2", "f2_conv_relu_2x8_f32", [(r1, "f32"), (v, "f32")], [(r2, "f32")])))
    search = Search(values)
    for dispatch in failing:
        search.step(dispatch)
    found = search.result("vmvx", 1e-4, 1e-3)
    assert found["first_bad_dispatch"] is None and search.withdrawn == {0: 1}
    assert found["set_aside"]["count"] == 1 and found["curve"]["ordinal"] == [1, 2]
    assert "set aside, paired with another tensor of the same layout (#0" in found["summary"]
    assert found["summary"].startswith("accumulated rounding, no single dispatch")


def test_a_blame_whose_error_reaches_its_reader_is_confirmed():
    found = list(steps(reference_values(), parse(demoted_trace(0.01))))
    assert found[3].confirms == [2] and not found[3].withdrawn
