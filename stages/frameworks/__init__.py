"""The framework registry: one adapter module per framework in this package.

An adapter says how its framework captures a model, writes the interchange format and imports
it to MLIR; everything after import is framework-free. Adapter modules import their framework
inside methods only, so listing them costs nothing.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import pkgutil
import re
from pathlib import Path

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

    def companions(self, path: Path) -> dict[str, Path]:
        """Files a model file reads besides itself (role -> path), e.g. ONNX external data:
        their content enters the keys like the model's own."""
        return {}

    def capture(self, model: ModelSpec, out: Path) -> dict | None:
        """Write captured artifacts, inputs.npz and reference.npz into out. May return what
        validation should know (see CAPTURE_INFO): notes for the record, per-output
        tolerances (e.g. from quantization parameters), the model's declared output shapes."""
        raise NotImplementedError

    def serialize(self, captured: Path, out: Path) -> None:
        raise NotImplementedError

    def import_mlir(self, serialized: Path, out: Path) -> None:
        raise NotImplementedError

    # what runner() pins to the given thread count, for the timing's "how"
    timing_threads = ""

    def runner(self, captured: Path, inputs: list, threads: int):
        """A zero-argument callable that runs the captured model (capture's artifacts in
        `captured`) once on inputs in the framework itself, computing with `threads` threads
        where the framework lets itself be told; None where there is no framework to run.
        stages/timing.py times it, in a process of its own."""
        return None


# What an adapter's capture() may return (every key optional), written to capture.json:
#   notes: [str]                 what was chosen for the user (e.g. "batch dimension set to 1")
#   tolerances: [None | {"atol": float, "rtol": float, "why": str}]   per output, e.g. derived
#                                from a quantized output's scale; None keeps the target's
#   declared_outputs: [None | [dims]]   the model's own static output shapes (None = dynamic
#                                dimension): an answer that contradicts them means the inputs
#                                do not fit the model
CAPTURE_INFO = ("notes", "tolerances", "declared_outputs")

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
        raise StageError(f"unknown framework '{name}' (valid: {', '.join(sorted(adapters))})")
    return adapters[name]


def companions(framework: str, path: Path) -> dict[str, Path]:
    """The extra files a model file of this framework reads (by role), for the keys."""
    adapters = _load_all()
    return adapters[framework].companions(Path(path)) if framework in adapters else {}


def detect(path: Path) -> str | None:
    """The framework that reads this model file or directory, if any."""
    for adapter in _load_all().values():
        if adapter.matches(Path(path)):
            return adapter.name
    return None


# --- helpers shared by adapters ---------------------------------------------------------

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
    import numpy as np   # here, not at plan time
    built = load_factory(model.factory)()
    if not is_model(built[0]):
        raise StageError(f"{model.factory} returned ({type(built[0]).__name__}, ...): a "
                         f"{model.framework} model's factory must return ({expected}, inputs)")
    examples = [np.asarray(a) for a in built[1]]
    signature = [(f"arg{i}", list(a.shape), a.dtype.name) for i, a in enumerate(examples)]
    return built[0], model_inputs(model, signature) if model.input_files() else examples


def save_arrays(path: Path, prefix: str, arrays) -> None:
    import numpy as np   # here, not at plan time
    np.savez(path, **{f"{prefix}{i}": np.asarray(a) for i, a in enumerate(arrays)})


def load_arrays(path: Path) -> list[np.ndarray]:
    """The arrays save_arrays wrote, in index order (arg2 before arg10)."""
    import numpy as np   # here, not at plan time
    with np.load(path) as data:
        return [data[k] for k in sorted(data.files, key=lambda k: int(re.sub(r"\D", "", k)))]


# integer inputs are drawn from [0, INT_INPUT_HIGH): valid token ids for any embedding,
# valid indices and repeat counts for most models
INT_INPUT_HIGH = 10


def seeded_inputs(signature: list[tuple[str, list, str]], shapes: dict, seed: int, model: str):
    """Random inputs for a file model from its declared signature [(name, dims, dtype)].

    A dynamic dimension (None or < 0) needs a size from shapes= or the config entry; 0 is a
    static, empty dimension."""
    import numpy as np   # here, not at plan time
    rng = np.random.default_rng(seed)
    arrays = []
    for name, dims, dtype in signature:
        dims = shapes.get(name, dims)
        if any(not isinstance(d, int) or d < 0 for d in dims):
            raise StageError(f"model {model}: input '{name}' has a dynamic shape {dims}; give its "
                             f"size with shapes={name}:1x3x224x224 on the command line or "
                             f"'shapes: {{{name}: [1, 3, 224, 224]}}' in its config entry")
        dt = np.dtype(dtype)
        if dt.kind in "fc":
            arrays.append(rng.standard_normal(dims).astype(dt))
        elif dt.kind == "b":
            arrays.append(rng.integers(0, 2, dims).astype(dt))
        else:
            arrays.append(rng.integers(0, INT_INPUT_HIGH, dims).astype(dt))
    return arrays


def model_inputs(model: ModelSpec, signature: list[tuple[str, list, str]]) -> list[np.ndarray]:
    """The inputs a model is captured and validated on: the user's (inputs= or the config's
    inputs:, matched by input name, else by position), otherwise seeded from the signature."""
    import numpy as np   # here, not at plan time
    files = model.input_files()
    if not files:
        return seeded_inputs(signature, model.shapes, model.seed, model.name)
    given = _load_given(files)
    names = [name for name, _, _ in signature]
    by_order = len(given) == len(signature) and not set(given) & set(names)
    arrays = []
    for position, (name, dims, dtype) in enumerate(signature):
        keys = (name, str(position), f"arg{position}", f"input_{position}")
        array = next((given[k] for k in keys if k in given), None)
        if array is None and by_order:   # as many arrays as inputs, none named: in file order
            array = list(given.values())[position]
        if array is None:
            raise StageError(f"model {model.name}: the given inputs ({', '.join(given)}) have none "
                             f"for input '{name}' (position {position}); name each array after "
                             f"an input ({', '.join(names)}) or its position")
        if len(dims) != array.ndim or any(isinstance(d, int) and d >= 0 and d != a
                                          for d, a in zip(dims, array.shape)):
            raise StageError(f"model {model.name}: given input '{name}' has shape "
                             f"{list(array.shape)}, the model takes {dims}")
        arrays.append(array.astype(np.dtype(dtype), copy=False))
    return arrays


def _load_given(files: dict[str, Path]) -> dict[str, np.ndarray]:
    import numpy as np   # here, not at plan time
    given = {}
    for role, path in files.items():
        name = role.partition(":")[2]
        if path.suffix == ".npz":
            with np.load(path) as data:
                given.update({k: data[k] for k in data.files})
        else:
            given[name or "0"] = np.load(path)
    return given
