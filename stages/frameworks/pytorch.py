"""PyTorch adapter: torch.export capture, .pt2 interchange, turbine decompositions + FxImporter.

Accepts a models/ factory (torch.nn.Module + example inputs) or a user's .pt2 file. A .pt2
whose outputs are custom pytree classes (a Hugging Face model's BaseModelOutput, a
registered dataclass) loads once the module registering each class is imported: load_program
imports it by the class's qualified name, and says which package to install or put on
PYTHONPATH where it cannot. Outputs of any registered pytree are compared leaf by leaf, in
the order the exported program returns them. A .pt2 is read as data only: an entry torch would
unpickle beyond plain tensors, evaluate as Python or load as native code is refused, by name.

Import order matters: without turbine's decomposition table ResNet leaves ops IREE rejects
(relu_, _native_batch_norm_legit_no_training). FxImporter mutates the program it imports, so
the .pt2 is loaded afresh for each import.
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import importlib
import io
import json
import logging
import os
import pickle
import re
import threading
import warnings
import zipfile
from pathlib import Path

from pipeline.stage import ModelSpec, StageError

from .base import Framework, Traced
from .factory import load_factory
from .inputs import model_inputs


def _flatten(value):
    """The output's tensors in pytree order: the order of the exported graph's outputs, which
    is what the compiled module returns (a dict keeps its insertion order, a dataclass or a
    ModelOutput its field order; sorting dict keys would misalign them)."""
    import torch
    from torch.utils._pytree import tree_leaves
    leaves = tree_leaves(value)
    others = sorted({type(leaf).__name__ for leaf in leaves if not isinstance(leaf, torch.Tensor)})
    if others:
        raise StageError(f"model output holds {', '.join(others)}, not only tensors: outputs must be "
                         "tensors, tuples/lists/dicts of them, or registered pytree classes")
    return [leaf.detach().numpy() for leaf in leaves]


# torch.export.load logs the real deserialization error under this logger and raises only
# "check the warnings above"; the class it names is the one to register
_EXPORT_LOGGER = "torch.export"
_UNREGISTERED = re.compile(r"Deserializing ([\w.]+) in pytree is not registered")


def load_program(path: Path):
    """torch.export.load, importing the module that registers each pytree class the program's
    inputs/outputs use but this process has not seen (one per retry: several may be missing).
    A .pt2 is data: whatever in it would run code as it loads is refused (_refuse_code)."""
    import torch
    _refuse_code(path)
    imported: set[str] = set()
    while True:
        with _logged_errors(_EXPORT_LOGGER) as logged, _weights_only():
            try:
                return torch.export.load(str(path))
            except RuntimeError as err:
                failure = err
            except pickle.UnpicklingError as err:   # the forced weights_only=True refused it
                raise StageError(_refused_pickle(path, err)) from None
        missing = _unregistered_class([failure, *logged])
        if missing is None:   # the logged error is the real one; the raised one only points at it
            raise logged[-1] if logged else failure
        if missing in imported:   # its module imported fine yet did not register it
            raise StageError(f"{path.name}: importing the module of pytree class {missing} did not "
                             "register it; import the module that calls register_pytree_node / "
                             "register_dataclass for it") from None
        _import_module_of(missing, path)
        imported.add(missing)


# torch.export.load runs code from the file it loads (torch 2.13: torch/export/__init__.py load,
# torch/export/pt2_archive/_package.py load_pt2, torch/_export/serde/serialize.py):
#  - a weight or constant marked use_pickle is read with torch.load(weights_only=False), an
#    opaque_obj_ constant with pickle.loads, a custom_obj_ one with TorchScript's unpickler;
#  - data/sample_inputs/<model>.pt (in every file), and the pickled parts of the pre-2.8 layout
#    ("version" at the top), go through torch.load(weights_only=True) and, when that refuses
#    them, again with weights_only=False;
#  - a symbolic shape's expr_str is parsed by sympy.sympify, which is eval();
#  - data/aotinductor/<model>/*.so is dlopen()ed (its constructors run).
# _refuse_code looks at the archive first, through the same readers torch uses (torch's own zip
# reader for the current layout, zipfile for the old one), and _weights_only turns every
# torch.load inside torch.export.load into weights_only=True, whatever torch passes.
_PICKLE_ADVICE = ("unpickling runs whatever code the file names, so kiln does not load it; "
                  "re-export the model so that every weight, constant and example input is a plain "
                  "tensor (torch.export.save writes those as raw bytes; tensor subclasses, script "
                  "objects and other Python objects are pickled)")
_TORCH_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_TORCH_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
_ENVIRON_LOCK = threading.Lock()   # one load at a time sets and restores torch's switch


def _refuse_code(path: Path) -> None:
    from torch.export.pt2_archive import PT2ArchiveReader
    from torch.export.pt2_archive import constants as pt2
    try:
        with zipfile.ZipFile(path) as archive:   # what the pre-2.8 fallback reads
            if "version" in archive.namelist():
                for info in archive.infolist():
                    if info.filename == "serialized_exported_program.json":
                        _refuse_sym_exprs(path, info.filename, archive.read(info))
    except (OSError, zipfile.BadZipFile) as err:
        raise StageError(f"{path.name}: not a .pt2 archive written by torch.export.save "
                         f"({err})") from None
    try:
        reader = PT2ArchiveReader(str(path))
    except (RuntimeError, AssertionError):
        return   # not the current layout: torch.export.load reads only the old one, checked above
    names = reader.get_file_names()
    for name in names:
        if name.startswith(pt2.AOTINDUCTOR_DIR):
            raise StageError(f"{path.name}: entry {name} is AOTInductor native code, which "
                             "torch.export.load loads and runs; kiln does not load it. Give kiln "
                             "the exported program (torch.export.save), not an AOTInductor "
                             "package")
    prefix, suffix = pt2.MODELS_FILENAME_FORMAT.split("{}")
    for name in names:
        if not name.startswith(prefix):   # as load_pt2 picks the models out
            continue
        model = name[len(prefix):-len(suffix)]
        _refuse_sym_exprs(path, name, reader.read_bytes(name))
        for config_name, folder, kind in (
                (pt2.WEIGHTS_CONFIG_FILENAME_FORMAT, pt2.WEIGHTS_DIR, "weight"),
                (pt2.CONSTANTS_CONFIG_FILENAME_FORMAT, pt2.CONSTANTS_DIR, "constant")):
            config_name = config_name.format(model)
            if config_name not in names:
                continue
            config = _json(reader.read_bytes(config_name))
            config = config.get("config") if isinstance(config, dict) else None
            for fqn, meta in config.items() if isinstance(config, dict) else ():
                meta = meta if isinstance(meta, dict) else {}   # torch fails on it, unpickled
                entry = meta.get("path_name")
                raw = not meta.get("use_pickle") and (
                    kind == "weight" or str(entry).startswith(pt2.TENSOR_CONSTANT_FILENAME_PREFIX))
                if not raw:
                    raise StageError(f"{path.name}: entry {folder}{entry} ({kind} {fqn!r}) holds "
                                     f"pickled data; {_PICKLE_ADVICE}")


@contextlib.contextmanager
def _weights_only():
    """Every torch.load in the block loads with weights_only=True, even where torch passes False
    (torch's own switch, read on each call; the opposite switch would make torch.load fail)."""
    with _ENVIRON_LOCK:
        saved = {k: os.environ.pop(k, None) for k in (_TORCH_WEIGHTS_ONLY, _TORCH_NO_WEIGHTS_ONLY)}
        os.environ[_TORCH_WEIGHTS_ONLY] = "1"
        try:
            yield
        finally:
            for key, value in saved.items():
                os.environ.pop(key, None)
                if value is not None:
                    os.environ[key] = value


def _refused_pickle(path: Path, err: Exception) -> str:
    """The message for a pickled entry weights_only=True refused: which entry, and what in it."""
    import torch
    from torch.export.pt2_archive import PT2ArchiveReader
    culprit, reason = "an entry", str(err)
    with zipfile.ZipFile(path) as archive:   # the .pt entries torch.load reads, either layout
        try:
            reader = PT2ArchiveReader(str(path))
            entries = [(name, reader.read_bytes) for name in reader.get_file_names()
                       if name.endswith(".pt")]
        except (RuntimeError, AssertionError):
            entries = []
        entries += [(name, archive.read) for name in archive.namelist()
                    if "/" not in name and name.endswith(".pt")]
        for name, read in entries:
            try:
                torch.load(io.BytesIO(read(name)), weights_only=True)
            except pickle.UnpicklingError as refused:
                culprit, reason = f"entry {name}", str(refused)
                break
    found = re.search(r"GLOBAL ([\w.]+)", reason)   # what it would call
    what = f" (it names {found.group(1)})" if found else ""
    return (f"{path.name}: {culprit} holds pickled data that is not only tensors{what}; "
            f"{_PICKLE_ADVICE}")


# what a torch.export.save'd expr_str is: sympy's srepr, e.g.
# Mul(Integer(2), Symbol('s65', positive=True, integer=True))
_SYM_EXPR_NODES = (ast.Expression, ast.Call, ast.Name, ast.Load, ast.Constant, ast.keyword,
                   ast.Tuple, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.operator,
                   ast.unaryop, ast.boolop, ast.cmpop)
_SYM_EXPR_STRINGS = {"Symbol": r"[A-Za-z_]\w*", "Dummy": r"[A-Za-z_]\w*",
                     "Float": r"[-+]?(\d+\.?\d*([eE][-+]?\d+)?|inf|nan)"}


def _json(data: bytes):
    """The JSON as torch reads it (decoded as UTF-8 first); None where torch fails to."""
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError:
        return None


def _refuse_sym_exprs(path: Path, entry: str, data: bytes) -> None:
    """Refuse a program whose symbolic shapes are not plain sympy: torch evaluates each
    expr_str with sympy.sympify, i.e. as Python."""
    pending, checked = [_json(data)], set()
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            text = value.get("expr_str")
            if isinstance(text, str) and text not in checked and not _plain_sym_expr(text):
                raise StageError(f"{path.name}: {entry} holds a symbolic shape expression that is "
                                 f"not plain sympy ({text[:80]!r}); torch would run it as Python "
                                 "code, so kiln does not load the file. Re-export it with "
                                 "torch.export.save")
            checked.add(text)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


def _plain_sym_expr(text: str) -> bool:
    """Only sympy expression classes called with numbers, symbols' names and sympy values: no
    attribute, subscript, builtin or other function, no string but a Symbol's name or a Float's
    digits (sympify runs the text with eval, and sympifies strings it is given again)."""
    import sympy
    from torch.utils._sympy import functions
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return False
    strings = set()   # the string literals allowed: a Symbol's name, a Float's digits
    for node in ast.walk(tree):
        if not isinstance(node, _SYM_EXPR_NODES):
            return False
        if isinstance(node, ast.Name):
            if node.id.startswith("_") or hasattr(builtins, node.id):
                return False
            found = [getattr(m, node.id) for m in (sympy, functions) if hasattr(m, node.id)]
            if not all(isinstance(f, sympy.Basic) or isinstance(f, type) and
                       issubclass(f, sympy.Basic) for f in found):
                return False
        elif isinstance(node, ast.Call):
            # the callee is a Name, checked as one: a sympy class, or a name sympify makes an
            # undefined Function of (as srepr's ExprCondPair, which sympy does not export)
            if not isinstance(node.func, ast.Name) or any(k.arg is None for k in node.keywords):
                return False
            first = node.args[0] if node.args else None
            pattern = _SYM_EXPR_STRINGS.get(node.func.id)
            if (pattern and isinstance(first, ast.Constant) and isinstance(first.value, str)
                    and re.fullmatch(pattern, first.value)):
                strings.add(id(first))
        elif isinstance(node, ast.keyword) and not (
                isinstance(node.value, ast.Constant) and not isinstance(node.value.value, str)):
            return False
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, str) and id(node) not in strings:
                return False
            if not isinstance(node.value, (int, float, str)) and node.value is not None:
                return False
    return True


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
        return _unregistered_class([error]) is None

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
                                 f"failed: no module named {err.name!r} (install it)") from None
        except Exception as err:   # the module is there but fails to import
            raise StageError(f"{path.name}: the program uses {class_name}; importing {module} "
                             f"failed: {type(err).__name__}: {err}") from None
    module_path = ".".join(parts[:-1]) or class_name
    raise StageError(f"{path.name}: the program uses the pytree class {class_name}, which only its "
                     f"own package registers, and {module_path} cannot be imported: install the "
                     f"package that provides {parts[0]!r} (e.g. pip install {parts[0]}) or put its "
                     "folder on PYTHONPATH")


# torch 2.13's own pytree code trips this deprecation when a .pt2 is loaded; it is noise
warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)


class PyTorch(Framework):
    name = "torch"
    extra = "torch"
    modules = ("torch", "iree.turbine")
    dists = ("torch", "iree-turbine")
    suffixes = (".pt2",)
    input_type = "torch"
    captured = ("exported.pt2",)
    serialized = "model.pt2"

    def trace(self, model: ModelSpec) -> Traced:
        import torch
        torch.manual_seed(model.seed)
        if model.factory:
            module, inputs = load_factory(model.factory)()
            if model.input_files():   # the user's own inputs replace build()'s examples
                inputs = [torch.from_numpy(a) for a in model_inputs(model, [
                    (f"arg{i}", list(t.shape), str(t.numpy().dtype)) for i, t in enumerate(inputs)])]
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
                      reference=_flatten(reference))

    def write_artifact(self, program, path: Path) -> None:
        import torch
        torch.export.save(program, str(path))

    def serialize(self, capture_dir: Path, out_dir: Path) -> None:
        # the zip's top folder is the file stem: a fixed name keeps the bytes reproducible
        program = load_program(capture_dir / self.captured[0])
        self.write_artifact(program, out_dir / self.serialized)

    def import_mlir(self, serialized_file: Path, mlir_file: Path) -> None:
        from iree.compiler.extras.fx_importer import FxImporter
        from iree.turbine.aot import current_aot_decompositions

        from stages.mlir import write_stripped
        program = load_program(serialized_file).run_decompositions(current_aot_decompositions())
        importer = FxImporter(hooks=_state_dict_names(program))
        importer.import_frozen_program(program)
        write_stripped(importer.module, mlir_file)

    timing_threads = "torch.set_num_threads"

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


def _state_dict_names(program):
    """Importer hooks that name each weight's constant by its state-dict key
    ('layer1.0.conv1.weight'), so the parameter archive says where a weight sits in the model
    (the importer's own names say only its shape)."""
    import torch
    from iree.compiler.extras.fx_importer import (TORCH_DTYPE_TO_NPY_TYPE, DenseResourceElementsAttr,
                                                  FxImporterHooks, Operation,
                                                  create_mlir_tensor_type)
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
