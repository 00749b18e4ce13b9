"""The `light` CNNs the onnx pip package ships (onnx/backend/test/data/light/light_<name>.onnx:
ResNet-50, SqueezeNet, Inception v1, ShuffleNet, DenseNet-121, ...) made into models that
compute something: opset 9, IR version 3, as ONNX ships them, but with real weights.

What onnx ships is a graph without weights: every large parameter is a ConstantOfShape node
that fills its shape (an int64 initializer named <param>__SHAPE) with 0.02, and only small
ones (biases, BatchNormalization statistics) are initializers with the original values. A
network of 0.02s and trained statistics that do not fit them computes nothing meaningful, so
light_model() gives every float parameter seeded values by its role (what consumes it):

- a Conv or Gemm weight: He-scaled normal noise, std sqrt(2 / fan_in);
- a Conv or Gemm bias, BatchNormalization's bias and mean, a per-channel shift (Add): noise
  of std 0.01 to 0.1 around 0; BatchNormalization's scale and variance, a per-channel factor
  (Mul): around 1 (the variance kept positive);

then drops a final Softmax, so the graph's output is the logits (a softmax of large random
logits is almost one-hot, and compares nothing). The ConstantOfShape placeholders become
initializers (listed as graph inputs too, as IR version 3 wants) and their shape tensors go.

Shared by the tests (tests/test_onnx_light.py) and whatever benchmark or zoo module wants the
same files: write_light(name, folder) writes folder/model.onnx."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# the light models that are CNNs kiln should take (the AlexNet/VGG/ZFNet ones work as well)
CNNS = ("resnet50", "squeezenet", "inception_v1", "shufflenet", "densenet121")

# ops a parameter passes through unchanged on its way to the op that gives it its role
PASS_THROUGH = ("Unsqueeze", "Reshape")


def light_path(name: str) -> Path:
    """The installed onnx package's light_<name>.onnx."""
    import onnx
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the installed onnx {onnx.__version__} ships no "
                                f"light model '{name}'")
    return path


def light_model(name: str, seed: int = 0):
    """light_<name>.onnx with seeded weights (see the module's docstring) and no final
    Softmax, checked by onnx's checker."""
    import onnx
    model = onnx.load(str(light_path(name)))
    graph = model.graph
    rng = np.random.default_rng(seed)
    _placeholders_to_initializers(graph)
    consumers = _consumers(graph)
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == onnx.TensorProto.FLOAT:
            role = _role(tensor.name, consumers)
            if role is not None:
                graph.initializer[index].CopyFrom(_seeded(tensor, role, rng))
    _drop_final_softmax(graph)
    onnx.checker.check_model(model)
    return model


def write_light(name: str, folder: Path, seed: int = 0) -> Path:
    """light_model(name, seed) as folder/model.onnx; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(light_model(name, seed).SerializeToString())
    return path


def _placeholders_to_initializers(graph) -> None:
    """Each ConstantOfShape whose shape is an initializer becomes an initializer of the shape
    it would fill (values to be seeded); shape tensors nothing else reads are dropped."""
    from onnx import helper, numpy_helper
    initializers = {t.name: t for t in graph.initializer}
    kept, made = [], []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in initializers:
            shape = numpy_helper.to_array(initializers[node.input[0]])
            value = numpy_helper.to_array(node.attribute[0].t) if node.attribute else \
                np.zeros(1, np.float32)
            made.append(numpy_helper.from_array(np.full(shape, value[0]), node.output[0]))
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(made)
    graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in made)
    read = {name for node in graph.node for name in node.input}
    unread = {t.name for t in graph.initializer if t.name not in read}
    _remove(graph.initializer, unread)
    _remove(graph.input, unread)


def _remove(field, names: set) -> None:
    kept = [item for item in field if item.name not in names]
    del field[:]
    field.extend(kept)


def _consumers(graph) -> dict[str, list]:
    """tensor name -> [(node, input index)] of the nodes that read it."""
    found: dict[str, list] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            found.setdefault(name, []).append((node, index))
    return found


def _role(name: str, consumers: dict) -> tuple | None:
    """(op, input index, node) of the op that gives the parameter its meaning, following it
    through reshapes; None for a tensor nothing reads."""
    readers = consumers.get(name, [])
    if not readers:
        return None
    node, index = readers[0]
    if node.op_type in PASS_THROUGH and index == 0:
        return _role(node.output[0], consumers)
    return node.op_type, index, node


def _seeded(tensor, role: tuple, rng: np.random.Generator):
    from onnx import helper, numpy_helper
    shape = tuple(tensor.dims)
    op, index, node = role
    noise = rng.standard_normal(shape)
    if op in ("Conv", "Gemm") and index == 1:
        transposed = op == "Gemm" and helper.get_attribute_value(
            next((a for a in node.attribute if a.name == "transB"), helper.make_attribute("transB", 0)))
        fan_in = int(np.prod(shape[1:])) if op == "Conv" or transposed else shape[0]
        values = noise * np.sqrt(2.0 / fan_in)
    elif (op, index) in (("Conv", 2), ("Gemm", 2)):
        values = 0.01 * noise
    elif (op, index) in (("BatchNormalization", 2), ("BatchNormalization", 3), ("Add", 1),
                         ("Add", 0), ("Sum", 1)):
        values = 0.1 * noise
    elif (op, index) in (("BatchNormalization", 1), ("Mul", 1), ("Mul", 0)):
        values = 1.0 + 0.1 * noise
    elif (op, index) == ("BatchNormalization", 4):
        values = 1.0 + 0.1 * np.abs(noise)
    else:
        raise ValueError(f"parameter '{tensor.name}' is read by {op} as input {index}: no rule "
                         "for seeding it")
    return numpy_helper.from_array(values.astype(np.float32), tensor.name)


def _drop_final_softmax(graph) -> None:
    """A Softmax that makes a graph output is removed: its input (of the same shape) becomes
    that output."""
    for output in graph.output:
        node = next((n for n in graph.node if output.name in n.output), None)
        if node is None or node.op_type != "Softmax":
            continue
        graph.node.remove(node)
        output.name = node.input[0]
