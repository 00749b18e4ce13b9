"""The .npz files stages hand arrays over in (capture's inputs and reference, validate's
outputs): arrays saved under a prefix and their index, read back in index order."""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np   # annotations only: numpy is imported when used, not at plan time


def save_arrays(path: Path, prefix: str, arrays) -> None:
    import numpy as np   # here, not at plan time
    np.savez(path, **{f"{prefix}{i}": np.asarray(a) for i, a in enumerate(arrays)})


def load_arrays(path: Path) -> list[np.ndarray]:
    """The arrays save_arrays wrote, in index order (arg2 before arg10)."""
    import numpy as np   # here, not at plan time
    with np.load(path) as data:
        return [data[k] for k in sorted(data.files, key=lambda k: int(re.sub(r"\D", "", k)))]
