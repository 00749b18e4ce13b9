"""The float64 twin of an ONNX graph: the same computation with every float32 made float64,
run for capture's reference64.npz, and the checks that it is the same computation.

The twin is built from the graph as kiln compiles it (upgraded to common.OPSET, as import
does: onnx's reference evaluator reads some old forms wrongly, BatchNormalization-9 among
them), with float32 initializers, Constant values (value_float(s) included), graph inputs and
outputs and Cast/dtype targets made float64. An input or output ONNX defines as float32 only
(Resize's scales, QuantizeLinear's scale, ...) keeps float32 behind a Cast: the op is defined
in float32, so its float32 is the same computation.

onnxruntime runs the twin where it has a float64 kernel for every node; else onnx's reference
evaluator (numpy) does, with kiln's own kernels for the ops whose float64 it gets wrong. The
evaluator is a second implementation, so its reading of each node is checked: every node is
run alone on the float32 run's own inputs (onnxruntime's, every intermediate kept), and its
float64 output must be within LOCAL_RTOL of onnxruntime's float32 one (rounding of one op is
~1e-6). A node that fails, or that neither runtime can run in float64, is named in the
NoFloat64 that becomes capture's f64.why; so is the first node where a twin whose answer is
off the reference parts from the float32 run. (docs/DESIGN.md §10.7)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:   # (numpy is imported where used: planning imports none)
    import numpy as np

from . import onnx_common as common
from .base import DISAGREE_RTOL, NoFloat64, disagreement

# a node's float64 output on the float32 run's inputs further than this (relative to its
# largest value) from onnxruntime's float32 output reads the op otherwise: one op's float32
# rounding is ~1e-6 of the scale, an evaluator's misreading (its LRN normalizing channel 0
# only, in onnx 1.23) 1e-3 and more
LOCAL_RTOL = 1e-4
# below this a value is noise (float32's denormals, flushed by one runtime, not the other)
TINY = 1e-30
# what the twin names the float32 side of a Cast it inserts
F32_SUFFIX = "__kiln_f32"


def float64_answer(data: bytes, inputs: list, reference: list) -> list:
    """The model's outputs computed in float64 by its twin, checked as the module's docstring
    says; NoFloat64(why, naming the node) where there is none."""
    import numpy as np
    import onnx
    proto = onnx.load_from_string(data)
    try:
        proto = common.upgraded(proto)
    except Exception:   # (import then says why; the twin may still run at the old opset)
        pass
    try:
        typed = onnx.shape_inference.infer_shapes(proto)
    except Exception:   # (onnxruntime may still run it; the types then come from the graph's own)
        typed = proto
    twin = make_twin(typed)
    names = [name for name, _, _ in common.signature(typed)]
    feeds32 = dict(zip(names, inputs))
    feeds64 = {name: a.astype(np.float64) if a.dtype == np.float32 else a
               for name, a in feeds32.items()}
    answer, refused = _run_in_onnxruntime(twin, feeds64)
    if answer is None:
        return _run_in_evaluator(typed, twin, feeds32, feeds64, reference, refused)
    off = disagreement(answer, reference)
    if off:
        raise NoFloat64(_parting_message(off, _first_parting(
            typed, feeds32, lambda: _onnxruntime_intermediates(twin, feeds64))))
    return answer


# --- building the twin -------------------------------------------------------------------

def make_twin(typed):
    """A float64 copy of a model whose value types are inferred (typed: shape inference's
    answer, which the casts around float32-only inputs and outputs are decided from)."""
    import onnx
    twin = onnx.ModelProto()
    twin.CopyFrom(typed)
    opsets = {o.domain or "": o.version for o in twin.opset_import}
    types = _value_types(typed.graph)
    _graph_to_double(twin.graph, opsets, types)
    for function in twin.functions:   # (model-local: typeless, so no Casts are decided there)
        for node in function.node:
            _attributes_to_double(node, opsets, {})
    return twin


def _value_types(graph) -> dict[str, int]:
    """name -> elem_type of every value (subgraphs' included) the graph declares."""
    from onnx import AttributeProto
    types = {t.name: t.data_type for t in graph.initializer}
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    for node in graph.node:
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.type == AttributeProto.GRAPH else \
                list(attribute.graphs) if attribute.type == AttributeProto.GRAPHS else []
            for subgraph in subgraphs:
                types.update(_value_types(subgraph))
    return types


def _graph_to_double(graph, opsets: dict, types: dict) -> None:
    """In place: FLOAT initializers, values, Constant values and Cast/dtype targets become
    DOUBLE (float16 and bfloat16 stay); inputs and outputs ONNX defines as FLOAT only keep it
    through Casts. Value types but the graph's inputs and outputs are dropped: the runtimes
    infer them, and those of a renamed or cast value would be wrong."""
    from onnx import TensorProto
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            graph.initializer[index].CopyFrom(_double_tensor(tensor))
    for value in (*graph.input, *graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    del graph.value_info[:]
    nodes = []
    for node in graph.node:
        _attributes_to_double(node, opsets, types)
        nodes += _with_float32_formals(node, opsets, types)
    del graph.node[:]
    graph.node.extend(nodes)


def _attributes_to_double(node, opsets: dict, types: dict) -> None:
    import numpy as np
    from onnx import AttributeProto, TensorProto, helper
    for attribute in node.attribute:
        if attribute.type == AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT:
            attribute.t.CopyFrom(_double_tensor(attribute.t))
        elif attribute.type == AttributeProto.SPARSE_TENSOR and \
                attribute.sparse_tensor.values.data_type == TensorProto.FLOAT:
            attribute.sparse_tensor.values.CopyFrom(_double_tensor(attribute.sparse_tensor.values))
        elif attribute.type == AttributeProto.GRAPH:
            _graph_to_double(attribute.g, opsets, types)
        elif attribute.type == AttributeProto.GRAPHS:
            for subgraph in attribute.graphs:
                _graph_to_double(subgraph, opsets, types)
        elif attribute.name in ("to", "dtype") and attribute.i == TensorProto.FLOAT:
            attribute.i = TensorProto.DOUBLE
    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        # value_float(s) make a float32 tensor: the same values as a DOUBLE tensor
        for attribute in list(node.attribute):
            if attribute.name in ("value_float", "value_floats"):
                values = np.asarray(helper.get_attribute_value(attribute), np.float64)
                node.attribute.remove(attribute)
                node.attribute.append(helper.make_attribute(
                    "value", helper.make_tensor("", TensorProto.DOUBLE, values.shape,
                                                values.ravel().tolist())))
    elif node.op_type in ("RandomNormal", "RandomUniform") and \
            not any(a.name == "dtype" for a in node.attribute):   # (float32 by default)
        node.attribute.append(helper.make_attribute("dtype", TensorProto.DOUBLE))


def _double_tensor(tensor):
    import numpy as np
    from onnx import numpy_helper
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name)


def _with_float32_formals(node, opsets: dict, types: dict) -> list:
    """[Casts to FLOAT, node, Casts to DOUBLE]: each FLOAT input or output of the node that
    its schema allows only as float32 (not double) crosses a Cast, the node then computes as
    ONNX defines it. A node of a domain onnx has no schema for is left as it is."""
    from onnx import TensorProto, helper
    allowed = _formal_types(node, opsets)
    if allowed is None:
        return [node]
    before, after = [], []
    for index, name in enumerate(node.input):
        if name and types.get(name) == TensorProto.FLOAT and _float32_only(allowed[0], index):
            node.input[index] = name + F32_SUFFIX + f"_{node.name or node.output[0]}_{index}"
            before.append(helper.make_node("Cast", [name], [node.input[index]],
                                           to=TensorProto.FLOAT))
    for index, name in enumerate(node.output):
        if name and types.get(name) == TensorProto.FLOAT and _float32_only(allowed[1], index):
            node.output[index] = name + F32_SUFFIX
            after.append(helper.make_node("Cast", [node.output[index]], [name],
                                          to=TensorProto.DOUBLE))
    return [*before, node, *after]


def _formal_types(node, opsets: dict):
    """(per input, per output: the set of types the schema allows, the last repeated where
    variadic), or None where onnx has no schema for the node's op."""
    from onnx import defs
    domain = "" if node.domain == "ai.onnx" else node.domain
    try:
        schema = defs.get_schema(node.op_type, opsets.get(domain, common.OPSET), domain)
    except defs.SchemaError:
        return None
    constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    return tuple([constraints.get(formal.type_str, {formal.type_str}) for formal in formals]
                 for formals in (schema.inputs, schema.outputs))


def _float32_only(allowed: list, index: int) -> bool:
    if not allowed:
        return False
    types = allowed[min(index, len(allowed) - 1)]
    return "tensor(float)" in types and "tensor(double)" not in types


# --- running it ----------------------------------------------------------------------------

def _run_in_onnxruntime(twin, feeds64: dict) -> tuple[list | None, str]:
    """(the twin's outputs, "") or (None, onnxruntime's first line on why it cannot run it:
    it names the node it has no float64 kernel for)."""
    import numpy as np
    try:
        session = common.session(twin.SerializeToString())
        return [np.asarray(a) for a in session.run(None, feeds64)], ""
    except common.onnxruntime_errors() as err:
        return None, (str(err).strip().splitlines() or [type(err).__name__])[0]


def _run_in_evaluator(typed, twin, feeds32: dict, feeds64: dict, reference: list,
                      refused: str) -> list:
    """The twin's outputs by onnx's reference evaluator, each node checked against
    onnxruntime's float32 run of it (the module's docstring)."""
    import numpy as np
    from onnx.reference import ReferenceEvaluator
    try:
        evaluator = ReferenceEvaluator(twin, new_ops=exact_reference_ops())
    except Exception as err:   # an op it has no kernel for
        unknown = _node_the_evaluator_lacks(twin)
        if unknown:
            raise NoFloat64(f"onnx's reference evaluator has no kernel for node {unknown}, and "
                            f"onnxruntime cannot run the float64 copy of the graph "
                            f"({refused[:200]}): no float64 answer") from None
        raise NoFloat64(f"onnxruntime cannot run the float64 copy of the graph "
                        f"({refused[:200]}), nor can onnx's reference evaluator load it "
                        f"({type(err).__name__}: {str(err)[:200]})") from None
    try:
        results64 = evaluator.run(None, feeds64, intermediate=True)
    except Exception as err:   # an op the evaluator cannot run in float64 as the graph uses it
        failing = _node_the_evaluator_fails(twin, feeds64)
        where = f" node {failing}" if failing else " the graph"
        raise NoFloat64(f"onnx's reference evaluator cannot run{where} in float64 "
                        f"({type(err).__name__}: {str(err)[:200]}), and onnxruntime cannot run "
                        f"the float64 copy of the graph ({refused[:200]}): no float64 "
                        "answer") from None
    answer = [np.asarray(results64[value.name]) for value in twin.graph.output]
    try:
        results32 = _float32_intermediates(typed, feeds32)
    except common.onnxruntime_errors() as err:
        raise NoFloat64(f"onnxruntime cannot run the float32 graph with its intermediate values "
                        f"as outputs ({str(err).strip()[:200]}), so the nodes onnx's reference "
                        "evaluator runs in float64 cannot be checked: no float64 answer") from None
    misread = _first_misread(twin, results32, results64)
    if misread:
        raise NoFloat64(f"onnxruntime has no float64 kernel for the graph ({refused[:120]}), "
                        f"and onnx's reference evaluator computes {misread}: no float64 answer")
    off = disagreement(answer, reference)
    if off:
        raise NoFloat64(_parting_message(off, _first_parting(typed, feeds32, lambda: results64)))
    return answer


def _node_the_evaluator_lacks(twin) -> str:
    """The first node of the main graph that onnx's reference evaluator cannot load alone (it
    has no kernel for its op), described, or "". A node of a model-local function, or with a
    subgraph (whose body reads the outer graph), is not tried alone."""
    from onnx.reference import ReferenceEvaluator
    opsets = {o.domain or "": o.version for o in twin.opset_import}
    functions = {(f.domain, f.name) for f in twin.functions}
    for node in twin.graph.node:
        if (node.domain, node.op_type) in functions or _has_subgraph(node):
            continue
        try:
            ReferenceEvaluator(node, opsets=opsets, new_ops=exact_reference_ops())
        except Exception:
            return _described(node)
    return ""


def _node_the_evaluator_fails(twin, feeds64: dict) -> str:
    """The first node of the main graph that onnx's reference evaluator fails on when the
    twin's nodes run one at a time, in order, described; "" where none does, or where a node
    with a subgraph (whose body reads the outer graph, so it cannot run alone) comes first."""
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator
    opsets = {o.domain or "": o.version for o in twin.opset_import}
    values = {t.name: numpy_helper.to_array(t) for t in twin.graph.initializer}
    values.update(feeds64)
    for node in twin.graph.node:
        if _has_subgraph(node):
            return ""
        try:
            outputs = ReferenceEvaluator(node, opsets=opsets, new_ops=exact_reference_ops()).run(
                None, {name: values.get(name) for name in node.input if name})
        except Exception:
            return _described(node)
        values.update(zip(node.output, outputs))
    return ""


def _described(node) -> str:
    op = f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
    return f"'{node.name or node.output[0]}' ({op})"


def _float32_intermediates(typed, feeds32: dict) -> dict:
    """Every float value of the float32 graph (as kiln compiles it) by onnxruntime, with the
    initializers and inputs: what each node of the twin is checked against."""
    import numpy as np
    import onnx
    exposed = onnx.ModelProto()
    exposed.CopyFrom(typed)
    common.expose(exposed.graph, (value for value in typed.graph.value_info
                                  if value.type.HasField("tensor_type")))
    session = common.session(exposed.SerializeToString())
    names = [output.name for output in session.get_outputs()]
    results = {t.name: onnx.numpy_helper.to_array(t) for t in typed.graph.initializer}
    results.update(feeds32)
    results.update(zip(names, (np.asarray(a) for a in session.run(None, feeds32))))
    return results


def _onnxruntime_intermediates(twin, feeds64: dict) -> dict:
    """Every value of the twin onnxruntime computes (it can run it), by name."""
    import numpy as np
    import onnx
    exposed = onnx.shape_inference.infer_shapes(twin)
    common.expose(exposed.graph, list(exposed.graph.value_info))
    session = common.session(exposed.SerializeToString())
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, (np.asarray(a) for a in session.run(None, feeds64))))


# --- which node ------------------------------------------------------------------------------

def _first_misread(twin, results32: dict, results64: dict) -> str:
    """The first node of the twin's main graph that, run alone in onnx's reference evaluator on
    the float32 run's inputs (made float64 where the twin has float64), computes an output
    further than LOCAL_RTOL from onnxruntime's float32 one, described; "" if none. Nodes
    with subgraphs (their bodies read the outer graph) and kiln's own Casts are not run."""
    import numpy as np
    from onnx.reference import ReferenceEvaluator
    opsets = {o.domain or "": o.version for o in twin.opset_import}
    for node in twin.graph.node:
        if F32_SUFFIX in "".join(node.output) or _has_subgraph(node) or not any(
                _is_float(results32.get(name)) for name in node.output):
            continue
        inputs = [_float32_value(name, results32, results64) for name in node.input]
        try:
            local = ReferenceEvaluator(node, opsets=opsets, new_ops=exact_reference_ops()).run(
                None, dict((name, value) for name, value in zip(node.input, inputs) if name))
        except Exception:   # (one that cannot run alone: the whole-graph check still holds)
            continue
        for name, value in zip(node.output, local):
            off = _off(np.asarray(value), results32.get(name))
            if off:
                return (f"node {_described(node)} otherwise than onnxruntime: on the float32 "
                        f"run's inputs its output '{name}' is {off}")
    return ""


def _has_subgraph(node) -> bool:
    from onnx import AttributeProto
    return any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute)


def _is_float(value) -> bool:
    import numpy as np
    return value is not None and np.asarray(value).dtype.kind == "f"


def _float32_value(name: str, results32: dict, results64: dict):
    """The float32 run's value of a twin's input, in the twin's type for it (float64 where the
    twin made it so; kiln's Casts to float32 read the value they cast), or the twin's own
    value where the float32 run does not have it."""
    import numpy as np
    if not name:
        return None
    wide = results64.get(name)
    narrow = results32.get(name.split(F32_SUFFIX)[0])
    if narrow is None or wide is None:
        return wide
    narrow = np.asarray(narrow)
    return narrow.astype(np.asarray(wide).dtype) if narrow.dtype == np.float32 else narrow


def _off(wide: np.ndarray, narrow, rtol: float = LOCAL_RTOL) -> str:
    """How far wide is from narrow, described, where beyond rtol of wide's largest finite
    value; "" where within it (or not comparable)."""
    import numpy as np
    if not _is_float(narrow) or wide.dtype.kind != "f" or wide.shape != np.shape(narrow):
        return ""
    narrow = np.asarray(narrow)
    both = np.isfinite(wide) & np.isfinite(narrow)
    scale = float(np.abs(wide[both]).max(initial=0.0))
    off = float(np.abs(wide[both].astype(np.float64) - narrow[both]).max(initial=0.0))
    if off <= rtol * scale + TINY:
        return ""
    return f"{off:.3g} from the float32 run's (more than {rtol:g} of its scale {scale:.3g})"


def _first_parting(typed, feeds32: dict, twin_values) -> str:
    """The first node (in graph order) where the twin's output (twin_values(): its values by
    name) is further than DISAGREE_RTOL from the float32 run's, described; "" if none, or
    where either run cannot give its intermediate values (the answer is refused anyway)."""
    import numpy as np
    try:
        results32, results64 = _float32_intermediates(typed, feeds32), twin_values()
    except common.onnxruntime_errors():
        return ""
    for node in typed.graph.node:
        for name in node.output:
            if name in results64 and name in results32:
                off = _off(np.asarray(results64[name]), results32[name], DISAGREE_RTOL)
                if off:
                    return f"node {_described(node)}: its output '{name}' is {off}"
    return ""


def _parting_message(off: str, node: str) -> str:
    where = f"; the float64 run first parts from the float32 one at {node}" if node else ""
    return off.replace(": not the same computation", where + ": not the same computation")


# --- kiln's kernels for onnx's reference evaluator -----------------------------------------

def exact_reference_ops() -> list:
    """Ops of onnx 1.23's reference evaluator, as a float64 answer needs them:
    - GatherElements: onnx's reshapes its answer wrongly where the indices are smaller than
      the data along the other axes (RoBERTa's and BERT-base's position ids: data 1x64,
      indices 1x16, "cannot reshape array of size 1"), which ONNX allows and onnxruntime
      runs; numpy's take_along_axis is the op itself;
    - Erf: onnx's rounds every value to float32 (np.vectorize(erf, otypes=["f"])), which
      would make each GELU of a float64 run a float32 one;
    - LRN: onnx's loops over the batch dimension where it means the channels, so only
      channel 0 is normalized (Inception v1's and AlexNet's LRN);
    - MaxPool, AveragePool: onnx's loop in Python over every output element (Inception v1's
      13 MaxPools took 20 s of its 21 s float64 run, DenseNet-121's 3 AveragePools a third
      of its); numpy's sliding windows where the pool is explicit (pads, no auto_pad) and
      MaxPool's indices are not asked for, onnx's otherwise."""
    from math import erf

    import numpy as np
    from onnx.reference.op_run import OpRun
    from onnx.reference.ops.op_max_pool import MaxPool as OnnxMaxPool
    from onnx.reference.ops.op_pool_common import CommonPool

    class GatherElements(OpRun):   # (the evaluator matches an op by its class name)
        def _run(self, data, indices, axis=None):
            axis = (axis or 0) % data.ndim
            indices = np.where(indices < 0, indices + data.shape[axis], indices)
            sliced = data[tuple(slice(0, n) if d != axis else slice(None)
                                for d, n in enumerate(indices.shape))]
            return (np.take_along_axis(sliced, indices, axis=axis),)

    class Erf(OpRun):
        def _run(self, x):
            return (np.vectorize(erf, otypes=[np.float64])(x).astype(x.dtype),)

    class LRN(OpRun):
        def _run(self, x, alpha=None, beta=None, bias=None, size=None):
            return (local_response_norm(x, alpha, beta, bias, size),)

    class MaxPool(OnnxMaxPool):
        def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None,
                 pads=None, storage_order=None, strides=None):
            if auto_pad in (None, "NOTSET") and len(self.onnx_node.output) == 1:
                return (max_pool(x, kernel_shape, strides, pads, dilations, ceil_mode),)
            return super()._run(x, auto_pad, ceil_mode, dilations, kernel_shape, pads,
                                storage_order, strides)

    class AveragePool(CommonPool):
        def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None,
                 pads=None, strides=None, count_include_pad=None):
            if auto_pad in (None, "NOTSET"):
                return (average_pool(x, kernel_shape, strides, pads, dilations, ceil_mode,
                                     count_include_pad),)
            return CommonPool._run(self, "AVG", count_include_pad, x, auto_pad=auto_pad,
                                   ceil_mode=ceil_mode, dilations=dilations,
                                   kernel_shape=kernel_shape, pads=pads, strides=strides)

    return [GatherElements, Erf, LRN, MaxPool, AveragePool]


def max_pool(x: np.ndarray, kernel: list, strides, pads, dilations, ceil_mode) -> np.ndarray:
    """ONNX's MaxPool with explicit pads (padding never wins)."""
    import numpy as np
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    windows, spatial = _pool_windows(x, kernel, strides, pads, dilations, ceil_mode, lowest)
    return windows.max(axis=tuple(range(-spatial, 0))).astype(x.dtype)


def average_pool(x: np.ndarray, kernel: list, strides, pads, dilations, ceil_mode,
                 count_include_pad) -> np.ndarray:
    """ONNX's AveragePool with explicit pads: each window's sum over the elements it counts,
    the input's (and the pads' where count_include_pad), never those past the pads that
    ceil_mode's last window reaches."""
    import numpy as np
    spatial = x.ndim - 2
    pads = list(pads or [0] * 2 * spatial)
    windows, _ = _pool_windows(x, kernel, strides, pads, dilations, ceil_mode, 0)
    ones = np.ones((1, 1, *x.shape[2:]), x.dtype)
    counted = np.pad(ones, [(0, 0), (0, 0)] + list(zip(pads[:spatial], pads[spatial:])),
                     constant_values=1) if count_include_pad else ones
    shift = [0] * 2 * spatial if count_include_pad else pads
    counts, _ = _pool_windows(counted, kernel, strides, shift, dilations, ceil_mode, 0,
                              sized_as=(x.shape, pads))
    axes = tuple(range(-spatial, 0))
    return (windows.sum(axis=axes) / counts.sum(axis=axes)).astype(x.dtype)


def _pool_windows(x: np.ndarray, kernel: list, strides, pads, dilations, ceil_mode, fill,
                  sized_as=None):
    """(x's pooling windows, as a view [N, C, *out, *kernel], and the spatial rank): x padded
    with fill, output sizes as ONNX defines them (ceil_mode's last window must start inside
    the input or its left pad). sized_as: (shape, pads) the output sizes are worked out from,
    where not x's own (a mask already padded)."""
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view
    spatial = x.ndim - 2
    strides = list(strides or [1] * spatial)
    dilations = list(dilations or [1] * spatial)
    pads = list(pads or [0] * 2 * spatial)
    shape, size_pads = sized_as or (x.shape, pads)
    widths, sizes, ends = [], [], []
    for axis in range(spatial):
        width = (kernel[axis] - 1) * dilations[axis] + 1
        span = shape[2 + axis] + size_pads[axis] + size_pads[spatial + axis] - width
        size = (-(-span // strides[axis]) if ceil_mode else span // strides[axis]) + 1
        if ceil_mode and (size - 1) * strides[axis] >= shape[2 + axis] + size_pads[axis]:
            size -= 1
        widths.append(width)
        sizes.append(size)
        ends.append(max(0, (size - 1) * strides[axis] + width - x.shape[2 + axis] - pads[axis]))
    padded = np.pad(x, [(0, 0), (0, 0)] + list(zip(pads[:spatial], ends)), constant_values=fill)
    windows = sliding_window_view(padded, widths, axis=tuple(range(2, 2 + spatial)))
    return windows[(slice(None), slice(None))
                   + tuple(slice(0, (n - 1) * s + 1, s) for n, s in zip(sizes, strides))
                   + tuple(slice(None, None, d) for d in dilations)], spatial


def local_response_norm(x: np.ndarray, alpha: float, beta: float, bias: float,
                        size: int) -> np.ndarray:
    """ONNX's LRN: x / (bias + alpha / size * sum of x**2 over the channels c - floor((size -
    1) / 2) .. c + ceil((size - 1) / 2)) ** beta, in x's type."""
    import numpy as np
    channels = x.shape[1]
    low, high = (size - 1) // 2, -(-(size - 1) // 2)
    padded = np.pad(np.square(x), [(0, 0), (low, high)] + [(0, 0)] * (x.ndim - 2))
    square_sum = sum(padded[:, k:k + channels] for k in range(size))
    return (x / (bias + alpha / size * square_sum) ** beta).astype(x.dtype)
