"""A models/ factory: load its function, check it returns (model, inputs), and give the inputs
as numpy (the user's own inputs, where given, replace the factory's examples)."""
from __future__ import annotations

import functools
import importlib
import importlib.util
from pathlib import Path

from pipeline.stage import ModelSpec, StageError

from .inputs import model_inputs


def load_factory(factory: str):
    """'pkg.mod:fn' or '/abs/file.py:fn' -> the function, wrapped to check what it returns:
    a bad return otherwise surfaces far away, as a bare TypeError or a silently odd model."""
    module_name, _, function = factory.rpartition(":")
    if module_name.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(module_name).stem + "_kiln_model",
                                                      module_name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    build = getattr(module, function, None)
    if not callable(build):
        raise StageError(f"factory {factory}: {module_name} defines no function '{function}'")

    @functools.wraps(build)
    def checked(*args, **kwargs):
        return _check_built(factory, build(*args, **kwargs))
    return checked


def _check_built(factory: str, built):
    """Every factory returns (model, inputs), inputs a tuple or list of arrays or tensors."""
    pair = isinstance(built, (tuple, list)) and len(built) == 2
    if not (pair and isinstance(built[1], (tuple, list))
            and all(hasattr(a, "shape") and hasattr(a, "dtype") for a in built[1])):
        raise StageError(f"{factory} returned {_describe(built)}; expected (model, inputs): the "
                         "model and its example inputs as a tuple or list of arrays or tensors, "
                         "e.g. `return model, (example,)`")
    return built


def _describe(value) -> str:
    if isinstance(value, (tuple, list)):
        return f"({', '.join(type(v).__name__ for v in value)})"
    return f"a {type(value).__name__}"


def build_model(model: ModelSpec, is_model, expected: str):
    """Call a models/ factory, check it returned (model, inputs), give the inputs as numpy
    (the user's own inputs, where given, replace build()'s example inputs)."""
    import numpy as np  # here, not at plan time
    built = load_factory(model.factory)()
    if not is_model(built[0]):
        raise StageError(f"{model.factory} returned ({type(built[0]).__name__}, ...): a "
                         f"{model.framework} model's factory must return ({expected}, inputs)")
    examples = [np.asarray(a) for a in built[1]]
    signature = [(f"arg{i}", list(a.shape), a.dtype.name) for i, a in enumerate(examples)]
    return built[0], model_inputs(model, signature) if model.input_files() else examples
