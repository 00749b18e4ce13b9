"""A small ONNX CNN (Conv, BatchNormalization, Relu, MaxPool, Flatten, Gemm; NCHW 1x3x8x8)
built with onnx.helper at opset 13, so import exercises the upgrade to opset 17: build()
returns (onnx.ModelProto, inputs). Weights and input from fixed numpy seeds."""
FRAMEWORK = "onnx"


def build():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    weights = {"conv_w": weight(4, 3, 3, 3), "conv_b": weight(4), "bn_scale": 1 + weight(4),
               "bn_bias": weight(4), "bn_mean": weight(4), "bn_var": 1 + np.abs(weight(4)),
               "fc_w": weight(10, 64), "fc_b": weight(10)}
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
                         ["bn"], epsilon=1e-5),
        helper.make_node("Relu", ["bn"], ["relu"]),
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="kiln")
    model.ir_version = 7
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    return model, (x,)
