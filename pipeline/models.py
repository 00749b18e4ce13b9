"""Which models exist and what each one is: files in models/, entries in the config's
`models:` section, and paths given on the command line.

A models/ file names its framework in a module-level `FRAMEWORK = "..."` and defines
`build()`; it is read with ast, never imported here, so listing models stays cheap.
"""
from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path
from typing import Callable

from .config import Config, ConfigError
from .stage import ModelSpec

# framework detection for model files is the stages' knowledge, handed in by the caller
Detect = Callable[[Path], str | None]


def _framework_of(py_file: Path) -> str | None:
    try:
        tree = ast.parse(py_file.read_text(), str(py_file))
    except SyntaxError:
        return None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "FRAMEWORK"
                and isinstance(node.value, ast.Constant)):
            return node.value.value
    return None


def discover(model_dirs: list[Path]) -> dict[str, ModelSpec]:
    models = {}
    for directory in model_dirs:
        for py_file in sorted(directory.glob("*.py")):
            framework = _framework_of(py_file)
            if framework and py_file.stem not in models:
                models[py_file.stem] = ModelSpec(py_file.stem, framework, {"model": py_file},
                                                 factory=f"{py_file}:build")
    return models


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


def from_config(config: Config, detect: Detect) -> dict[str, ModelSpec]:
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
        else:
            try:
                factory, path = _factory_spec(decl.factory, config.root)
            except ConfigError as err:
                raise ConfigError(f"{config.path}: models.{decl.name}.factory: {err}") from None
            if path is not None:
                sources["model"] = path
            framework = decl.framework
        models[decl.name] = ModelSpec(decl.name, framework, sources, factory=factory,
                                      shapes=decl.shapes, atol=decl.atol, rtol=decl.rtol)
    return models


def from_path(path: Path, detect: Detect, shapes: dict) -> ModelSpec:
    framework = detect(path)
    if framework is None:
        raise ConfigError(f"model={path}: not a model file kiln can read "
                          "(.pt2, .onnx, .tflite, a SavedModel directory, .mlir, .mlirbc)")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.name)
    return ModelSpec(name, framework, {"model": path.resolve()}, shapes=shapes)


def available(config: Config, model_dirs: list[Path], detect: Detect) -> dict[str, ModelSpec]:
    models = discover(model_dirs)
    models.update(from_config(config, detect))
    return models
