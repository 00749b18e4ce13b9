"""The float64 twin of an ONNX graph (stages/frameworks/onnx_twin.py): the same computation
for old-opset files as onnx ships them (its `light` CNNs, weights seeded by tests/onnx_light.py),
BatchNormalization, Constant and Cast nodes, float32-only inputs; and, where there can be no
twin, capture's f64.why naming the node. Capture only, in-process: no compiler."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx_light import write_light  # noqa: E402

from pipeline.stage import ModelSpec  # noqa: E402
from stages.frameworks import load_arrays, onnx_common, onnx_twin  # noqa: E402
from stages.frameworks.base import NoFloat64  # noqa: E402
from stages.frameworks.onnx_fw import ADAPTER  # noqa: E402


def capture(name: str, model_path, out) -> tuple[dict, list, list]:
    """capture.json's f64 record, the reference and the float64 answer."""
    out.mkdir()
    info = ADAPTER.capture(ModelSpec(name, "onnx", {"model": model_path}), out)
    return info["f64"], load_arrays(out / "reference.npz"), load_arrays(out / "reference64.npz")


@pytest.mark.parametrize("name", ["squeezenet", "shufflenet"])
def test_a_light_cnn_as_onnx_ships_it_gets_a_float64_twin_that_is_used(name, tmp_path):
    """Opset 9, IR 3, weights from ConstantOfShape placeholders (seeded here), ShuffleNet's 49
    BatchNormalization-9s: before the twin was built from the upgraded graph, onnx's reference
    evaluator ran BatchNormalization-9 with its default momentum as a training step (ResNet-50:
    output 1.62e+05 from the reference, twin not used)."""
    path = write_light(name, tmp_path / name)
    f64, reference, answer = capture(name, path, tmp_path / "capture")
    assert f64 == {"available": True, "why": "onnx run in float64"}, f64
    (logits,), (logits64,) = reference, answer
    assert logits64.dtype == np.float64 and logits64.shape == logits.shape
    assert logits.size == 1000   # (the logits: the final Softmax was dropped)
    # the same computation: f32 rounding apart, ~1e-7 of the logits' scale
    assert np.abs(logits - logits64).max() < 1e-5 * np.abs(logits64).max()


def _model(nodes, inputs, output, initializers=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   *extra_opsets])


def _answers(model, inputs: list) -> tuple[list, list]:
    """(onnxruntime's float32 reference, the twin's float64 answer)."""
    data = model.SerializeToString()
    names = [name for name, _, _ in onnx_common.signature(model)]
    reference = onnx_common.session(data).run(None, dict(zip(names, inputs)))
    return reference, onnx_twin.float64_answer(data, inputs, reference)


def test_constants_casts_and_float32_only_inputs_in_the_twin():
    """Constant(value_float) and a Cast to FLOAT compute in float64; a Cast to INT64 stays
    integer; Resize's scales, which ONNX defines as float32 only, stay float32 behind a Cast:
    onnxruntime runs the twin (every op has a float64 kernel) and it matches numpy's float64."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 3])
    nodes = [
        helper.make_node("Constant", [], ["third"], value_float=1 / 3),
        helper.make_node("Mul", ["x", "third"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["whole"], to=TensorProto.INT64),
        helper.make_node("Cast", ["whole"], ["back"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["scaled", "back"], ["summed"]),
        helper.make_node("Resize", ["summed", "", "scales"], ["y"], mode="nearest"),
    ]
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    model = _model(nodes, [x], "y", [scales])
    twin = onnx_twin.make_twin(onnx.shape_inference.infer_shapes(model))
    by_output = {node.output[0]: node for node in twin.graph.node}
    assert helper.get_attribute_value(by_output["third"].attribute[0]).data_type == TensorProto.DOUBLE
    assert by_output["whole"].attribute[0].i == TensorProto.INT64
    assert by_output["back"].attribute[0].i == TensorProto.DOUBLE
    resize = by_output["y"]
    assert resize.input[2] != "scales"   # a Cast to float32 feeds it
    assert by_output[resize.input[2]].attribute[0].i == TensorProto.FLOAT

    values = np.array([[[[1.5, -2.0, 7.25], [0.1, 3.0, -4.4]]]], np.float32)
    _, (answer,) = _answers(model, [values])
    scaled = values.astype(np.float64) * np.float64(np.float32(1 / 3))   # (the model's constant)
    expected = np.repeat(np.repeat(scaled + np.trunc(scaled), 2, axis=2), 2, axis=3)
    assert answer.dtype == np.float64
    np.testing.assert_allclose(answer, expected, rtol=1e-15)


def test_a_model_local_functions_constants_compute_in_float64():
    """A function of the model's own (as torch.onnx's dynamo exporter writes them) whose body
    holds a float32 Constant: the twin makes it double too, so onnxruntime runs the twin."""
    body = [helper.make_node("Constant", [], ["k"], value_float=0.1),
            helper.make_node("Mul", ["a", "k"], ["b"])]
    function = helper.make_function("local", "Tenth", ["a"], ["b"], body,
                                    [helper.make_opsetid("", 17)])
    model = _model([helper.make_node("Tenth", ["x"], ["y"], domain="local")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])], "y",
                   extra_opsets=[helper.make_opsetid("local", 1)])
    model.functions.append(function)
    values = np.array([1.0, 3.0, -7.0, 0.5], np.float32)
    _, (answer,) = _answers(model, [values])
    assert answer.dtype == np.float64
    np.testing.assert_allclose(answer, values * np.float64(np.float32(0.1)), rtol=1e-15)


def _conv_then(node, extra_opsets=()):
    """x -> Conv (onnxruntime has no float64 Conv: the evaluator runs the twin) -> node."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), node]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])
    model = _model(nodes, [x], "y", [weights], extra_opsets=extra_opsets)
    return model, [rng.standard_normal((1, 3, 6, 6)).astype(np.float32)]


def test_a_node_no_runtime_has_a_float64_kernel_for_is_named_in_f64_why(tmp_path):
    """com.microsoft's Gelu: onnxruntime runs it in float32 only, onnx's evaluator not at all."""
    model, inputs = _conv_then(helper.make_node("Gelu", ["c"], ["y"], name="gelu",
                                                domain="com.microsoft"),
                               [helper.make_opsetid("com.microsoft", 1)])
    path = tmp_path / "gelu.onnx"
    path.write_bytes(model.SerializeToString())
    f64, reference, answer = capture("gelu", path, tmp_path / "capture")
    assert not f64["available"] and answer == [] and len(reference) == 1
    assert f64["why"].startswith("onnx's reference evaluator has no kernel for node 'gelu' "
                                 "(com.microsoft.Gelu), and onnxruntime cannot run"), f64
    assert "Conv" in f64["why"]   # (onnxruntime's own line: its missing float64 kernel)


def test_a_node_the_evaluator_fails_on_in_float64_is_named():
    """MeanVarianceNormalization: the evaluator expands it by ONNX's own function body, whose
    epsilon is a float32 Constant, and then fails on float64 + float32 without naming a node;
    onnxruntime has no float64 Conv. f64.why names the node, found by running the nodes one
    at a time."""
    model, inputs = _conv_then(helper.make_node("MeanVarianceNormalization", ["c"], ["y"],
                                                name="mvn"))
    data = model.SerializeToString()
    reference = onnx_common.session(data).run(None, {"x": inputs[0]})
    with pytest.raises(NoFloat64, match=r"^onnx's reference evaluator cannot run node 'mvn' "
                                        r"\(MeanVarianceNormalization\) in float64 .*Conv"):
        onnx_twin.float64_answer(data, inputs, reference)


def test_a_node_the_evaluator_computes_otherwise_is_named(monkeypatch):
    """onnx 1.23's own LRN normalizes channel 0 only (it loops over the batch): every node the
    evaluator runs is checked against onnxruntime's float32 run of it, so without kiln's LRN
    the twin is refused naming the LRN node; with it, the answer is LRN's in float64."""
    node = helper.make_node("LRN", ["c"], ["y"], name="lrn", size=5, alpha=0.1, beta=0.75)
    model, inputs = _conv_then(node)
    reference, (answer,) = _answers(model, inputs)
    assert np.abs(answer - reference[0]).max() < 1e-5 * np.abs(answer).max()

    kilns = onnx_twin.exact_reference_ops
    monkeypatch.setattr(onnx_twin, "exact_reference_ops",
                        lambda: [op for op in kilns() if op.__name__ != "LRN"])
    with pytest.raises(NoFloat64, match=r"computes node 'lrn' \(LRN\) otherwise than "
                                        r"onnxruntime: on the float32 run's inputs its output 'y'"):
        onnx_twin.float64_answer(model.SerializeToString(), inputs, reference)


def test_a_twin_that_parts_from_the_float32_run_names_the_node_where():
    """The logistic map at r=3.99 doubles any difference each step: f32 and f64 part after
    ~20 steps. Every node is read alike (onnxruntime runs both), and the answer is no float64
    truth for f32: f64.why names the first node beyond 1% of its scale."""
    nodes, value = [], "x"
    for step in range(40):
        nodes += [helper.make_node("Sub", ["one", value], [f"rest{step}"], name=f"sub{step}"),
                  helper.make_node("Mul", [value, f"rest{step}"], [f"product{step}"],
                                   name=f"mul{step}"),
                  helper.make_node("Mul", ["r", f"product{step}"], [f"x{step}"],
                                   name=f"scale{step}")]
        value = f"x{step}"
    constants = [numpy_helper.from_array(np.array(1, np.float32), "one"),
                 numpy_helper.from_array(np.array(3.99, np.float32), "r")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])], value,
                   constants)
    inputs = [np.random.default_rng(0).uniform(0.1, 0.9, 64).astype(np.float32)]
    reference = onnx_common.session(model.SerializeToString()).run(None, {"x": inputs[0]})
    with pytest.raises(NoFloat64) as refused:
        onnx_twin.float64_answer(model.SerializeToString(), inputs, reference)
    why = str(refused.value)
    assert why.startswith("the float64 run's output 0 is "), why
    assert "; the float64 run first parts from the float32 one at node '" in why, why
    assert why.endswith(": not the same computation, so not used"), why


POOLS = [("MaxPool", {}), ("AveragePool", {"count_include_pad": 0}),
         ("AveragePool", {"count_include_pad": 1})]


@pytest.mark.parametrize("ceil_mode", [0, 1])
@pytest.mark.parametrize("op, attributes", POOLS)
def test_kilns_pools_are_onnxruntimes(op, attributes, ceil_mode):
    """The sliding-window pools the evaluator runs instead of its own per-element loops, on
    pads, strides, dilations (MaxPool's) and ceil_mode's extra windows."""
    rng = np.random.default_rng(ceil_mode)
    for kernel, stride, pad, dilation in [(3, 2, 1, 1), (2, 2, 0, 1), (3, 1, 1, 2), (2, 3, 1, 1),
                                          (3, 2, 2, 1)]:
        if op == "AveragePool" and dilation > 1:
            continue   # (AveragePool has dilations from opset 19 only)
        pads = [pad, pad, min(pad + 1, kernel - 1), pad]   # (onnxruntime: pads < kernel)
        more = {"dilations": [dilation] * 2} if op == "MaxPool" else {}
        node = helper.make_node(op, ["x"], ["y"], kernel_shape=[kernel] * 2, pads=pads,
                                strides=[stride] * 2, ceil_mode=ceil_mode, **attributes, **more)
        x = rng.standard_normal((2, 3, 9, 10)).astype(np.float32)
        model = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                       "y")
        (want,) = onnx_common.session(model.SerializeToString()).run(None, {"x": x})
        wide = x.astype(np.float64)
        got = onnx_twin.max_pool(wide, [kernel] * 2, [stride] * 2, pads, [dilation] * 2,
                                 ceil_mode) if op == "MaxPool" else onnx_twin.average_pool(
            wide, [kernel] * 2, [stride] * 2, pads, None, ceil_mode,
            attributes["count_include_pad"])
        assert got.shape == want.shape, (kernel, stride, pad)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=str((kernel, stride, pad)))


def test_an_old_opset_file_with_external_data_gets_a_twin(tmp_path):
    """Opset 9 Conv and BatchNormalization-9 (no momentum given: the schema's default, which
    onnx's evaluator ran as a training step), every weight in a data file beside the model."""
    rng = np.random.default_rng(1)
    arrays = {"w": rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.3,
              "scale": rng.uniform(0.5, 1.5, 6).astype(np.float32),
              "bias": rng.standard_normal(6).astype(np.float32),
              "mean": rng.standard_normal(6).astype(np.float32),
              "var": rng.uniform(0.5, 2, 6).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"],
                              name="bn", epsilon=1e-5)]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                   "y", [numpy_helper.from_array(a, n) for n, a in arrays.items()], opset=9)
    path = tmp_path / "model" / "conv_bn.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path), save_as_external_data=True, location="weights.bin",
              size_threshold=0)
    assert (path.parent / "weights.bin").stat().st_size > 0
    f64, (reference,), (answer,) = capture("conv_bn", path, tmp_path / "capture")
    assert f64["available"], f64
    assert np.abs(answer - reference).max() < 1e-5 * np.abs(answer).max()
