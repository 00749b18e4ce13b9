"""What every adapter whose models are ONNX graphs needs (onnx_fw.py today; a framework that
exports to ONNX, PaddlePaddle say, tomorrow), public in one place: checking a graph, its
signature with the dynamic dimensions sized (shapes=, the batch default), onnxruntime's
session, the graph with static inputs, the graph upgraded to the opset kiln reads."""
from __future__ import annotations

from pipeline.stage import StageError

# the opset kiln reads graphs at: an older graph is upgraded to it (onnx's version converter),
# and one that names no opset of ONNX's default domain is taken as this
OPSET = 17


def check_model(proto) -> None:
    """A StageError naming what is wrong where the model is invalid. The full check's strict
    shape inference also runs the bodies onnx itself defines for function ops, and some of
    those fail it after a version conversion (MeanVarianceNormalization's: 'One and only one
    of the attributes ... for a Constant node') while iree-import-onnx imports the model: that
    is onnx's fault, not the model's, so the structural check alone decides then."""
    import onnx
    try:
        try:
            onnx.checker.check_model(proto, full_check=True)
        except onnx.shape_inference.InferenceError:
            onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as err:
        raise StageError(f"the ONNX model is invalid: {str(err).splitlines()[0]}") from None


def upgraded(proto):
    """The model at OPSET where it is older, as import reads it (onnx's version converter:
    IREE's ONNX lowering covers 17+, and older BatchNormalization/Split/... forms fail); the
    model itself where it is not."""
    import onnx
    if opset(proto) >= OPSET:
        return proto
    return onnx.version_converter.convert_version(proto, OPSET)


def onnxruntime_errors() -> tuple[type, ...]:
    """The exceptions onnxruntime raises for a model it cannot load or run (Fail,
    NotImplemented, InvalidGraph, InvalidArgument, ...: each derives from Exception alone),
    and RuntimeError (an answer numpy has no type for: "No corresponding Numpy type for
    Tensor Type. bfloat16")."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state
    return (RuntimeError, *(v for v in vars(state).values()
                            if isinstance(v, type) and issubclass(v, Exception)))


def opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), OPSET)


def expose(graph, values) -> None:
    """Make values (ValueInfoProtos) outputs of graph, where they are not already:
    onnxruntime returns only a graph's outputs, so an intermediate value is read by making
    it one (the float64 twin's checks, bisect against the framework)."""
    declared = {value.name for value in graph.output}
    graph.output.extend(value for value in values if value.name not in declared)


def session(data: bytes | str, threads: int = 1, optimize: bool = True):
    import onnxruntime as ort
    options = ort.SessionOptions()
    if not optimize:   # (every node as the graph has it: none fused into another)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3   # errors only: its graph optimizers' warnings are no answer
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _dims(value) -> list | None:
    """A graph value's dims: int when static, the dim_param name when symbolic, None when
    unnamed; None for the whole list when the value declares no shape at all."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tensor.shape.dim]


def signature(proto) -> list[tuple[str, list | None, str]]:
    """(name, dims, numpy dtype) of each graph input the caller feeds."""
    import onnx
    initializers = {i.name for i in proto.graph.initializer}
    return [(value.name, _dims(value),
             onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name)
            for value in proto.graph.input if value.name not in initializers]


def declared_outputs(proto) -> list[list | None]:
    """The graph outputs' shapes as the file declares them (None: a symbolic dimension)."""
    declared = []
    for value in proto.graph.output:
        dims = _dims(value)
        declared.append(None if dims is None else [d if isinstance(d, int) else None
                                                    for d in dims])
    return declared


def sized_signature(model_name: str, signature, shapes: dict):
    """(signature with every dimension a number, notes): shapes= first (a symbolic name sized
    for one input holds for every input that uses it), then a symbolic leading (batch)
    dimension set to 1; any other symbolic dimension left is one error naming all of them."""
    sizes = _known_sizes(model_name, signature, shapes)
    sized, notes, unsized = [], [], []
    for name, dims, dtype in signature:
        if name in shapes:
            sized.append((name, list(shapes[name]), dtype))
        elif dims is None:
            sized.append((name, None, dtype))
            unsized.append((name, None, None))
        else:
            resolved = _size_dims(name, dims, sizes, notes, unsized)
            sized.append((name, resolved, dtype))
    if unsized:
        raise StageError(_unsized_message(model_name, sized, unsized))
    return sized, notes


def _known_sizes(model_name: str, signature, shapes: dict) -> dict:
    """Symbolic dimension key -> (size, why): from shapes=, then batch dimensions as 1."""
    sizes = {}
    for name, dims, _ in signature:
        if name in shapes:
            _check_given_shape(model_name, name, dims, shapes[name])
            for index, dim in enumerate(dims or []):
                if not isinstance(dim, int):
                    sizes.setdefault(_dim_key(name, index, dim),
                                     (shapes[name][index], f"as shapes= gives it for '{name}'"))
    for name, dims, _ in signature:
        if name not in shapes and dims and not isinstance(dims[0], int):
            sizes.setdefault(_dim_key(name, 0, dims[0]), (1, "batch"))
    return sizes


def _size_dims(name: str, dims: list, sizes: dict, notes: list, unsized: list) -> list:
    """One input's dims with known sizes filled in; notes what was chosen, lists the rest."""
    resolved = []
    for index, dim in enumerate(dims):
        if isinstance(dim, int):
            resolved.append(dim)
        elif _dim_key(name, index, dim) in sizes:
            size, why = sizes[_dim_key(name, index, dim)]
            resolved.append(size)
            notes.append(_size_note(name, index, dim, size, why, dims))
        else:
            resolved.append(dim)
            unsized.append((name, index, dim))
    return resolved


def _dim_key(input_name: str, index: int, dim):
    """Dimensions that share a symbolic name share a size; an unnamed one is its own."""
    return dim if isinstance(dim, str) else (input_name, index)


def _label(index: int, dim) -> str:
    return dim if isinstance(dim, str) else f"D{index}"


def _size_note(name, index, dim, size, why, dims) -> str:
    shown = f"'{dim}'" if isinstance(dim, str) else "(unnamed)"
    if why == "batch" and index == 0:
        example = "x".join(["8"] + [str(d) if isinstance(d, int) else _label(i, d)
                                    for i, d in enumerate(dims[1:], 1)])
        return (f"input '{name}': symbolic batch dimension {shown} set to 1; give "
                f"shapes={name}:{example} to choose")
    source = "as the batch dimension of another input" if why == "batch" else why
    return f"input '{name}': symbolic dimension {index} {shown} set to {size}, {source}"


def _check_given_shape(model_name: str, name: str, dims, given) -> None:
    fits = dims is None or (len(dims) == len(given) and all(
        not isinstance(d, int) or d == g for d, g in zip(dims, given)))
    if not fits:
        raise StageError(f"model {model_name}: shapes= gives input '{name}' as "
                         f"{'x'.join(map(str, given))}, but the model declares it {dims}")


def _unsized_message(model_name: str, sized, unsized) -> str:
    """One error for every dimension only the user can size, with the shapes= line to give."""
    listed = []
    for name in dict.fromkeys(n for n, _, _ in unsized):
        where = [f"dimension {i} {_label(i, d)!r}" for n, i, d in unsized
                 if n == name and i is not None]
        listed.append(f"input '{name}' " + (", ".join(where) if where else "(no shape declared)"))
    line, names = [], []
    for name, dims, _ in sized:
        if any(n == name for n, _, _ in unsized):
            parts = ["?"] if dims is None else \
                [str(d) if isinstance(d, int) else _label(i, d) for i, d in enumerate(dims)]
            names += [p for p in parts if not p.isdigit()]
            line.append(f"{name}:{'x'.join(parts)}")
    return (f"model {model_name}: symbolic dimensions kiln cannot size for you: "
            f"{'; '.join(listed)}. Give their sizes with shapes=\"{';'.join(line)}\" "
            f"({', '.join(dict.fromkeys(names))} replaced by numbers) on the command line, "
            "or 'shapes:' in the model's entry in targets.yaml")


def with_static_inputs(proto, arrays: dict):
    """The model with each graph input's unsized dimensions set to the captured array's, then
    shape inference so outputs and intermediate values follow: import and iree-compile then
    see static shapes. A model whose inputs are all static is returned untouched."""
    import onnx
    changed = False
    for value in proto.graph.input:
        if value.name not in arrays:
            continue
        shape = value.type.tensor_type.shape
        if not value.type.tensor_type.HasField("shape"):
            shape.SetInParent()
        while len(shape.dim) < arrays[value.name].ndim:
            shape.dim.add()
        for dim, size in zip(shape.dim, arrays[value.name].shape):
            if not dim.HasField("dim_value"):
                dim.dim_value = size  # dim_value and dim_param are a oneof: this clears the name
                changed = True
    return onnx.shape_inference.infer_shapes(proto, data_prop=True) if changed else proto
