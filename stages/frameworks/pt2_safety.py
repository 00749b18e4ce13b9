"""A .pt2 is read as data only: whatever in it torch.export.load would run as code is refused,
by name, before and while torch reads the file.

torch.export.load runs code from the file it loads (torch 2.13: torch/export/__init__.py load,
torch/export/pt2_archive/_package.py load_pt2, torch/_export/serde/serialize.py):
 - a weight or constant marked use_pickle is read with torch.load(weights_only=False), an
   opaque_obj_ constant with pickle.loads, a custom_obj_ one with TorchScript's unpickler;
 - data/sample_inputs/<model>.pt (in every file), and the pickled parts of the pre-2.8 layout
   ("version" at the top), go through torch.load(weights_only=True) and, when that refuses
   them, again with weights_only=False;
 - a symbolic shape's expr_str is parsed by sympy.sympify, which is eval();
 - data/aotinductor/<model>/*.so is dlopen()ed (its constructors run).
An op namespace the program uses is registered only by importing one of torch's own modules
that defines it (TORCH_OP_LIBRARIES: PyTorch 2 Export quantization's quantized_decomposed
ops); a custom op of any other namespace is refused by name, never imported from wherever the
file says. refuse_code() looks at the archive first, through the same readers torch uses
(torch's own zip reader for the current layout, zipfile for the old one); loading_as_data()
turns every torch.load inside the load into weights_only=True, whatever torch passes, and
names the entry it refused.
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import io
import json
import os
import pickle
import re
import threading
import zipfile
from pathlib import Path

from pipeline.stage import StageError

PICKLE_ADVICE = ("unpickling runs whatever code the file names, so kiln does not load it; "
                 "re-export the model so that every weight, constant and example input is a plain "
                 "tensor (torch.export.save writes those as raw bytes; tensor subclasses, script "
                 "objects and other Python objects are pickled)")
# op namespaces torch defines in a module it does not import by itself, and that module: a
# .pt2 from PyTorch 2 Export quantization (convert_pt2e, XNNPACK or X86 quantizer; in torchao
# since torch 2.10) calls quantized_decomposed ops, which torch.export.load cannot resolve
# until it is imported. Only torch's own modules are listed: importing one runs torch's code.
TORCH_OP_LIBRARIES = {"quantized_decomposed": "torch.ao.quantization.fx._decomposed"}
_UNRESOLVED_OP = re.compile(r"failed to resolve (torch\.ops\.([\w]+)\.[\w.]+) to an operator")
_TORCH_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_TORCH_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
_ENVIRON_LOCK = threading.Lock()   # one load at a time sets and restores torch's switch


def refuse_code(path: Path) -> None:
    """Raise StageError naming the first entry of the archive that torch would run as code
    (native code, a pickled weight or constant, a symbolic shape that is not plain sympy)."""
    from torch.export.pt2_archive import PT2ArchiveReader
    _refuse_old_layout(path)
    try:
        reader = PT2ArchiveReader(str(path))
    except (RuntimeError, AssertionError):
        return   # not the current layout: torch.export.load reads only the old one, checked first
    names = reader.get_file_names()
    _refuse_native_code(path, names)
    for entry, model in _model_entries(names):
        _refuse_sym_exprs(path, entry, reader.read_bytes(entry))
        _refuse_pickled_tensors(path, reader, names, model)


def _refuse_old_layout(path: Path) -> None:
    """The pre-2.8 layout's program (what torch's fallback reads, with zipfile)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if "version" in archive.namelist():
                for info in archive.infolist():
                    if info.filename == "serialized_exported_program.json":
                        _refuse_sym_exprs(path, info.filename, archive.read(info))
    except (OSError, zipfile.BadZipFile) as err:
        raise StageError(f"{path.name}: not a .pt2 archive written by torch.export.save "
                         f"({err})") from None


def _refuse_native_code(path: Path, names: list[str]) -> None:
    from torch.export.pt2_archive import constants as pt2
    for name in names:
        if name.startswith(pt2.AOTINDUCTOR_DIR):
            raise StageError(f"{path.name}: entry {name} is AOTInductor native code, which "
                             "torch.export.load loads and runs; kiln does not load it. Give kiln "
                             "the exported program (torch.export.save), not an AOTInductor "
                             "package")


def _model_entries(names: list[str]) -> list[tuple[str, str]]:
    """(entry, model name) of each exported program in the archive, as load_pt2 picks them."""
    from torch.export.pt2_archive import constants as pt2
    prefix, suffix = pt2.MODELS_FILENAME_FORMAT.split("{}")
    return [(name, name[len(prefix):-len(suffix)]) for name in names if name.startswith(prefix)]


def _refuse_pickled_tensors(path: Path, reader, names: list[str], model: str) -> None:
    """A model's weights and constants must be raw tensor bytes, not pickles: their configs
    say which entry holds each and whether torch unpickles it."""
    from torch.export.pt2_archive import constants as pt2
    for config_format, folder, kind in (
            (pt2.WEIGHTS_CONFIG_FILENAME_FORMAT, pt2.WEIGHTS_DIR, "weight"),
            (pt2.CONSTANTS_CONFIG_FILENAME_FORMAT, pt2.CONSTANTS_DIR, "constant")):
        config_name = config_format.format(model)
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
                                 f"pickled data; {PICKLE_ADVICE}")


def register_torch_op_libraries() -> None:
    """Import torch's own modules that register the op namespaces of TORCH_OP_LIBRARIES (cheap,
    16 ms: quantized_decomposed), so that a program calling them deserializes."""
    import importlib
    for module in TORCH_OP_LIBRARIES.values():
        importlib.import_module(module)


def unresolved_op(path: Path, errors) -> StageError | None:
    """The error for a program calling an op no imported module registers (torch's
    SerializeError 'failed to resolve torch.ops.ns.op'), or None where that is not the cause."""
    for error in errors:
        while error is not None:
            found = _UNRESOLVED_OP.search(str(error))
            if found:
                op, namespace = found.groups()
                return StageError(
                    f"{path.name}: the program calls {op}, a custom op that only the package "
                    f"defining namespace {namespace!r} registers; kiln registers only torch's own "
                    f"op libraries ({', '.join(TORCH_OP_LIBRARIES)}) and does not import code a "
                    ".pt2 names. Export the model without the custom op (or decompose it into "
                    "ATen ops before torch.export.save)")
            error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def loading_as_data(path: Path):
    """Every torch.load in the block loads with weights_only=True, even where torch passes False
    (torch's own switch, read on each call; the opposite switch would make torch.load fail). A
    pickle that this refuses becomes a StageError naming its entry."""
    with _ENVIRON_LOCK:
        saved = {k: os.environ.pop(k, None) for k in (_TORCH_WEIGHTS_ONLY, _TORCH_NO_WEIGHTS_ONLY)}
        os.environ[_TORCH_WEIGHTS_ONLY] = "1"
        try:
            yield
        except pickle.UnpicklingError as err:
            raise StageError(_refused_pickle(path, err)) from None
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
            f"{PICKLE_ADVICE}")


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
            if isinstance(text, str) and text not in checked and not plain_sym_expr(text):
                raise StageError(f"{path.name}: {entry} holds a symbolic shape expression that is "
                                 f"not plain sympy ({text[:80]!r}); torch would run it as Python "
                                 "code, so kiln does not load the file. Re-export it with "
                                 "torch.export.save")
            checked.add(text)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


def plain_sym_expr(text: str) -> bool:
    """Only sympy expression classes called with numbers, symbols' names and sympy values: no
    attribute, subscript, builtin or other function, no string but a Symbol's name or a Float's
    digits (sympify runs the text with eval, and sympifies strings it is given again)."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return False
    strings = set()   # the string literals allowed: a Symbol's name, a Float's digits
    for node in ast.walk(tree):   # breadth first: a call is seen before its arguments
        if not isinstance(node, _SYM_EXPR_NODES) or not _plain_node(node, strings):
            return False
    return True


def _plain_node(node: ast.AST, strings: set[int]) -> bool:
    """One node of a plain sympy expression; a call adds the id of its string argument that
    is a Symbol's name or a Float's digits to `strings`."""
    if isinstance(node, ast.Name):
        return _sympy_name(node.id)
    if isinstance(node, ast.Call):
        # the callee is a Name, checked as one: a sympy class, or a name sympify makes an
        # undefined Function of (as srepr's ExprCondPair, which sympy does not export)
        if not isinstance(node.func, ast.Name) or any(k.arg is None for k in node.keywords):
            return False
        first = node.args[0] if node.args else None
        pattern = _SYM_EXPR_STRINGS.get(node.func.id)
        if (pattern and isinstance(first, ast.Constant) and isinstance(first.value, str)
                and re.fullmatch(pattern, first.value)):
            strings.add(id(first))
        return True
    if isinstance(node, ast.keyword):
        return isinstance(node.value, ast.Constant) and not isinstance(node.value.value, str)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):
            return id(node) in strings
        return isinstance(node.value, (int, float)) or node.value is None
    return True


def _sympy_name(name: str) -> bool:
    """A name that is no builtin and, where sympy (or torch's sympy functions) defines it, a
    sympy class or value."""
    import sympy
    from torch.utils._sympy import functions
    if name.startswith("_") or hasattr(builtins, name):
        return False
    found = [getattr(m, name) for m in (sympy, functions) if hasattr(m, name)]
    return all(isinstance(f, sympy.Basic) or isinstance(f, type) and issubclass(f, sympy.Basic)
               for f in found)
