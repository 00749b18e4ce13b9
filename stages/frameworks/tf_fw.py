"""TensorFlow adapter: SavedModel capture, a deterministic single-file SavedModel archive as
interchange, iree-tools-tf's importer (in-process) to StableHLO.

A models/ file's build() returns (module, inputs): a tf.Module with one tf.function that has
an input_signature (the one named __call__ if there are several), and a tuple of numpy inputs
in that function's argument order. It is saved with that function as its only signature,
named after the method ('__call__' is saved as 'serving_default'). build() seeds its own
weights and inputs (numpy default_rng). A user's model is a SavedModel directory (one holding
saved_model.pb); the signature used is its only one, else 'serving_default', else the first
by name; inputs are seeded from that signature, an unknown leading (batch) dimension as 1
(with a note; shapes= sizes it), as Keras's model.export() leaves every input's batch.

A signature with a dynamic dimension is saved again by capture, traced for the captured
shapes: IREE's TF importer leaves ops of dynamic shape (a Keras model's tf.Reshape)
unconverted in the 'tf' dialect.

Stage outputs must be single files, so capture packs the SavedModel into an uncompressed tar
with sorted members, zero mtimes, uid/gid 0 and no owner names, and WITHOUT fingerprint.pb
(it changes on every save); import unpacks it into a temporary directory.

Import is iree-tools-tf's in-process import_saved_model as `savedmodel_v1`, i.e. by signature
key: the v2 importer exports object-graph functions (method paths), which a user's
'serving_default' signature need not be. TF orders the signature's inputs and outputs by a hash
of their keys, so capture reads that order from the same TF conversion (its
tf_saved_model.index_path names) and writes inputs.npz / reference.npz in it; the reference is
the reloaded SavedModel's signature run by TF. A build() model's inputs are matched to the
signature's keys in definition order (its input_signature order).

The float64 answer (the noise rule's, stages/compare.py) is the signature's graph with its
variables frozen to constants and every float32 made float64, run by TF: Keras applications
(Conv2D, MatMul, batch norm as Mul/Add/Rsqrt) run so; an op without a double kernel
(FusedBatchNormV3) leaves the model judged by atol/rtol, capture.json's f64.why naming it.

The importer leaves a public session_initializer function and one public ml_program.global per
variable (which IREE would export as global$... accessors): all are made private, so the
signature is the module's only entry point.
"""
from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path

from pipeline.stage import ModelSpec, StageError

from .base import Framework, NoFloat64, Traced
from .factory import build_model
from .inputs import model_inputs
from .tf_common import absl_safe, entry_function, load_tf

ARCHIVE = "saved_model.tar"
VOLATILE = {"fingerprint.pb"}


class TensorFlow(Framework):
    name = "tf"
    extra = "tf"
    modules = ("tensorflow", "iree.tools.tf")
    dists = ("tensorflow-cpu", "iree-tools-tf")
    packages = ("tensorflow", "keras", "tf_keras", "iree.tools.tf", "iree.compiler")
    suffixes = ()
    input_type = "stablehlo"
    captured = (ARCHIVE,)
    serialized = ARCHIVE
    builds_on = ("tf_common",)

    def matches(self, path: str) -> bool:
        # one stat: under a file, the name is not found (ENOTDIR) as under an empty directory
        # (a folder scan asks this of every entry)
        # (as text: a Path made per entry was most of a scan's detect)
        return os.path.isfile(os.path.join(path, "saved_model.pb"))

    @absl_safe
    def trace(self, model: ModelSpec) -> Traced:
        tf = load_tf()
        with tempfile.TemporaryDirectory() as tmp:
            saved, inputs = _saved_model(model, Path(tmp))
            signature_name = serving_signature(saved)
            signature = tf.saved_model.load(str(saved)).signatures[signature_name]
            specs = signature.structured_input_signature[1]   # kwargs, definition order
            notes = []
            if inputs is None:
                declared = [(k, s.shape.as_list(), s.dtype.name) for k, s in specs.items()]
                if not model.input_files():
                    declared, notes = _batch_of_one(declared, model.shapes)
                inputs = model_inputs(model, declared)
            self.check_input_count(model, f"signature '{signature_name}'", list(specs), inputs)
            feeds = _feeds(model, specs, inputs)
            results = signature(**{k: tf.constant(a) for k, a in feeds.items()})
            if any(s.shape.rank is None or None in s.shape.as_list() for s in specs.values()):
                saved = _static(saved, signature_name, feeds, Path(tmp) / "static")
                notes.append(f"signature '{signature_name}' saved again with the captured "
                             "input shapes: IREE's TF importer leaves ops of dynamic shape "
                             "(tf.Reshape) unconverted")
            in_keys, out_keys = _signature_order(saved, signature_name)
            if sorted(in_keys) != sorted(specs) or sorted(out_keys) != sorted(results):
                raise StageError(f"model {model.name}: cannot match signature "
                                 f"'{signature_name}' to its converted function "
                                 f"({in_keys} -> {out_keys})")
            return Traced(artifact=_pack(saved), inputs=[feeds[k] for k in in_keys],
                          reference=[results[k].numpy() for k in out_keys], notes=notes,
                          source={"signature": signature_name, "inputs": in_keys,
                                  "outputs": out_keys})

    @absl_safe
    def reference64(self, model: ModelSpec, traced: Traced) -> list:
        """The signature's graph with its variables frozen to constants and every float32
        (constants, op types, casts) made float64, run by TF on the inputs cast to float64:
        TF's kernels take double where they take float (Conv2D, MatMul, Keras' batch norm as
        Mul/Add/Rsqrt); where one does not, NoFloat64 with TF's words."""
        import numpy as np
        tf = load_tf()
        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "saved_model"
            _unpack_bytes(traced.artifact, saved)
            loaded = tf.saved_model.load(str(saved))   # (alive while its variables are read)
            try:
                run64 = _float64_function(tf, loaded.signatures[traced.source["signature"]],
                                          traced.source)
                feeds = [tf.constant(a.astype(np.float64) if a.dtype == np.float32 else a)
                         for a in traced.inputs]
                return [np.asarray(a) for a in run64(*feeds)]
            except Exception as err:   # an op without a double kernel, a graph TF cannot freeze
                said = (str(err).strip().splitlines() or [type(err).__name__])[0]
                op = re.search(r"Op<name=(\w+)", str(err))
                raise NoFloat64(f"TF cannot run the signature's graph in float64: "
                                f"{said[:200]}" + (f" (op {op[1]})" if op else "")) from None

    def serialize(self, capture_dir: Path, out_dir: Path) -> None:
        # capture already wrote the canonical archive; re-pack to be sure of its form
        with tempfile.TemporaryDirectory() as tmp:
            _unpack(capture_dir / ARCHIVE, Path(tmp))
            (out_dir / self.serialized).write_bytes(_pack(Path(tmp)))

    @absl_safe
    def import_mlir(self, serialized_file: Path, mlir_file: Path) -> None:
        load_tf()  # quiet TF's start-up logging before the importer loads it
        from iree.tools.tf.scripts.iree_import_tf.__main__ import import_saved_model

        from stages.mlir import parse, write_stripped
        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "saved_model"
            _unpack(serialized_file, saved)
            imported = Path(tmp) / "imported.mlirbc"
            import_saved_model(output_path=str(imported), saved_model_dir=str(saved),
                               exported_names=serving_signature(saved),
                               import_type="savedmodel_v1", tags="serve")
            _check_converted(imported.read_bytes())
            module = parse(imported.read_bytes())
        _make_private(module)
        write_stripped(module, mlir_file)

    timing_threads = "tf.config.threading intra-op, inter-op 1"

    @absl_safe
    def runner(self, capture_dir: Path, inputs: list, threads: int):
        # the reloaded SavedModel's signature, as capture ran it for the reference; inputs.npz
        # is in the converted function's order, fed back by signature key
        tf = load_tf()
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        folder = tempfile.TemporaryDirectory()   # kept alive by run()
        saved = Path(folder.name) / "saved_model"
        _unpack(capture_dir / ARCHIVE, saved)
        signature_name = serving_signature(saved)
        signature = tf.saved_model.load(str(saved)).signatures[signature_name]
        in_keys, _ = _signature_order(saved, signature_name)
        feeds = {k: tf.constant(a) for k, a in zip(in_keys, inputs)}

        def run(keep=folder):
            return {k: v.numpy() for k, v in signature(**feeds).items()}
        return run


def _saved_model(model: ModelSpec, tmp: Path) -> tuple[Path, list | None]:
    """(SavedModel directory, build()'s inputs): a factory's tf.Module saved under tmp with
    its entry function as the only signature, or the user's own directory (inputs None)."""
    if not model.factory:
        return Path(model.sources["model"]), None
    tf = load_tf()
    module, inputs = build_model(model, lambda m: isinstance(m, tf.Module), "tf.Module")
    attr, function = entry_function(module, model.name)
    saved = tmp / "saved_model"
    signature_name = "serving_default" if attr == "__call__" else attr
    tf.saved_model.save(module, str(saved),
                        signatures={signature_name: function.get_concrete_function()})
    return saved, inputs


def _check_converted(data: bytes) -> None:
    """The importer leaves TF ops it could not convert to StableHLO in the 'tf' dialect,
    which IREE cannot parse: name them, rather than a parse error of an unknown dialect."""
    from stages.mlir import op_names, parse
    left = sorted(n for n in op_names(parse(data, unregistered=True))
                  if n.split(".", 1)[0] in ("tf", "tf_executor", "tf_device"))
    if left:
        raise StageError(f"TF ops IREE's TF importer did not convert to StableHLO: "
                         f"{', '.join(left)}")


def _static(saved: Path, signature_name: str, feeds: dict, out: Path) -> Path:
    """The SavedModel saved again at out with its signature traced for the feeds' shapes
    (same keys and outputs; the loaded model's variables kept): what capture passes on, as
    TFLite's capture fixes a dynamic input to the captured shape."""
    tf = load_tf()
    loaded = tf.saved_model.load(str(saved))
    signature = loaded.signatures[signature_name]
    keys = list(feeds)
    specs = [tf.TensorSpec(a.shape, tf.as_dtype(a.dtype), name=k) for k, a in feeds.items()]

    @tf.function(input_signature=specs)
    def static(*args):
        return signature(**dict(zip(keys, args)))

    holder = tf.Module()
    holder.loaded = loaded   # tracks the variables the signature reads
    tf.saved_model.save(holder, str(out),
                        signatures={signature_name: static.get_concrete_function()})
    return out


def _batch_of_one(signature: list, shapes: dict) -> tuple[list, list[str]]:
    """(signature, notes): an unknown leading (batch) dimension that shapes= does not size
    is 1, with a note (as Keras's model.export() leaves every input's batch); any other
    unknown dimension is left for model_inputs to ask for."""
    sized, notes = [], []
    for name, dims, dtype in signature:
        if name not in shapes and dims and dims[0] is None:
            example = "x".join(["8", *("D" if d is None else str(d) for d in dims[1:])])
            notes.append(f"input '{name}': dynamic batch dimension set to 1; give "
                         f"shapes={name}:{example} to choose")
            dims = [1, *dims[1:]]
        sized.append((name, dims, dtype))
    return sized, notes


def _feeds(model: ModelSpec, specs: dict, inputs: list) -> dict:
    """The inputs by signature key (positional -> keys in definition order), each checked to
    fit its spec."""
    tf = load_tf()
    feeds = dict(zip(specs, inputs))
    for key, spec in specs.items():
        if not spec.is_compatible_with(tf.constant(feeds[key])):
            raise StageError(f"model {model.name}: input '{key}' of shape "
                             f"{feeds[key].shape} {feeds[key].dtype} does not fit "
                             f"the signature's {spec}")
    return feeds


def _make_private(module) -> None:
    """The importer's session_initializer, global$ accessors and ml_program.globals made
    private: the signature is the module's only entry point."""
    from iree.compiler import ir
    with module.context:
        private = ir.StringAttr.get("private")
        for op in module.body.operations:
            op = op.operation
            name = str(op.attributes["sym_name"]).strip('"') if "sym_name" in op.attributes else ""
            if op.name == "ml_program.global" or (op.name.endswith(".func") and (
                    name == "session_initializer" or name.startswith("global$"))):
                op.attributes["sym_visibility"] = private


def serving_signature(saved: Path) -> str:
    """The signature to import, read from saved_model.pb without loading the model."""
    from tensorflow.core.protobuf import saved_model_pb2
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((saved / "saved_model.pb").read_bytes())
    names = sorted({n for graph in proto.meta_graphs for n in graph.signature_def
                    if not n.startswith("__")})
    if not names:
        raise StageError("the SavedModel has no signature to import (save it with "
                         "signatures={'serving_default': fn})")
    return names[0] if len(names) == 1 else ("serving_default" if "serving_default" in names
                                             else names[0])


def _signature_order(saved: Path, name: str) -> tuple[list[str], list[str]]:
    """The signature's input and output keys in the order the importer gives the function's
    arguments and results (TF sorts them by a hash of the key), read from the same TF
    conversion iree-tools-tf runs, before it drops the tf_saved_model.index_path names."""
    import inspect
    import re

    from tensorflow.mlir.experimental import convert_saved_model_v1
    options = {"include_variables_in_initializers": False, "upgrade_legacy": False,
               "lift_variables": True}
    accepted = inspect.signature(convert_saved_model_v1).parameters
    text = convert_saved_model_v1(str(saved), exported_names=name, tags="serve",
                                  show_debug_info=False,
                                  **{k: v for k, v in options.items() if k in accepted})
    header = next((line for line in text.splitlines()
                   if re.search(rf"func(\.func)? @{re.escape(name)}\(", line)), None)
    if header is None:
        raise StageError(f"signature '{name}' not found in the converted SavedModel")
    arguments, _, results = header.partition(") -> ")
    index = re.compile(r'tf_saved_model\.index_path = \["([^"]*)"\]')
    return index.findall(arguments), index.findall(results)


def _pack(directory: Path) -> bytes:
    """A reproducible tar of a SavedModel directory: same files, same bytes."""
    import tarfile  # (here: a plan, which loads every adapter, never packs one)
    buffer = io.BytesIO()
    files = sorted((p for p in directory.rglob("*") if p.is_file() and p.name not in VOLATILE),
                   key=lambda p: p.relative_to(directory).as_posix())
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in files:
            info = tarfile.TarInfo(path.relative_to(directory).as_posix())
            info.size = path.stat().st_size
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return buffer.getvalue()


def _float64_function(tf, signature, source: dict):
    """A callable: the signature's frozen graph made float64, taking its inputs in
    source["inputs"]'s order and giving its outputs in source["outputs"]'s."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    frozen = convert_variables_to_constants_v2(signature)
    graph = frozen.graph.as_graph_def()
    for node in graph.node:
        _attributes_to_double(node)
    # a signature's flat inputs and outputs are its keys in sorted order (tf.nest); the
    # frozen function keeps that order (and drops the structure)
    in_keys, out_keys = sorted(signature.structured_input_signature[1]), \
        sorted(signature.structured_outputs)
    if (len(in_keys), len(out_keys)) != (len(frozen.inputs), len(frozen.outputs)):
        raise ValueError(f"the frozen graph has {len(frozen.inputs)} inputs and "
                         f"{len(frozen.outputs)} outputs, the signature {in_keys} -> {out_keys}")
    in_names = dict(zip(in_keys, (t.name for t in frozen.inputs)))
    out_names = dict(zip(out_keys, (t.name for t in frozen.outputs)))

    def imported():
        tf.compat.v1.import_graph_def(graph, name="")
    wrapped = tf.compat.v1.wrap_function(imported, [])
    tensor = wrapped.graph.get_tensor_by_name
    return wrapped.prune([tensor(in_names[k]) for k in source["inputs"]],
                         [tensor(out_names[k]) for k in source["outputs"]])


def _attributes_to_double(node) -> None:
    """A GraphDef node's float32 made float64: type and type-list attributes, and constant
    tensors' values."""
    import numpy as np
    from tensorflow.core.framework import types_pb2
    from tensorflow.python.framework import tensor_util
    single, double = types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE
    for value in node.attr.values():
        if value.HasField("type") and value.type == single:
            value.type = double
        elif value.HasField("list") and value.list.type:
            value.list.type[:] = [double if t == single else t for t in value.list.type]
        elif value.HasField("tensor") and value.tensor.dtype == single:
            wide = tensor_util.MakeNdarray(value.tensor).astype(np.float64)
            value.tensor.CopyFrom(tensor_util.make_tensor_proto(wide))


def _unpack_bytes(archive: bytes, directory: Path) -> None:
    packed = directory.parent / ARCHIVE
    packed.write_bytes(archive)
    _unpack(packed, directory)


def _unpack(archive: Path, directory: Path) -> None:
    import tarfile
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, mode="r") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(directory, filter="data")
        else:
            tar.extractall(directory)


ADAPTER = TensorFlow()
