"""ONNX adapter: an onnx.ModelProto (or a user's .onnx file), onnxruntime reference, IREE's
own ONNX importer (the one behind iree-import-onnx) to the torch dialect.

A models/ file's build() returns (onnx.ModelProto, inputs): the model, e.g. from onnx.helper
or torch.onnx.export, and a tuple of numpy example inputs in the graph's input order. build()
seeds its own weights and inputs (numpy default_rng).

A user's .onnx file (model=PATH, or `file:` in targets.yaml) may bring, beside itself:
- external data files (`save_as_external_data`): every tensor's `location`, relative to the
  model's directory (an absolute location, or one that climbs out with '..', is refused);
- the ONNX test-data convention: `test_data_set_0/input_N.pb` (onnx.TensorProto files) are its
  inputs when the user gave none, and `output_N.pb` its expected outputs, which every target
  is compared with beside onnxruntime's answer, or alone where onnxruntime cannot run the
  model or disagrees with them (only the first test_data_set_*, in natural order, is read).
These companions' content enters the capture key like the model's own.

Its inputs are, first to last: the user's (inputs=, `inputs:`), the test data, or seeded ones
from the graph inputs (initializers listed as inputs by old exporters are skipped). A
symbolic leading (batch) dimension is set to 1, with a note; shapes=name:8x3x32x32 (or
`shapes:`) sizes any input, and a symbolic name sized for one input sizes it everywhere.
Any other symbolic dimension left unsized is an error that names every one of them.

Capture writes model.onnx, the one file later stages read: external data inlined, graph inputs
fixed to the captured inputs' shapes (then shape inference), deterministic bytes. So import
and iree-compile see static shapes. A model over protobuf's 2 GB limit once inlined is refused.

Import does what iree-import-onnx does: upgrade to opset 17 when the model is older (IREE's
ONNX lowering covers 17+; older BatchNormalization/Split/... forms fail), full checker, shape
inference with data propagation, then onnx_importer. The reference runs on onnxruntime's CPU
provider with one thread, so reference.npz is the same bytes on every build.
"""
from __future__ import annotations

import fnmatch
import mmap
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # (numpy is imported where used: planning imports none)
    import numpy as np

from pipeline.stage import ConfigError, ModelSpec, StageError

from . import onnx_common as common
from . import onnx_twin as twin
from .base import Framework, Intermediate, NoFloat64, NoIntermediates, Traced
from .factory import build_model
from .inputs import model_inputs

# onnxruntime against a model's own test_data_set_*/output_*.pb: those files were written by
# whatever produced the model (another runtime, another machine), so allow float noise
TEST_DATA_ATOL, TEST_DATA_RTOL = 1e-4, 1e-3
TEST_DATA_GLOB = "test_data_set_*"


class Onnx(Framework):
    name = "onnx"
    extra = "onnx"
    modules = ("onnx", "onnxruntime")
    dists = ("onnx", "onnxruntime")
    packages = ("onnx", "onnxruntime", "iree.compiler")   # (IREE's ONNX importer)
    builds_on = ("onnx_common", "onnx_twin")
    suffixes = (".onnx",)
    input_type = "onnx"
    captured = ("model.onnx",)
    serialized = "model.onnx"

    def companions(self, path: Path) -> dict[str, Path]:
        """External data files (role data:<location>) and the first test-data set's files
        (role test_data:<path relative to the model's directory>)."""
        path = Path(path)
        # (each file is path.parent / <set> / <name>: its role names those two)
        roles = {f"test_data:{f.parent.name}/{f.name}": f for f in _test_data_files(path.parent)}
        if not _may_keep_data_outside(path):
            return roles   # (no parse: importing onnx alone costs a second of a cold plan)
        try:
            proto = _load_proto(path)
        except (ImportError, StageError):
            return roles  # capture says what is wrong (not installed, not an ONNX file)
        try:
            for tensor, location, data_file in _external_data(proto, path.parent):
                if not data_file.is_file():
                    raise StageError(f"tensor '{tensor.name}' keeps its data in '{location}', "
                                     f"which is not in {path.parent}")
                roles[f"data:{location}"] = data_file
        except StageError as err:  # found while planning: a configuration error
            raise ConfigError(f"model {path}: {err}") from None
        return roles

    def trace(self, model: ModelSpec) -> Traced:
        import onnx
        notes, test_outputs = [], None
        if model.factory:
            proto, inputs = build_model(model, lambda m: isinstance(m, onnx.ModelProto),
                                        "onnx.ModelProto")
        else:  # a user's .onnx file
            path = Path(model.sources["model"])
            proto = _load_with_data(path)
            inputs, test_outputs, notes = _file_inputs(model, proto, path.parent)
        names = [name for name, _, _ in common.signature(proto)]
        self.check_input_count(model, "the graph", names, inputs)
        declared = common.declared_outputs(proto)
        _require_one_file(proto, model.name)
        proto = common.with_static_inputs(proto, dict(zip(names, inputs)))
        data = proto.SerializeToString(deterministic=True)
        feeds = dict(zip(names, inputs))
        if test_outputs is None:
            return Traced(artifact=data, inputs=inputs,
                          reference=common.session(data).run(None, feeds),
                          notes=notes, declared_outputs=declared)
        return Traced(data, inputs, notes=notes, declared_outputs=declared,
                      **_answers(model.name, data, feeds, len(declared), *test_outputs, notes))

    def reference64(self, model: ModelSpec, traced: Traced) -> list:
        """The graph's float64 twin (stages/frameworks/onnx_twin.py) on the inputs cast to
        float64: onnxruntime where it has every float64 kernel, else onnx's reference
        evaluator with each node checked against onnxruntime's float32 run of it."""
        if traced.reference_from not in (None, "onnxruntime"):
            raise NoFloat64(f"the reference is {traced.reference_from}, not onnxruntime's run")
        if traced.expected_from:
            # a test case's own answer is the verdict, within atol/rtol as ONNX's runner
            # judges it; a float64 run of every case of a 1,000-case suite would be pure cost
            raise NoFloat64(f"the model brings its own expected outputs ({traced.expected_from}),"
                            " judged within atol/rtol as ONNX's test runner does")
        return twin.float64_answer(traced.artifact, traced.inputs, traced.reference)

    # serialize: capture's model.onnx is the interchange file, copied under the fixed name

    def import_mlir(self, serialized_file: Path, mlir_file: Path) -> None:
        import onnx
        from iree.compiler import ir
        from iree.compiler.extras import onnx_importer

        from stages.mlir import write_stripped
        proto = onnx.load(str(serialized_file), load_external_data=False)
        proto = common.upgraded(proto)
        common.check_model(proto)
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        info = onnx_importer.ModelInfo(proto)
        module = info.create_module(context=ir.Context())
        onnx_importer.NodeImporter.define_function(info.main_graph, module.operation).import_all()
        module.operation.verify()
        write_stripped(module, mlir_file)

    def intermediates(self, capture_dir: Path, inputs: list) -> list[Intermediate]:
        """Every node's output as onnxruntime computes it, each made a graph output of a copy
        of capture's model.onnx (in the graph's node order, which ONNX requires to be an
        execution order), graph optimizations off so that no node is fused away
        (docs/DESIGN.md §10.8). A QuantizeLinear's or DequantizeLinear's output carries the
        scale and zero point of its codes."""
        import numpy as np
        import onnx
        proto = onnx.shape_inference.infer_shapes(
            onnx.load_from_string((capture_dir / self.captured[0]).read_bytes()))
        graph = proto.graph
        typed = {v.name: v for v in (*graph.value_info, *graph.input, *graph.output)}
        # (a Constant node computes nothing: its value is the graph's, not an op's result)
        produced = [(node, name) for node in graph.node if node.op_type != "Constant"
                    for name in node.output
                    if name in typed and typed[name].type.HasField("tensor_type")]
        if not produced:
            raise NoIntermediates("shape inference typed none of the graph's node outputs")
        common.expose(graph, [typed[name] for _, name in produced])
        names = [name for name, _, _ in common.signature(proto)]
        session = common.session(proto.SerializeToString(), optimize=False)
        wanted = [name for _, name in produced]
        values = dict(zip(wanted, session.run(wanted, dict(zip(names, inputs)))))
        constants = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
        return [Intermediate(name, node.op_type, np.asarray(values[name]),
                             *_quantized_by(node, constants)) for node, name in produced]

    timing_threads = "onnxruntime intra_op_num_threads, inter-op 1"

    def runner(self, capture_dir: Path, inputs: list, threads: int):
        # onnxruntime's CPU provider, as for the reference, on capture's model.onnx
        import onnx
        data = (capture_dir / self.captured[0]).read_bytes()
        names = [name for name, _, _ in common.signature(onnx.load_from_string(data))]
        session, feeds = common.session(data, threads), dict(zip(names, inputs))
        return lambda: session.run(None, feeds)


def _quantized_by(node, constants: dict) -> tuple[float | None, int | None]:
    """(scale, zero point) of a QuantizeLinear node's output (or the codes a DequantizeLinear
    reads) where both are per-tensor constants, else (None, None): compared in steps of it."""
    if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or \
            node.input[1] not in constants:
        return None, None
    scale = constants[node.input[1]]
    zero = constants.get(node.input[2]) if len(node.input) > 2 else None
    if scale.size != 1 or (zero is not None and zero.size != 1):
        return None, None
    return float(scale.reshape(())), int(zero.reshape(())) if zero is not None else 0


def _natural(path: Path) -> list:
    """Sort key: input_2.pb before input_10.pb."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


# --- loading a user's file and its external data --------------------------------------

def _load_proto(path: Path):
    """The model without its external data (that is read, checked, by _load_with_data)."""
    import onnx
    from google.protobuf.message import DecodeError
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError) as err:
        raise StageError(f"{path} is not an ONNX model onnx can read ({err})") from None
    if not proto.HasField("graph"):   # (no bytes, or other protobuf: both decode, to nothing)
        why = "the file is empty" if path.stat().st_size == 0 else "it holds no graph"
        raise StageError(f"{path} is not an ONNX model: {why}")
    return proto


# a TensorProto whose data lives in another file has data_location (field 14, a varint) set to
# EXTERNAL (1), which protobuf writes as these two bytes (a tag and a value, each the one
# byte of its shortest encoding, the only one protobuf's writers use)
EXTERNAL_MARK = b"\x70\x01"


def _may_keep_data_outside(path: Path) -> bool:
    """False when no tensor in the file can keep its data in another file: the bytes that
    say so are nowhere in it. True when they are (or may be: an empty or unreadable file,
    which _load_proto then names), and the protobuf must be read to know."""
    try:
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(EXTERNAL_MARK) >= 0
    except (OSError, ValueError):   # (mmap refuses an empty file with ValueError)
        return True


def _external_data(proto, model_dir: Path) -> list[tuple[object, str, Path]]:
    """(tensor, location, file) for every tensor whose data lives outside the model
    file. Only files under the model's own directory are read: a location is written by
    whoever produced the file, and must not reach anything else on this machine."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data
    found = []
    for tensor in _get_all_tensors(proto):  # initializers and tensors in node attributes
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        if not location or os.path.isabs(location) or ".." in Path(location).parts:
            raise StageError(f"tensor '{tensor.name}' keeps its data at '{location}', which is "
                             f"not a file beside the model: external data must be a relative "
                             f"path inside {model_dir} (no '..', not absolute)")
        found.append((tensor, location, model_dir / location))
    return found


def _load_with_data(path: Path):
    """The model with every external tensor's bytes inlined as raw_data. Read here rather
    than by onnx's loader, which refuses symbolic links (a Hugging Face cache is made of
    them); the location was checked to stay inside the model's directory."""
    from onnx import TensorProto
    from onnx.external_data_helper import ExternalDataInfo
    proto = _load_proto(path)
    for tensor, _, data_file in _external_data(proto, path.parent):
        tensor.raw_data = _read_external(ExternalDataInfo(tensor), data_file, tensor.name)
        tensor.data_location = TensorProto.DEFAULT
        del tensor.external_data[:]
    return proto


def _read_external(info, data_file: Path, tensor_name: str) -> bytes:
    try:
        with open(data_file, "rb") as f:
            f.seek(info.offset or 0)
            data = f.read(-1 if info.length is None else info.length)
    except OSError as err:
        raise StageError(f"tensor '{tensor_name}': cannot read its external data "
                         f"{data_file}: {err.strerror}") from None
    if info.length is not None and len(data) != info.length:
        raise StageError(f"tensor '{tensor_name}': {data_file} holds {len(data)} of its "
                         f"{info.length} bytes at offset {info.offset or 0} (truncated?)")
    return data


def _require_one_file(proto, model_name: str) -> None:
    """model.onnx holds the weights inline: protobuf cannot write a message over 2 GB."""
    if proto.ByteSize() >= 2**31:
        raise StageError(f"model {model_name}: with its external data inlined the model is "
                         f"{proto.ByteSize() / 2**30:.1f} GiB, over protobuf's 2 GB limit for "
                         "one ONNX file; kiln cannot take it yet")


# --- which inputs a user's file is captured on -------------------------------------------

def _file_inputs(model: ModelSpec, proto, model_dir: Path):
    """(inputs, test outputs or None, notes): the user's inputs win, then the first test
    data set beside the model, then seeded inputs with symbolic dimensions sized."""
    signature = common.signature(proto)
    if model.input_files():
        return model_inputs(model, signature), None, []
    notes = []
    test_files = _test_data_files(model_dir)
    if test_files:
        sets = _test_data_sets(model_dir)
        if len(sets) > 1:
            notes.append(f"{len(sets)} test_data_set_* directories beside the model: only "
                         f"{sets[0].name} is used")
        inputs, why_not = _test_data_inputs(model, signature, test_files, model_dir)
        if inputs is not None:
            outputs = [_read_tensor(f, model_dir)[1] for f in test_files
                       if f.name.startswith("output_")]
            notes.append(f"inputs from {sets[0].name}/input_*.pb beside the model")
            return inputs, (sets[0].name, outputs) if outputs else None, notes
        notes.append(why_not)
    sized, size_notes = common.sized_signature(model.name, signature, model.shapes)
    return model_inputs(model, sized), None, notes + size_notes


# --- the ONNX test-data convention ---------------------------------------------------------

def _test_data_sets(model_dir: Path) -> list[Path]:
    return sorted(_matching(model_dir, TEST_DATA_GLOB, os.DirEntry.is_dir), key=_natural)


def _test_data_files(model_dir: Path) -> list[Path]:
    """The first test data set's input_*.pb then output_*.pb, each in index order."""
    sets = _test_data_sets(model_dir)
    if not sets:
        return []
    files = _matching(sets[0], "*.pb", os.DirEntry.is_file)   # (one listing for both kinds)
    return [f for kind in ("input", "output")
            for f in sorted((f for f in files if fnmatch.fnmatchcase(f.name, f"{kind}_*.pb")),
                            key=_natural)]


def _matching(directory: Path, pattern: str, kind) -> list[Path]:
    """directory.glob(pattern) (one level, in listing order) of the entries that are kind
    (DirEntry.is_dir or is_file, following links as Path's do), from one scandir: planning a
    2,000-case suite asks this of every case."""
    try:
        with os.scandir(directory) as entries:
            return [directory / entry.name for entry in entries
                    if fnmatch.fnmatchcase(entry.name, pattern) and kind(entry)]
    except (FileNotFoundError, NotADirectoryError, PermissionError):   # (as glob's: nothing)
        return []


def _read_tensor(path: Path, model_dir: Path) -> tuple[str, np.ndarray]:
    import onnx
    from google.protobuf.message import DecodeError
    from onnx import numpy_helper
    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(path.read_bytes())
        return tensor.name, numpy_helper.to_array(tensor)
    except (DecodeError, ValueError, TypeError) as err:
        raise StageError(f"{path.relative_to(model_dir)} is not an onnx.TensorProto "
                         f"numpy_helper can read ({err})") from None


def _test_data_inputs(model: ModelSpec, signature, files: list[Path], model_dir: Path):
    """(inputs, None) from input_*.pb, matched to the graph inputs by tensor name when every
    name matches, else by position; (None, why) when shapes= asks for other shapes."""
    import numpy as np
    tensors = [_read_tensor(f, model_dir) for f in files if f.name.startswith("input_")]
    set_name = files[0].parent.name
    if len(tensors) != len(signature):
        raise StageError(f"model {model.name}: {set_name} beside the model has {len(tensors)} "
                         f"input_*.pb, the graph takes {len(signature)} inputs "
                         f"({', '.join(n for n, _, _ in signature)})")
    by_name = {name: array for name, array in tensors}
    if set(by_name) != {name for name, _, _ in signature}:
        by_name = {name: array for (name, _, _), (_, array) in zip(signature, tensors)}
    inputs = []
    for position, (name, dims, dtype) in enumerate(signature):
        array = by_name[name]
        if name in model.shapes and list(array.shape) != list(model.shapes[name]):
            return None, (f"{set_name} not used: shapes= gives '{name}' as "
                          f"{'x'.join(map(str, model.shapes[name]))}, its input is "
                          f"{'x'.join(map(str, array.shape))}")
        if dims is not None and (len(dims) != array.ndim or any(
                isinstance(d, int) and d != a for d, a in zip(dims, array.shape))):
            raise StageError(f"model {model.name}: {set_name}'s input for '{name}' (position "
                             f"{position}) has shape {list(array.shape)}, the model takes {dims}")
        inputs.append(array.astype(np.dtype(dtype), copy=False))
    return inputs, None


def _answers(model_name: str, data: bytes, feeds: dict, outputs: int, set_name: str,
             expected: list[np.ndarray], notes: list[str]) -> dict:
    """Traced's reference and expected outputs for a model with its own output_*.pb, as ONNX's
    test runner reads them: output_N.pb is the model's output N, and fewer files than outputs
    leave the rest to onnxruntime alone. Every target is compared with onnxruntime's answer
    and with the expected outputs; where onnxruntime cannot run the model (NOT_IMPLEMENTED for
    some ops and types, or it refuses the file) or disagrees with them, with the expected
    outputs alone, and a note says so."""
    import numpy as np
    source = f"{set_name}/output_*.pb"
    if len(expected) > outputs:
        raise StageError(f"model {model_name}: {set_name} has {len(expected)} output_*.pb, the "
                         f"model has {outputs} outputs")
    if len(expected) < outputs:
        notes.append(f"{source} gives {len(expected)} of the model's {outputs} outputs: the "
                     "others are compared with onnxruntime's answer only")
    try:
        reference = common.session(data).run(None, feeds)
    except common.onnxruntime_errors() as err:
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        notes.append(f"onnxruntime cannot run the model ({why}): the expected outputs in "
                     f"{source} alone are the reference")
        return {"reference": expected, "reference_from": source}
    disagreement = _disagreement(reference, expected, set_name)
    if disagreement:
        notes.append(f"onnxruntime disagrees with {disagreement}: the expected outputs in "
                     f"{source} alone are the reference")
        return {"reference": expected, "reference_from": source}
    worst = max((_compare(np.asarray(r), e)[0] for r, e in zip(reference, expected)), default=0.0)
    notes.append(f"checked onnxruntime against {source} (max abs err {worst:.3g})")
    return {"reference": reference, "reference_from": "onnxruntime", "expected": expected,
            "expected_from": source}


def _disagreement(reference, expected: list[np.ndarray], set_name: str) -> str | None:
    """Where onnxruntime's answer and the expected outputs differ beyond float noise (the
    test data was written by whatever produced the model), or None."""
    import numpy as np
    for index, (got, want) in enumerate(zip(reference, expected)):
        got = np.asarray(got)
        if got.shape != want.shape:
            return (f"{set_name}/output_{index}.pb on its shape: {list(got.shape)}, expected "
                    f"{list(want.shape)}")
        error, close = _compare(got, want)
        if not close:
            return (f"{set_name}/output_{index}.pb: max abs err {error:.3g} (allowed: atol "
                    f"{TEST_DATA_ATOL:g}, rtol {TEST_DATA_RTOL:g})")
    return None


def _compare(got: np.ndarray, want: np.ndarray) -> tuple[float, bool]:
    """(max abs error, close enough); strings and other non-numbers must be equal."""
    import numpy as np
    if got.dtype.kind not in "biufc" or want.dtype.kind not in "biufc":
        equal = np.array_equal(got, want)
        return float(not equal), equal
    error = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)), initial=0.0))
    return error, bool(np.allclose(got, want, atol=TEST_DATA_ATOL, rtol=TEST_DATA_RTOL,
                                   equal_nan=True))


ADAPTER = Onnx()
