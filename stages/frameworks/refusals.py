"""Whose an exception raised while a framework stage runs is, worded as a StageError that says
so: the engine remembers a StageError under the stage's key (a verdict on its inputs) unless it
is marked transient, and treats any other exception as no verdict.

- the framework's (raised in one of its adapter's `packages`: onnxruntime's NOT_IMPLEMENTED,
  torch.export's, TensorFlow's, LiteRT's, the TFLite converter's, IREE's Python importers'):
  its own refusal of the model, the same on every run: a verdict, as a tool's normal non-zero
  exit is, naming the package and the exception;
- the model's own code's (a models/ factory or what it imports): a verdict too, naming its
  file and line;
- kiln's own (stages/, pipeline/): a bug, no verdict on the model: transient, reported as
  kiln's so that no one takes it for the model's fault.

The innermost frame of the traceback that is one of these decides; a frame of another library
(numpy, a helper package) belongs to whoever called it. Positive evidence that the machine
failed, not the model, stays no verdict wherever it was raised: no memory (MemoryError, or a
framework's own out-of-memory type), a full or read-only disk (OSError), a missing package
(ImportError), a timeout. A framework's message that says the machine ran out of memory is
left to the engine, which reads every StageError's message for that."""
from __future__ import annotations

import contextlib
import subprocess
import traceback
from pathlib import Path
from types import TracebackType

from pipeline.stage import ModelSpec, StageError

# kiln's own code: the stages and the engine
KILN_DIRS = (Path(__file__).resolve().parents[1], Path(__file__).resolve().parents[2] / "pipeline")
# what says the machine failed, wherever it is raised
MACHINE_FAILURES = (MemoryError, OSError, ImportError, subprocess.TimeoutExpired)
# the frameworks' own exception types for a machine out of memory (torch.OutOfMemoryError,
# TensorFlow's ResourceExhaustedError: "OOM when allocating tensor")
OUT_OF_MEMORY_TYPES = ("OutOfMemoryError", "ResourceExhaustedError")
KILNS = "kiln's own"
KILN_BUG = "raised in kiln's own code: no verdict on the model"


def framework_refusals(adapter, model: ModelSpec):
    """Word an exception raised inside the block as whose it is (see the module docstring);
    a StageError, the machine's failures and anything not an Exception pass as they are."""
    return refusals_of(adapter.packages, model)


@contextlib.contextmanager
def refusals_of(packages: tuple[str, ...], model: ModelSpec):
    """framework_refusals for a stage of kiln's own that calls packages (emit: IREE's Python
    bindings), with no framework adapter."""
    try:
        yield
    except (StageError, *MACHINE_FAILURES):
        raise
    except Exception as err:
        verdict = worded(err, packages, model)
        if verdict is err:
            raise
        raise verdict from err


def worded(err: Exception, packages: tuple[str, ...], model: ModelSpec) -> Exception:
    """The StageError that says whose err is, or err itself where no frame is anyone's."""
    owner, where = _owner(err.__traceback__, packages, _model_files(model))
    if owner == KILNS:   # a framework's own type raised in kiln's frame: by its C code
        owner = _package_of(type(err).__module__, packages) or KILNS
    if owner is None:
        return err
    what = f"{type(err).__name__}: {_gist(err)}"
    log = "".join(traceback.format_exception(err))
    if owner == KILNS:
        return StageError(f"kiln's own error (a bug): {what}", log=log, transient=KILN_BUG)
    if owner == "model":
        return StageError(f"the model's own code raised {what} ({where})", log=log)
    out_of_memory = type(err).__name__ in OUT_OF_MEMORY_TYPES
    return StageError(f"{owner} refused the model: {what}", log=log,
                      transient=f"{owner} ran out of memory" if out_of_memory else None)


def _owner(tb: TracebackType | None, packages: tuple[str, ...], model_files: set[Path]):
    """(whose the innermost frame with an owner is: KILNS, "model" or the framework's package
    it runs in; where: 'file, line N'), or (None, None)."""
    for frame, line in reversed(list(traceback.walk_tb(tb))):
        owner = _frame_owner(frame, packages, model_files)
        if owner is not None:
            return owner, f"{frame.f_code.co_filename}, line {line}"
    return None, None


def _frame_owner(frame, packages: tuple[str, ...], model_files: set[Path]) -> str | None:
    package = _package_of(frame.f_globals.get("__name__") or "", packages)
    if package is not None:
        return package
    path = Path(frame.f_code.co_filename)
    if not path.is_absolute():   # (<string>, <frozen ...>: code of no file)
        return None
    path = path.resolve()
    if path in model_files:
        return "model"
    return KILNS if any(path.is_relative_to(d) for d in KILN_DIRS) else None


def _package_of(module: str, packages: tuple[str, ...]) -> str | None:
    return next((p for p in packages if module == p or module.startswith(p + ".")), None)


def _model_files(model: ModelSpec) -> set[Path]:
    """The model's own Python files (a models/ factory and the local modules it imports)."""
    return {Path(p).resolve() for p in model.sources.values() if Path(p).suffix == ".py"}


# how much of an exception's message the error keeps (the log keeps all of it)
GIST_CHARS = 500


def _gist(err: Exception) -> str:
    """The message on one line: some put the reason on their second (MLIRError's "Unable to
    parse module assembly:")."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return (text[:GIST_CHARS] + " ...") if len(text) > GIST_CHARS else text or "no message"
