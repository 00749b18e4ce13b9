"""The inputs a model is captured and validated on: the user's own (inputs= or the config's
inputs:, matched to the model's signature), else seeded from that signature."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.stage import ModelSpec, StageError

if TYPE_CHECKING:
    import numpy as np  # annotations only: numpy is imported when used, not at plan time

# integer inputs are drawn from [0, INT_INPUT_HIGH): valid token ids for any embedding,
# valid indices and repeat counts for most models
INT_INPUT_HIGH = 10


def seeded_inputs(signature: list[tuple[str, list, str]], shapes: dict, seed: int, model: str):
    """Random inputs for a file model from its declared signature [(name, dims, dtype)].

    A dynamic dimension (None or < 0) needs a size from shapes= or the config entry; 0 is a
    static, empty dimension."""
    import numpy as np  # here, not at plan time
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
    import numpy as np  # here, not at plan time
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
    import numpy as np  # here, not at plan time
    given = {}
    for role, path in files.items():
        name = role.partition(":")[2]
        if path.suffix == ".npz":
            with np.load(path) as data:
                given.update({k: data[k] for k in data.files})
        else:
            given[name or "0"] = np.load(path)
    return given
