"""Which models exist and what each one is: files in models/, entries in the config's
`models:` section, and paths given on the command line.

A models/ file names its framework in a module-level `FRAMEWORK = "..."` and defines
`build()`; it is read with ast, never imported here, so listing models stays cheap.
"""
from __future__ import annotations

import ast
import errno
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Callable

from ..stage import ConfigError, ModelSpec, StageError
from .config import Config, check_name

# framework detection for model files is the stages' knowledge, handed in by the caller
Detect = Callable[[Path | str], str | None]   # (a folder scan hands the text path)
# the files a model file brings along (e.g. an ONNX model's external data), by role
Companions = Callable[[str, Path], dict[str, Path]]


def no_companions(framework: str, path: Path) -> dict[str, Path]:
    return {}


def input_sources(inputs, root: Path, what: str) -> dict[str, Path]:
    """User-given inputs as sources: a .npz/.npy path, or {name or position: .npy path}.

    Their content enters the capture key like the model's own files."""
    if inputs is None:
        return {}
    named = {"": inputs} if isinstance(inputs, str) else inputs
    sources = {}
    for name, rel in named.items():
        path = (root / str(rel)).resolve()
        if not path.is_file():
            raise ConfigError(f"{what}: {path} does not exist (give a .npz or .npy file)")
        if path.suffix not in (".npz", ".npy"):
            raise ConfigError(f"{what}: {path} is not a .npz or .npy file")
        sources[f"inputs:{name}" if name != "" else "inputs"] = path
    return sources


def _framework_assignment(py_file: Path) -> ast.Assign | None:
    """A models/ file's `FRAMEWORK = "..."`, or None (a helper module, not a model). A file
    that cannot be parsed raises ConfigError naming its line: left out silently, selecting
    its model would say only "unknown model"."""
    try:
        tree = ast.parse(py_file.read_text(), str(py_file))
    except SyntaxError as err:
        raise ConfigError(f"{py_file}:{err.lineno}: syntax error: {err.msg}: "
                          f"{(err.text or '').strip()}") from None
    except ValueError as err:   # undecodable bytes, or a null byte (Python 3.11)
        raise ConfigError(f"{py_file}: cannot be read as Python: {err}") from None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "FRAMEWORK"
                and isinstance(node.value, ast.Constant)):
            return node
    return None


def _framework_of(py_file: Path) -> str | None:
    node = _framework_assignment(py_file)
    return node.value.value if node else None


def local_imports(py_file: Path, root: Path) -> dict[str, Path]:
    """The project's own modules a factory file imports, transitively (role 'import:<path>').

    A factory's key must change when a helper it imports changes; modules outside root
    (installed packages, the standard library) are covered by tool versions, not here.
    Imports are resolved the way the factory is run: next to the importing file, then from
    the project root; found by reading files with ast, never by importing them."""
    root = root.resolve()
    found: dict[str, Path] = {}
    pending = [py_file.resolve()]
    while pending:
        current = pending.pop()
        try:
            tree = ast.parse(current.read_text(), str(current))
        except (OSError, SyntaxError, ValueError):
            continue
        for module in _imported_modules(tree, current):
            for path in _module_files(module, [current.parent, root]):
                if path.is_relative_to(root) and path != py_file.resolve() \
                        and f"import:{path.relative_to(root)}" not in found:
                    found[f"import:{path.relative_to(root)}"] = path
                    pending.append(path)
    return dict(sorted(found.items()))


def _imported_modules(tree: ast.Module, current: Path) -> list[tuple[Path | None, str]]:
    """(base directory for a relative import or None, dotted name) of every import."""
    modules = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules += [(None, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = None
            if node.level:
                base = current.parent
                for _ in range(node.level - 1):
                    base = base.parent
            prefix = node.module or ""
            modules.append((base, prefix))
            modules += [(base, f"{prefix}.{a.name}".strip(".")) for a in node.names]
    return modules


def _module_files(module: tuple[Path | None, str], search: list[Path]) -> list[Path]:
    base, dotted = module
    parts = [p for p in dotted.split(".") if p]
    files = []
    for directory in ([base] if base is not None else search):
        stem = directory.joinpath(*parts) if parts else directory
        for candidate in (stem.with_suffix(".py") if parts else None, stem / "__init__.py"):
            if candidate is not None and candidate.is_file():
                files.append(candidate.resolve())
    return files


def discover(model_dirs: list[Path], root: Path | None = None,
             reserved: frozenset[str] = frozenset()) -> dict[str, ModelSpec]:
    models = {}
    for directory in model_dirs:
        for py_file in sorted(directory.glob("*.py")):
            try:
                framework = _framework_of(py_file)
            except ConfigError:   # unreadable() says why, where it matters
                continue
            if framework and py_file.stem not in models:
                check_name(py_file.stem, f"{py_file}: model", reserved)
                sources = {"model": py_file, **local_imports(py_file, root or directory.parent)}
                models[py_file.stem] = ModelSpec(py_file.stem, framework, sources,
                                                 factory=f"{py_file}:build")
    return models


def unreadable(model_dirs: list[Path], known: dict) -> dict[str, str]:
    """models/ files that cannot be parsed and whose name no known model takes, by name, with
    why: selecting one is an error saying why, and otherwise they stop nothing."""
    found: dict[str, str] = {}
    for directory in model_dirs:
        for py_file in sorted(directory.glob("*.py")):
            if py_file.stem not in known and py_file.stem not in found:
                try:
                    _framework_assignment(py_file)
                except ConfigError as err:
                    found[py_file.stem] = str(err)
    return found


def left_out(unreadable: dict[str, str]) -> list[str]:
    """Unreadable files no one selected: a warning, never a stop for the other models."""
    return [f"kiln: warning: model {name} left out: {why}" for name, why in unreadable.items()]


def check_frameworks(models: list[ModelSpec], stages: list, config: Config) -> None:
    """A framework no adapter serves (a misspelt `framework:`) is refused by the stages, which
    know the adapters; as a ConfigError that says where the model names it, before any run."""
    for model in models:
        try:
            for stage in stages:   # (the framework stages are per model: asked of no target)
                if not stage.per_target:
                    stage.applies_to(model, None)
        except StageError as err:
            raise ConfigError(f"{framework_field(model, config)}: {err}") from None


def framework_field(model: ModelSpec, config: Config) -> str:
    """Where a model's framework is named, for errors about it: its config entry's field, or
    its models/ file's FRAMEWORK line."""
    decl = config.models.get(model.name)
    if decl is not None:
        return f"{decl.framework_at}: models.{model.name}.framework"
    path = Path(model.sources.get("model", model.name))
    node = _framework_assignment(path) if path.suffix == ".py" else None
    return f"{path}:{node.lineno}: FRAMEWORK" if node else f"{path}: framework"


def _factory_spec(factory: str, root: Path) -> tuple[str, Path | None]:
    """'pkg.mod:fn' or 'path/to/file.py:fn' -> (factory string, file that fingerprints it)."""
    module, _, function = factory.rpartition(":")
    if not module or not function:
        raise ConfigError(f"factory '{factory}': expected 'module:function' or 'file.py:function'")
    if module.endswith(".py"):
        path = (root / module).resolve()
        if not path.is_file():
            raise ConfigError(f"factory '{factory}': {path} does not exist")
        return f"{path}:{function}", path
    # a module's source is found (not imported: that may pull in a framework) so that its
    # content, like a file factory's, enters the capture key
    if str(root) not in sys.path:
        sys.path.append(str(root))
    try:
        spec = importlib.util.find_spec(module)
    except ImportError:
        spec = None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise ConfigError(f"factory '{factory}': cannot find module '{module}' "
                          f"(on sys.path or under {root})")
    return factory, Path(spec.origin)


def from_config(config: Config, detect: Detect,
                companions: Companions = no_companions) -> dict[str, ModelSpec]:
    models = {}
    for decl in config.models.values():
        sources, factory = {}, None
        if decl.file:
            path = (config.root / decl.file).resolve()
            if not path.exists():
                raise ConfigError(f"{config.path}: models.{decl.name}.file: {path} does not exist")
            sources["model"] = path
            framework = decl.framework or detect(path)
            if framework is None:
                raise ConfigError(f"{config.path}: models.{decl.name}: cannot tell the framework "
                                  f"of {path}; set 'framework'")
            sources.update(companions(framework, path))
        else:
            try:
                factory, path = _factory_spec(decl.factory, config.root)
            except ConfigError as err:
                raise ConfigError(f"{config.path}: models.{decl.name}.factory: {err}") from None
            if path is not None:
                sources["model"] = path
                sources.update(local_imports(path, config.root))
            framework = decl.framework
        what = f"{config.path}: models.{decl.name}"
        sources.update(input_sources(decl.inputs, config.root, f"{what}.inputs"))
        if decl.params_threshold is not None and decl.params_threshold < 1:
            raise ConfigError(f"{what}.params_threshold: expected a whole number of elements "
                              f">= 1, got {decl.params_threshold}")
        models[decl.name] = ModelSpec(
            decl.name, framework, sources, factory=factory, shapes=decl.shapes, atol=decl.atol,
            rtol=decl.rtol, seed=decl.seed, weights=decl.params,
            **({} if decl.params_threshold is None else {"weights_threshold": decl.params_threshold}))
    return models


def from_path(path: Path, detect: Detect, shapes: dict, inputs: str | None = None,
              companions: Companions = no_companions,
              reserved: frozenset[str] = frozenset()) -> ModelSpec:
    framework = detect(path)
    if framework is None:
        raise ConfigError(f"model={path}: not a model file kiln can read "
                          "(.pt2, .onnx, .tflite, a SavedModel directory, .mlir, .mlirbc)")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.name)
    # the substitution leaves a leading dot, an empty name or a stage name as they are
    check_name(name, f"model={path}: model", reserved)
    # absolute, not resolved: a symlinked file (a hub cache) keeps its companions beside it
    sources = {"model": path.absolute(), **companions(framework, path.absolute()),
               **input_sources(inputs, Path.cwd(), "inputs=")}
    return ModelSpec(name, framework, sources, shapes=shapes)


# --- a folder of models: model=DIR, a matrix's `suite: DIR` -------------------------------

def scan_folder(folder: Path, detect: Detect) -> dict:
    """Every model under folder, as {"models": [[path, framework, is a directory], ...],
    "dirs": [...]}: each file or directory a framework reads (detect), sorted by path. Other
    directories are searched (a linked one once), hidden ones and a model directory's insides
    (a SavedModel's) not. "dirs" lists every directory looked in: the answer holds while none
    of them changed (pipeline.plan.facts keeps it by their stats, so a second plan of a
    1,000-case folder lists nothing)."""
    # (paths as strings, one Path per entry for detect: a 2,000-case folder has 12,000)
    found, dirs = [], []
    pending = [(os.path.abspath(folder), os.path.realpath(folder))]   # (path, its realpath)
    seen = set()
    while pending:
        directory, real = pending.pop()
        if real in seen:   # a link back up the tree
            continue
        seen.add(real)
        dirs.append(directory)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as err:
            raise ConfigError(f"{directory}: cannot list the folder: {err.strerror}") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_symlink():
                _check_link(entry.path)
            framework = detect(entry.path)   # (text: detect makes a Path only if it needs one)
            if framework:
                found.append([entry.path, framework, entry.is_dir()])
            elif entry.is_dir():   # (realpath only through a link: it stats every part)
                pending.append((entry.path, os.path.realpath(entry.path) if entry.is_symlink()
                                else os.path.join(real, entry.name)))
    return {"models": sorted(found), "dirs": sorted(dirs)}


def _check_link(path: str) -> None:
    """A ConfigError for a link in a suite folder that cannot be followed (one that loops
    back to itself, one to nothing): what it is cannot be told, and asking raised OSError
    out of the plan."""
    try:
        os.stat(path)
    except OSError as err:
        why = "it loops back to itself" if err.errno == errno.ELOOP else \
            "it points at nothing" if err.errno == errno.ENOENT else "it cannot be read"
        raise ConfigError(f"{path}: a symbolic link kiln cannot follow: {why} ({err.strerror}); "
                          "remove it or point it at a model file or folder") from None


def case_name(path: Path, is_dir: bool, reserved: frozenset[str]) -> str:
    """A folder case's model name: its folder's for a file named model.* (ONNX's test layout,
    <case>/model.onnx) or a SavedModel directory named model (<case>/model/saved_model.pb),
    else the file's stem (a SavedModel: its directory's name); characters a task name cannot
    hold become '_', a name the build tree uses gets a trailing '_'."""
    named_model = path.name == "model" if is_dir else path.stem == "model"
    name = path.parent.name if named_model else (path.name if is_dir else path.stem)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "_"
    return f"{name}_" if name in reserved else name


def from_folder(folder: Path, scanned: dict, shapes: dict, what: str,
                companions: Companions = no_companions,
                reserved: frozenset[str] = frozenset()) -> list[ModelSpec]:
    """The models scan_folder found under folder, each named by case_name: a clash between
    two of them is an error naming both paths, as is a folder without a model."""
    models, where = [], {}
    for path, framework, is_dir in scanned["models"]:
        path = Path(path)
        name = case_name(path, is_dir, reserved)
        if name in where:
            raise ConfigError(f"{what}: {where[name]} and {path} would both be named '{name}'; "
                              "rename one of them (a case is named by its folder when its file "
                              "is model.*, else by the file's stem)")
        where[name] = path
        models.append(ModelSpec(name, framework, {"model": path, **companions(framework, path)},
                                shapes=shapes))
    if not models:
        raise ConfigError(f"{what}: no model in {folder} (kiln reads .pt2, .onnx, .tflite, .mlir, "
                          ".mlirbc and .jaxexport files and SavedModel directories, in the "
                          "folder or below it; ONNX's test layout: <case>/model.onnx)")
    return models


def unique(models: list[ModelSpec]) -> list[ModelSpec]:
    """models, each once; two different models of one name (a folder case and a models/ file,
    two files of one name) are an error naming where each comes from."""
    seen: dict[str, ModelSpec] = {}
    for model in models:
        other = seen.setdefault(model.name, model)
        if other is not model and other != model:
            raise ConfigError(f"two selected models are named '{model.name}': {origin(other)} "
                              f"and {origin(model)}; select one, or rename one")
    return list(seen.values())


def origin(model: ModelSpec) -> str:
    """Where a model comes from, for errors about it: its file, else its factory."""
    return str(model.sources.get("model") or model.factory or model.name)


def available(config: Config, model_dirs: list[Path], detect: Detect,
              companions: Companions = no_companions) -> dict[str, ModelSpec]:
    models = discover(model_dirs, config.root, config.reserved)
    models.update(from_config(config, detect, companions))
    return models
