"""The adapter base: what a framework adapter declares (its name, packages, files, input
dialect) and the methods each stage calls on it."""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from pipeline.stage import ModelSpec, StageError

HERE = Path(__file__).parent
# the modules of this package every adapter builds on: they fingerprint every adapter
SHARED_MODULES = ("base", "factory", "inputs", "arrays")


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
    builds_on: tuple[str, ...] = ()  # other modules of this package the adapter imports

    def code_files(self) -> tuple[Path, ...]:
        """The adapter's source and every module of this package it builds on: part of the
        keys of the stages that use it, so an edit to any of them re-runs those stages."""
        own = Path(importlib.import_module(type(self).__module__).__file__)
        return (own, *(HERE / f"{name}.py" for name in (*self.builds_on, *SHARED_MODULES)))

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
