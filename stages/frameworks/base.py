"""The adapter base: what a framework adapter declares (its name, packages, files, input
dialect), and the template its stages follow: capture() is the same for every framework but
for trace(), serialize() copies capture's artifact, the input-count check is shared; an
adapter supplies only what differs."""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import shutil
from pathlib import Path

from pipeline.stage import ModelSpec, StageError

from .arrays import save_arrays

# why a failure to import something is never remembered under a stage's key (StageError's
# transient): what this machine has installed decides it, and installing it must be enough
NOT_INSTALLED = "a module this machine does not have installed"

HERE = Path(__file__).parent
# the modules of this package every adapter builds on: they fingerprint every adapter
SHARED_MODULES = ("base", "factory", "inputs", "arrays")


@dataclasses.dataclass
class Traced:
    """What an adapter's trace() gives capture(): the framework's artifact (what
    write_artifact takes), the inputs the model ran on and its answer (a list of arrays, one
    per output), and what validation should know, written to capture.json:
      notes             what was chosen for the user (e.g. "batch dimension set to 1")
      tolerances        per output, None (the target's) or {"atol": float, "rtol": float,
                        "why": str}, e.g. from a quantized output's scale; None for all
      declared_outputs  per output, None or the model's own dims (None for a dynamic one):
                        an answer that contradicts them means the inputs do not fit
      reference_from    what the reference is, where not the framework's answer (e.g. a
                        model's own expected outputs, where the framework cannot run it)
      expected          a second answer every target is compared with too (a model's own
                        expected outputs, maybe fewer than its outputs), and expected_from
                        what it is
      source            what the adapter's reference64() re-runs in float64 (e.g. the
                        nn.Module a factory built), where the artifact alone is not it
      alternative       the framework's answer by another implementation of its own (LiteRT's
                        reference kernels beside its default XNNPACK ones), and
                        alternative_from what it is: where the framework cannot run in float64,
                        the spread between its own two answers is its own noise
    """
    artifact: object
    inputs: list
    reference: list
    notes: list[str] = dataclasses.field(default_factory=list)
    tolerances: list[dict | None] | None = None
    declared_outputs: list[list | None] | None = None
    reference_from: str | None = None
    expected: list | None = None
    expected_from: str | None = None
    source: object = None
    alternative: list | None = None
    alternative_from: str | None = None

    def info(self) -> dict:
        """What validation should know, as capture() returns it to the capture stage."""
        return {"notes": self.notes, "tolerances": self.tolerances,
                "declared_outputs": self.declared_outputs, "reference_from": self.reference_from,
                "expected_from": self.expected_from, "alternative_from": self.alternative_from}


# a float64 answer further than this (relative to the output's largest value) from the f32
# one computes something else (another evaluator's reading of an op), not the same model
# with less rounding: it is not used
DISAGREE_RTOL = 1e-2


def disagreement(answer: list, reference: list) -> str | None:
    """Why the float64 answer is not the model's answer in float64, or None."""
    import numpy as np
    for index, (wide, narrow) in enumerate(zip(answer, reference)):
        wide, narrow = np.asarray(wide), np.asarray(narrow)
        if narrow.dtype.kind != "f":
            continue
        both = np.isfinite(wide) & np.isfinite(narrow)
        scale = float(np.abs(wide[both]).max(initial=0.0))
        off = float(np.abs(wide[both].astype(np.float64) - narrow[both]).max(initial=0.0))
        if off > DISAGREE_RTOL * scale + 1e-6:
            return (f"the float64 run's output {index} is {off:.3g} from the reference (more "
                    f"than {DISAGREE_RTOL:g} of its scale {scale:.3g}): not the same "
                    "computation, so not used")
    return None


class NoFloat64(Exception):
    """An adapter cannot compute this model's answer in float64; the message says why."""


def suffix_of(path: str) -> str:
    """Path(path).suffix without the Path: the suffix of os.path.basename(path) (of which a
    path ending in "/" has none)."""
    name = os.path.basename(path)
    dot = name.rfind(".")
    return name[dot:] if 0 < dot < len(name) - 1 else ""


# IREE rounds quantized arithmetic (requantization, rescales) differently from LiteRT: int8
# outputs differ by about one quantization step, so allow two (validate's tolerance of a
# quantized output, and bisect's of a quantized tensor: stages/framework_trace.py)
QUANT_STEPS = 2


class NoIntermediates(Exception):
    """An adapter cannot give this model's intermediate tensors; the message says why."""


@dataclasses.dataclass
class Intermediate:
    """One tensor the framework computed on the way to its answer (an op's output), as
    intermediates() lists them: in execution order. A quantized integer tensor carries the
    scale and zero point its codes stand for, a float tensor dequantized from such codes
    their scale (stages/framework_trace.py compares both in steps of it)."""
    name: str                        # the framework's name for the tensor (a layer's, a node's)
    op: str                          # the op that computed it (CONV_2D, Conv, ...)
    values: object                   # a numpy array, in the framework's own dtype
    scale: float | None = None
    zero_point: int | None = None


class Framework:
    """A framework adapter: a subclass per framework states what differs (its trace(),
    import_mlir(), runner(); write_artifact() and serialize() where the default does not
    fit) and registers an instance as its module's ADAPTER."""
    name = ""                        # what a model's FRAMEWORK says
    extra = ""                       # pip extra that installs it: kiln[<extra>]
    modules: tuple[str, ...] = ()    # import names that must be present
    dists: tuple[str, ...] = ()      # distributions whose versions enter the keys
    # the import names whose code is the framework's (its importer's included): an exception
    # raised there is its refusal of the model, a verdict on the stage's inputs (refusals.py)
    packages: tuple[str, ...] = ()
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
        # made once per adapter: a plan asks for them per model and stage (16,000 times for
        # a 2,000-case suite), and they name the same files each time
        found = self.__dict__.get("_code_files")
        if found is None:
            own = Path(importlib.import_module(type(self).__module__).__file__)
            found = self._code_files = (own, *(HERE / f"{name}.py" for name in
                                                (*self.builds_on, *SHARED_MODULES)))
        return found

    def require(self) -> None:
        missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if missing:
            raise StageError(f"framework '{self.name}' is not installed (missing "
                             f"{', '.join(missing)}): install kiln[{self.extra}]",
                             transient=NOT_INSTALLED)

    def matches(self, path: str) -> bool:
        """Whether this framework reads the file or directory at path (its text: detect asks
        this of every entry of a folder scan)."""
        return suffix_of(path) in self.suffixes

    def companions(self, path: Path) -> dict[str, Path]:
        """Files a model file reads besides itself (role -> path), e.g. ONNX external data:
        their content enters the keys like the model's own."""
        return {}

    def capture(self, model: ModelSpec, out_dir: Path) -> dict:
        """Capture's files, the same for every framework: trace the model (trace()), then
        write its artifact as captured[0], the inputs as inputs.npz, the framework's
        answer as reference.npz and a second answer, where there is one, as expected.npz
        (else empty) into out_dir. Returns what validation should know (see Traced)."""
        traced = self.trace(model)
        self.write_artifact(traced.artifact, out_dir / self.captured[0])
        save_arrays(out_dir / "inputs.npz", "arg", traced.inputs)
        save_arrays(out_dir / "reference.npz", "out", traced.reference)
        save_arrays(out_dir / "expected.npz", "out", traced.expected or [])
        save_arrays(out_dir / "alternative.npz", "out", traced.alternative or [])
        answer64, why = self._float64_answer(model, traced)
        save_arrays(out_dir / "reference64.npz", "out", answer64 or [])
        return {**traced.info(), "f64": {"available": answer64 is not None, "why": why}}

    def _float64_answer(self, model: ModelSpec, traced: Traced) -> tuple[list | None, str]:
        """(the model's answer computed in float64, or None; why not, or how it was run). It
        is what validate measures errors against: the framework's own f32 error against it
        says how much f32 rounding noise this model has (stages/compare.py's noise rule)."""
        try:
            answer = self.reference64(model, traced)
        except NoFloat64 as err:
            return None, str(err)
        if len(answer) != len(traced.reference):
            return None, (f"the float64 run returned {len(answer)} outputs, the reference has "
                          f"{len(traced.reference)}")
        shapes = [(list(a.shape), list(r.shape)) for a, r in zip(answer, traced.reference)]
        differing = next((i for i, (a, r) in enumerate(shapes) if a != r), None)
        if differing is not None:
            return None, (f"the float64 run's output {differing} has shape "
                          f"{shapes[differing][0]}, the reference's {shapes[differing][1]}")
        why = disagreement(answer, traced.reference)
        if why:
            return None, why
        return answer, f"{self.name} run in float64"

    def reference64(self, model: ModelSpec, traced: Traced) -> list:
        """The model's outputs on traced.inputs computed in float64 (float inputs, weights
        and arithmetic), as numpy arrays in the reference's order; NoFloat64(why) where the
        framework cannot run this model so."""
        raise NoFloat64(f"{self.name} models are not run in float64 by kiln")

    def trace(self, model: ModelSpec) -> Traced:
        """The framework's part of capture: build or load the model, choose its inputs, run
        it on them for the reference."""
        raise NotImplementedError

    def write_artifact(self, artifact, path: Path) -> None:
        """Write trace()'s artifact; bytes unless the adapter says otherwise."""
        path.write_bytes(artifact)

    def check_input_count(self, model: ModelSpec, taker: str, names: list[str], inputs) -> None:
        """build() gave one input per input the model takes (`taker`: what takes them, e.g.
        "the graph"); else the framework fails later with a message that does not say why."""
        if len(names) != len(inputs):
            raise StageError(f"model {model.name}: {taker} takes {len(names)} inputs "
                             f"({', '.join(names)}), build() gave {len(inputs)}")

    def serialize(self, capture_dir: Path, out_dir: Path) -> None:
        """Write the interchange file under its fixed name: capture's artifact is already in
        that format for most frameworks, so it is copied."""
        shutil.copyfile(capture_dir / self.captured[0], out_dir / self.serialized)

    def import_mlir(self, serialized_file: Path, mlir_file: Path) -> None:
        raise NotImplementedError

    def intermediates(self, capture_dir: Path, inputs: list) -> list[Intermediate]:
        """Every op's output the framework computes when it runs capture's artifact (in
        capture_dir) on inputs, in execution order: what bisect pairs IREE's dispatch outputs
        with where IREE's backends agree with each other but not with the framework
        (stages/framework_trace.py). NoIntermediates(why) where the adapter cannot."""
        raise NoIntermediates(f"kiln does not read {self.name} models' intermediate tensors")

    # what runner() pins to the given thread count, for the timing's "how"
    timing_threads = ""

    def runner(self, capture_dir: Path, inputs: list, threads: int):
        """A zero-argument callable that runs the captured model (capture's artifacts in
        capture_dir) once on inputs in the framework itself, computing with `threads` threads
        where the framework lets itself be told; None where there is no framework to run.
        stages/timing.py times it, in a process of its own."""
        return None

