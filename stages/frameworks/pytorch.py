"""PyTorch adapter: torch.export capture, .pt2 interchange, turbine decompositions + FxImporter.

Accepts a models/ factory (torch.nn.Module + example inputs) or a user's .pt2 file. A .pt2
whose outputs are custom pytree classes (a Hugging Face model's BaseModelOutput, a
registered dataclass) loads once the module registering each class is imported: load_program
imports it by the class's qualified name, and says which package to install or put on
PYTHONPATH where it cannot. Outputs of any registered pytree are compared leaf by leaf, in
the order the exported program returns them. A .pt2 is read as data only: an entry torch would
unpickle beyond plain tensors, evaluate as Python or load as native code is refused, by name
(pt2_safety.py); the ops of PyTorch 2 Export quantization (quantized_decomposed) are registered
by importing torch's own module for them first, a custom op of another namespace is refused.

Import order matters: without turbine's decomposition table ResNet leaves ops IREE rejects
(relu_, _native_batch_norm_legit_no_training); a few ops only core ATen decomposes are added
to it (GPT-2's aten.diff, YOLOS's upsample_bicubic2d). A non-persistent buffer (BERT's
position_ids) sits among the program's constants, where FxImporter does not look for
buffers: it is moved into the state dict before import. Two graph rewrites before import
avoid what FxImporter and torch-mlir cannot handle in Hugging Face models: a weight inside an
op's list argument, and attention masks combined from a constant bool tensor with `&`.
FxImporter mutates the program it imports, so the .pt2 is loaded afresh for each import.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import re
import warnings
from pathlib import Path

from pipeline.stage import ModelSpec, StageError

from .base import NOT_INSTALLED, Framework, Intermediate, NoFloat64, Traced
from .factory import load_factory
from .inputs import model_inputs
from .pt2_safety import loading_as_data, refuse_code, register_torch_op_libraries, unresolved_op


def _flatten(value):
    """The output's tensors in pytree order: the order of the exported graph's outputs, which
    is what the compiled module returns (a dict keeps its insertion order, a dataclass or a
    ModelOutput its field order; sorting dict keys would misalign them)."""
    import torch
    from torch.utils._pytree import tree_leaves
    leaves = tree_leaves(value)
    others = sorted({type(leaf).__name__ for leaf in leaves if not isinstance(leaf, torch.Tensor)})
    if others:
        raise StageError(f"model output holds {', '.join(others)}, not only tensors: outputs "
                         "must be tensors, tuples/lists/dicts of them, or registered pytree "
                         "classes")
    return [leaf.detach().numpy() for leaf in leaves]


# torch.export.load logs the real deserialization error under this logger and raises only
# "check the warnings above"; the class it names is the one to register
_EXPORT_LOGGER = "torch.export"
_UNREGISTERED = re.compile(r"Deserializing ([\w.]+) in pytree is not registered")


def load_program(path: Path):
    """torch.export.load, importing the module that registers each pytree class the program's
    inputs/outputs use but this process has not seen (one per retry: several may be missing).
    A .pt2 is data: whatever in it would run code as it loads is refused (pt2_safety)."""
    import torch
    refuse_code(path)
    register_torch_op_libraries()
    imported: set[str] = set()
    while True:
        with _logged_errors(_EXPORT_LOGGER) as logged, loading_as_data(path):
            try:
                return torch.export.load(str(path))
            except RuntimeError as err:
                failure = err
        refused = unresolved_op(path, [failure, *logged])
        if refused is not None:
            raise refused from None
        missing = _unregistered_class([failure, *logged])
        if missing is None:   # the logged error is the real one; the raised one only points at it
            raise logged[-1] if logged else failure
        if missing in imported:   # its module imported fine yet did not register it
            raise StageError(f"{path.name}: importing the module of pytree class {missing} did not "
                             "register it; import the module that calls register_pytree_node / "
                             "register_dataclass for it", transient=NOT_INSTALLED) from None
        _import_module_of(missing, path)
        imported.add(missing)


@contextlib.contextmanager
def _logged_errors(logger_name: str):
    """Collect the exceptions logged (with exc_info) under logger_name. A missing pytree class
    is kept off the console: it is handled here, or reported as one StageError."""
    errors: list[BaseException] = []

    def collect(record) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None:
            return True
        errors.append(error)
        return _unregistered_class([error]) is None and unresolved_op(Path(), [error]) is None

    logger = logging.getLogger(logger_name)
    logger.addFilter(collect)
    try:
        yield errors
    finally:
        logger.removeFilter(collect)


def _unregistered_class(errors) -> str | None:
    for error in errors:
        while error is not None:   # the message may sit on a cause further down the chain
            match = _UNREGISTERED.search(str(error))
            if match:
                return match.group(1)
            error = error.__cause__ or error.__context__
    return None


def _import_module_of(class_name: str, path: Path) -> None:
    """Import the module a qualified class name lives in: the longest importable prefix (a
    nested class's name holds its outer class too)."""
    parts = class_name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:end])
        try:
            importlib.import_module(module)
            return
        except ModuleNotFoundError as err:
            if err.name and not (module + ".").startswith(err.name + "."):
                # the module exists but one of its own imports is missing
                raise StageError(f"{path.name}: the program uses {class_name}; importing {module} "
                                 f"failed: no module named {err.name!r} (install it)",
                                 transient=NOT_INSTALLED) from None
        except Exception as err:   # the module is there but fails to import
            raise StageError(f"{path.name}: the program uses {class_name}; importing {module} "
                             f"failed: {type(err).__name__}: {err}",
                             transient=NOT_INSTALLED) from None
    module_path = ".".join(parts[:-1]) or class_name
    raise StageError(f"{path.name}: the program uses the pytree class {class_name}, which only its "
                     f"own package registers, and {module_path} cannot be imported: install the "
                     f"package that provides {parts[0]!r} (e.g. pip install {parts[0]}) or put its "
                     "folder on PYTHONPATH", transient=NOT_INSTALLED)


# torch 2.13's own pytree code trips this deprecation when a .pt2 is loaded; it is noise
warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)


class PyTorch(Framework):
    name = "torch"
    extra = "torch"
    modules = ("torch", "iree.turbine")
    dists = ("torch", "iree-turbine")
    packages = ("torch", "iree.turbine", "iree.compiler")   # (IREE's FX importer)
    suffixes = (".pt2",)
    input_type = "torch"
    captured = ("exported.pt2",)
    serialized = "model.pt2"
    builds_on = ("pt2_safety",)

    def trace(self, model: ModelSpec) -> Traced:
        import torch
        torch.manual_seed(model.seed)
        if model.factory:
            module, inputs = load_factory(model.factory)()
            if model.input_files():   # the user's own inputs replace build()'s examples
                signature = [(f"arg{i}", list(t.shape), str(t.numpy().dtype))
                             for i, t in enumerate(inputs)]
                inputs = [torch.from_numpy(a) for a in model_inputs(model, signature)]
            module.eval()
            with torch.no_grad():
                program = torch.export.export(module, tuple(inputs))
                reference = module(*inputs)
        else:  # a user's .pt2
            program = load_program(Path(model.sources["model"]))
            inputs = [torch.from_numpy(a) for a in model_inputs(model, _signature(program))]
            with torch.no_grad():
                reference = program.module()(*inputs)
        return Traced(artifact=program, inputs=[t.numpy() for t in inputs],
                      reference=_flatten(reference), source=module if model.factory else None)

    def reference64(self, model: ModelSpec, traced: Traced) -> list:
        """A factory's nn.Module .double(), or the exported program's module moved to float64
        (a .pt2), run on the inputs with the float ones cast to float64."""
        import copy

        import torch
        try:
            # a copy: .double() converts parameters in place, and the exported program shares them
            module = copy.deepcopy(traced.source).double() if traced.source is not None \
                else _graph_in_float64(traced.artifact.module().to(torch.float64))
            inputs = [torch.from_numpy(a) for a in traced.inputs]
            with torch.no_grad(), _default_dtype(torch.float64):
                answer = module(*(t.double() if t.is_floating_point() else t for t in inputs))
            return _flatten(answer)
        except Exception as err:   # an op without a float64 kernel, a graph with fixed dtypes
            raise NoFloat64(f"torch could not run the model in float64: "
                            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                            ) from None

    def write_artifact(self, program, path: Path) -> None:
        import torch
        torch.export.save(program, str(path))

    def serialize(self, capture_dir: Path, out_dir: Path) -> None:
        # the zip's top folder is the file stem: a fixed name keeps the bytes reproducible
        program = load_program(capture_dir / self.captured[0])
        self.write_artifact(program, out_dir / self.serialized)

    def import_mlir(self, serialized_file: Path, mlir_file: Path) -> None:
        from iree.compiler.extras.fx_importer import FxImporter

        from stages.mlir import write_stripped
        program = load_program(serialized_file).run_decompositions(_import_decompositions())
        _buffers_into_state_dict(program)
        _drop_constant_mask_identities(program)
        _weights_out_of_lists(program)
        importer = FxImporter(hooks=_state_dict_names(program))
        importer.import_frozen_program(program)
        write_stripped(importer.module, mlir_file)

    timing_threads = "torch.set_num_threads"

    def intermediates(self, capture_dir: Path, inputs: list) -> list[Intermediate]:
        """Every ATen op's tensor result as torch eager computes it, running the exported
        program capture wrote node by node (torch.fx.Interpreter), in the graph's order
        (docs/DESIGN.md §10.8). bf16/f16 results are read as float32 (numpy has no bf16)."""
        import torch
        module = load_program(capture_dir / self.captured[0]).module()
        found: list[Intermediate] = []

        class Recorder(torch.fx.Interpreter):
            def run_node(self, node):
                result = super().run_node(node)
                if node.op == "call_function" and isinstance(result, torch.Tensor):
                    found.append(Intermediate(node.name, str(node.target), _numpy(result)))
                return result

        with torch.no_grad():
            Recorder(module).run(*(torch.from_numpy(a) for a in inputs))
        return found

    def runner(self, capture_dir: Path, inputs: list, threads: int):
        # torch eager, op by op, on the exported program capture wrote (a factory's module
        # itself is not among validate's inputs; the program runs the same ATen ops)
        import torch
        torch.set_num_threads(threads)
        module = load_program(capture_dir / self.captured[0]).module()
        tensors = [torch.from_numpy(a) for a in inputs]

        def run():
            with torch.no_grad():
                return module(*tensors)
        return run


def _numpy(tensor):
    """A tensor's values as a numpy array (a float type numpy lacks as float32)."""
    import torch
    tensor = tensor.detach().cpu()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    return tensor.numpy().copy()


@contextlib.contextmanager
def _default_dtype(dtype):
    """torch's default float dtype set for the block: a graph's factory ops that name none
    (OPT's and DeBERTa-v2's `aten.ones([1, 16])`) make float64 tensors in a float64 run, not
    float32 ones that then meet float64 ('Tensor dtype mismatch')."""
    import torch
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _graph_in_float64(module):
    """An exported program's module, its weights already float64, with every float32 its
    graph names (dtype= of a mask or a cast, as Hugging Face's attention masks are made)
    made float64: .to(float64) moves only the weights, and the graph's own float32 tensors
    then meet float64 ones ('Tensor dtype mismatch')."""
    import torch
    for node in module.graph.nodes:
        if node.op == "get_attr":   # a constant the graph holds (DeBERTa-v2's lifted_tensor_0):
            _constant_in_float64(module, node.target)   # .to() moves no plain attribute
        if node.kwargs.get("dtype") is torch.float32:
            node.kwargs = {**node.kwargs, "dtype": torch.float64}
        if any(arg is torch.float32 for arg in node.args):
            node.args = tuple(torch.float64 if arg is torch.float32 else arg for arg in node.args)
    module.recompile()
    return module


def _constant_in_float64(module, target: str) -> None:
    import torch
    owner, _, name = target.rpartition(".")
    holder = module.get_submodule(owner) if owner else module
    value = getattr(holder, name)
    if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter) \
            and value.dtype == torch.float32:
        setattr(holder, name, value.to(torch.float64))


# ops IREE has no lowering for, which turbine's table leaves alone and torch's core-ATen table
# decomposes (GPT-2's attention mask calls aten.diff, wav2vec2's positional conv
# _weight_norm, YOLOS resizes its position embeddings with upsample_bicubic2d). Only these
# are taken from core ATen: its whole table would also break up
# scaled_dot_product_attention, which IREE lowers whole.
_CORE_ATEN_ONLY = ("diff", "_weight_norm", "_weight_norm_interface", "upsample_bicubic2d")


def _import_decompositions() -> dict:
    """turbine's AOT decomposition table plus core ATen's decompositions of _CORE_ATEN_ONLY."""
    import torch
    from iree.turbine.aot import current_aot_decompositions
    table = dict(current_aot_decompositions())
    core_aten = torch.export.default_decompositions()
    for name in _CORE_ATEN_ONLY:
        packet = getattr(torch.ops.aten, name)
        for overload in packet.overloads():
            op = getattr(packet, overload)
            if op in core_aten:
                table[op] = core_aten[op]
    return table


def _buffers_into_state_dict(program) -> None:
    """Put the program's non-persistent buffers (BERT's position_ids) into its state dict.
    torch.export keeps them among the program's constants, but FxImporter looks up every
    buffer in the state dict and fails with 'Could not find state mapping for buffer'. The
    program is the one loaded for this import only (FxImporter mutates it anyway)."""
    state_dict = program.state_dict
    for name in program.graph_signature.inputs_to_buffers.values():
        if name not in state_dict and name in program.constants:
            state_dict[name] = program.constants[name]


def _weights_out_of_lists(program) -> None:
    """Pass a weight or buffer that an op takes inside a list (Swin's relative_position_index
    in aten.index's indices) through aten.clone. FxImporter puts the tensor itself in the
    placeholder's place, and a list holding a tensor rather than a graph value fails to import
    ('Heterogeneous lists are not supported: expected vtensor, got torch.Tensor')."""
    import torch
    signature = program.graph_signature
    lifted = {*signature.inputs_to_buffers, *signature.inputs_to_parameters,
              *signature.inputs_to_lifted_tensor_constants}
    graph = program.graph
    for node in list(graph.nodes):
        for position, arg in enumerate(node.args):
            if not isinstance(arg, (list, tuple)):
                continue
            if not any(isinstance(a, torch.fx.Node) and a.name in lifted for a in arg):
                continue
            with graph.inserting_before(node):
                items = [_cloned(graph, a) if isinstance(a, torch.fx.Node) and a.name in lifted
                         else a for a in arg]
            node.update_arg(position, type(arg)(items))
    program.graph_module.recompile()


def _cloned(graph, value):
    import torch
    clone = graph.call_function(torch.ops.aten.clone.default, (value,))
    clone.meta["val"] = value.meta["val"]
    return clone


def _drop_constant_mask_identities(program) -> None:
    """Rewrite `all-true & mask` to `mask` and `all-false | mask` to `mask`, and the other
    `&` / `|` of tensors to bitwise_and / bitwise_or. Hugging Face's masking utilities seed
    their combined attention mask with new_ones((), dtype=bool) and combine masks with `&`;
    torch-mlir folds the seed into a bool literal it cannot lower ('failed to legalize
    torch.vtensor.literal', llvm/torch-mlir#4625) and has no lowering for aten.__and__.Tensor,
    so GPT-2, Llama and kin fail at legalize without this."""
    import torch
    aten = torch.ops.aten
    bitwise = {aten.__and__.Tensor: aten.bitwise_and.Tensor,
               aten.__or__.Tensor: aten.bitwise_or.Tensor}
    identity_of = {aten.__and__.Tensor: True, aten.bitwise_and.Tensor: True,
                   aten.logical_and.default: True, aten.__or__.Tensor: False,
                   aten.bitwise_or.Tensor: False, aten.logical_or.default: False}
    graph = program.graph
    for node in list(graph.nodes):
        identity = identity_of.get(node.target)
        if identity is None or len(node.args) != 2:
            continue
        for constant, other in (node.args, node.args[::-1]):
            if _constant_bool(constant) is identity and isinstance(other, torch.fx.Node):
                _replace_by(graph, node, other)
                break
        else:
            node.target = bitwise.get(node.target, node.target)
    graph.eliminate_dead_code()
    program.graph_module.recompile()


def _constant_bool(node) -> bool | None:
    """True/False where node makes a bool tensor filled with that value, else None."""
    import torch
    aten = torch.ops.aten
    if not isinstance(node, torch.fx.Node) or node.op != "call_function":
        return None
    if getattr(node.meta.get("val"), "dtype", None) != torch.bool:
        return None
    fills = {aten.new_ones.default: True, aten.ones.default: True,
             aten.new_zeros.default: False, aten.zeros.default: False}
    if node.target in fills:
        return fills[node.target]
    if node.target in (aten.full.default, aten.new_full.default):
        fill = node.args[1] if node.target is aten.full.default else node.args[2]
        return bool(fill) if isinstance(fill, (bool, int, float)) else None
    return None


def _replace_by(graph, node, value) -> None:
    """Replace node's uses by value, broadcast to node's shape where it is smaller."""
    import torch
    shape = list(node.meta["val"].shape)
    if list(value.meta["val"].shape) != shape:
        with graph.inserting_before(node):
            value = graph.call_function(torch.ops.aten.expand.default, (value, shape))
            value.meta["val"] = node.meta["val"]
    node.replace_all_uses_with(value)


def _state_dict_names(program):
    """Importer hooks that name each weight's constant by its state-dict key
    ('layer1.0.conv1.weight'), so the parameter archive says where a weight sits in the model
    (the importer's own names say only its shape)."""
    import torch
    from iree.compiler.extras.fx_importer import (
        TORCH_DTYPE_TO_NPY_TYPE,
        DenseResourceElementsAttr,
        FxImporterHooks,
        Operation,
        create_mlir_tensor_type,
    )
    names = {id(t): name for name, t in {**program.state_dict, **program.constants}.items()
             if isinstance(t, torch.Tensor)}

    class StateDictNames(FxImporterHooks):
        def resolve_literal(self, gni, literal, info):
            name = names.get(id(literal))
            dtype = TORCH_DTYPE_TO_NPY_TYPE.get(getattr(literal, "dtype", None))
            if name is None or dtype is None or literal.dtype == torch.bool or literal.numel() <= 1:
                return None   # the importer's default
            data = literal.detach().contiguous().reshape(-1).view(torch.uint8).numpy().copy()
            value = DenseResourceElementsAttr.get_from_buffer(
                data.view(dtype), name, create_mlir_tensor_type(literal))
            return Operation.create("torch.vtensor.literal", attributes={"value": value},
                                    results=[gni._cc.tensor_to_vtensor_type(literal)]).result

    return StateDictNames()


def _signature(program) -> list[tuple[str, list, str]]:
    """(name, dims, dtype) of each user input, from the placeholders' fake tensors."""
    import torch
    user_inputs = set(program.graph_signature.user_inputs)
    signature = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            value = node.meta["val"]
            dims = [d if isinstance(d, int) else None for d in value.shape]
            dtype = str(torch.empty((), dtype=value.dtype).numpy().dtype)
            signature.append((node.name, dims, dtype))
    return signature


ADAPTER = PyTorch()
