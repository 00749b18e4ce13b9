"""The framework registry: one adapter module per framework in this package.

An adapter says how its framework captures a model, writes the interchange format and imports
it to MLIR; everything after import is framework-free. Adapter modules import their framework
inside methods only, so listing them costs nothing.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
from pathlib import Path

import numpy as np

from pipeline.stage import ModelSpec, StageError

HERE = Path(__file__).parent


class Framework:
    name = ""                        # what a model's FRAMEWORK says
    extra = ""                       # pip extra that installs it: kiln[<extra>]
    modules: tuple[str, ...] = ()    # import names that must be present
    dists: tuple[str, ...] = ()      # distributions whose versions enter the keys
    suffixes: tuple[str, ...] = ()   # model files it reads
    input_type = ""                  # iree-compile --iree-input-type
    captured: tuple[str, ...] = ()   # capture's framework artifacts (beside inputs/reference)
    serialized = ""                  # serialize's interchange file (a fixed name)
    first_stage = "capture"          # where its models enter the pipeline
    has_reference = True

    def code_files(self) -> tuple[Path, ...]:
        """The adapter's source (and any adapter it builds on): part of the stage keys."""
        return (Path(importlib.import_module(type(self).__module__).__file__),)

    def require(self) -> None:
        missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if missing:
            raise StageError(f"framework '{self.name}' is not installed (missing "
                             f"{', '.join(missing)}): install kiln[{self.extra}]")

    def matches(self, path: Path) -> bool:
        return path.suffix in self.suffixes

    def capture(self, model: ModelSpec, out: Path) -> None:
        raise NotImplementedError

    def serialize(self, captured: Path, out: Path) -> None:
        raise NotImplementedError

    def import_mlir(self, serialized: Path, out: Path) -> None:
        raise NotImplementedError


_REGISTRY: dict[str, Framework] = {}


def _load_all() -> dict[str, Framework]:
    if not _REGISTRY:
        for info in pkgutil.iter_modules([str(HERE)]):
            module = importlib.import_module(f"{__name__}.{info.name}")
            adapter = getattr(module, "ADAPTER", None)
            if isinstance(adapter, Framework):
                _REGISTRY[adapter.name] = adapter
    return _REGISTRY


def get(name: str) -> Framework:
    adapters = _load_all()
    if name not in adapters:
        raise StageError(f"unknown framework '{name}' (known: {', '.join(sorted(adapters))})")
    return adapters[name]


def detect(path: Path) -> str | None:
    """The framework that reads this model file or directory, if any."""
    for adapter in _load_all().values():
        if adapter.matches(Path(path)):
            return adapter.name
    return None


# --- helpers shared by adapters ---------------------------------------------------------

def load_factory(factory: str):
    """'pkg.mod:fn' or '/abs/file.py:fn' -> the function."""
    module_name, _, function = factory.rpartition(":")
    if module_name.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(module_name).stem + "_kiln_model",
                                                      module_name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    return getattr(module, function)


def build_model(model: ModelSpec, is_model, expected: str):
    """Call a models/ factory, check it returned (model, inputs), give the inputs as numpy."""
    built = load_factory(model.factory)()
    if not (isinstance(built, (tuple, list)) and len(built) == 2 and is_model(built[0])):
        raise StageError(f"model {model.name}: a {model.framework} model's build() must return "
                         f"({expected}, tuple of numpy inputs)")
    return built[0], [np.asarray(a) for a in built[1]]


def save_arrays(path: Path, prefix: str, arrays) -> None:
    np.savez(path, **{f"{prefix}{i}": np.asarray(a) for i, a in enumerate(arrays)})


def load_arrays(path: Path) -> list[np.ndarray]:
    """The arrays save_arrays wrote, in index order (arg2 before arg10)."""
    with np.load(path) as data:
        return [data[k] for k in sorted(data.files, key=lambda k: int(re.sub(r"\D", "", k)))]


def seeded_inputs(signature: list[tuple[str, list, str]], shapes: dict, seed: int, model: str):
    """Random inputs for a file model from its declared signature [(name, dims, dtype)].

    A dynamic dimension (None or <= 0) needs a size from shapes= or the config entry."""
    rng = np.random.default_rng(seed)
    arrays = []
    for name, dims, dtype in signature:
        dims = shapes.get(name, dims)
        if any(d is None or (isinstance(d, int) and d <= 0) or not isinstance(d, int) for d in dims):
            raise StageError(f"model {model}: input '{name}' has a dynamic shape {dims}; give its "
                             f"size with shapes={name}:1x3x224x224 on the command line or "
                             f"'shapes: {{{name}: [1, 3, 224, 224]}}' in its config entry")
        dt = np.dtype(dtype)
        if dt.kind == "f":
            arrays.append(rng.standard_normal(dims).astype(dt))
        elif dt.kind == "b":
            arrays.append(rng.integers(0, 2, dims).astype(dt))
        else:
            arrays.append(rng.integers(0, 10, dims).astype(dt))
    return arrays
