"""The .npz files stages hand arrays over in (capture's inputs and reference, validate's
outputs): arrays saved under a prefix and their index, read back in index order.

numpy's .npy format cannot describe ml_dtypes' types (bfloat16 is saved as void, float8 as a
descriptor numpy refuses to read back, '<f1'): such an array is saved as its bits (unsigned
integers of its width) and its type's name kept beside it, so it reads back as it was."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np  # annotations only: numpy is imported when used, not at plan time

EXTENDED = "__ml_dtypes__"   # {key: type name} of the arrays saved as their bits


def save_arrays(path: Path, prefix: str, arrays) -> None:
    import numpy as np  # here, not at plan time
    arrays = {f"{prefix}{i}": np.asarray(a) for i, a in enumerate(arrays)}
    strings = [i for i, a in enumerate(arrays.values()) if a.dtype.kind in "OUS"]
    if strings:   # (.npz would pickle them, which nothing here reads back)
        from pipeline.stage import StageError
        what = {"arg": "input", "out": "output"}.get(prefix, prefix)
        raise StageError(f"{what} {strings[0]} is a tensor of strings: IREE's modules take "
                         "numbers only")
    named = {k: a.dtype.name for k, a in arrays.items() if a.dtype.type.__module__ == "ml_dtypes"}
    stored = {k: a.view(f"u{a.dtype.itemsize}") if k in named else a for k, a in arrays.items()}
    np.savez(path, **stored, **({EXTENDED: np.array(json.dumps(named))} if named else {}))


def load_arrays(path: Path) -> list[np.ndarray]:
    """The arrays save_arrays wrote, in index order (arg2 before arg10)."""
    import numpy as np  # here, not at plan time
    with np.load(path) as data:
        named = json.loads(str(data[EXTENDED])) if EXTENDED in data.files else {}
        keys = sorted((k for k in data.files if k != EXTENDED),
                      key=lambda k: int(re.sub(r"\D", "", k)))
        return [data[k].view(_ml_dtype(named[k])) if k in named else data[k] for k in keys]


def _ml_dtype(name: str):
    import ml_dtypes
    return getattr(ml_dtypes, name)
