"""Stage 10, bisect: where a target's numbers are off, name the dispatch that went wrong.

It follows validate (Stage.follows): the engine runs it only where validate failed on the
numbers (needed), and the failure does not stop it. It compiles the model's weight-free MLIR
(emit) twice with every dispatch's tensors traced (`--iree-flow-trace-dispatch-tensors`):
once with the failing target's flags, once with a reference target's (against= chooses;
otherwise the first llvm-cpu or vmvx target declared, flagless ones first, whose own build
matches the framework's answer). Both run on the model's inputs and weights; the reference's
trace is kept as values, the failing one's is streamed past them (stages/dispatch_trace.py),
so no trace is ever written to disk.

The failing build is the module validate ran, built again: the stage that built it (codegen,
or a later stage that remade it, read ByRole: MODULE) says with which flags (rebuild_flags).

The result names the first dispatch whose inputs agree with the reference's values but whose
outputs do not (within the target's atol/rtol), how many agreed before it, how the error
grows over the next few, the dispatches that had no partner, and the two executables'
sources (dispatch.failing.mlir, dispatch.reference.mlir). kiln's MLIR carries no source
locations (from import on it holds only loc(unknown): docs/DESIGN.md §10.3): the source op is not
named.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import shlex
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline import process
from pipeline.run.entry import FAILURES
from pipeline.stage import MODULE, Role, Stage, StageError
from pipeline.vocab import Status
from stages import dispatch_trace, framework_trace
from stages.backends import BACKENDS
from stages.capture import STAGE as CAPTURE
from stages.emit import STAGE as EMIT
from stages.iree_tools import iree_compile, tool
from stages.lower import inline_weights
from stages.runtime import RUN_TIMEOUT_S, module_args, runtime_error
from stages.targets import compile_flags
from stages.validate import STAGE as VALIDATE
from stages.validate import answer_for, judge, module_built
from stages.weights import SCOPE

HERE = Path(__file__).parent
TRACE_FLAGS = ("--iree-flow-trace-dispatch-tensors",)
# how many dispatches after the first bad one the result shows, to see the error grow
AFTER = 5
# how many unpaired dispatches the result names (it counts them all)
NAMED = 10
SOURCES = {"failing": "dispatch.failing.mlir", "reference": "dispatch.reference.mlir"}


class Bisect(Stage):
    name = "bisect"
    doc = "where validate failed on the numbers: trace both builds, name the first bad dispatch"
    group = VALIDATE.name   # `doit validate` (and plain `doit`) bisects what it found off
    per_target = True
    follows = VALIDATE.name
    role = Role.DIAGNOSIS
    # the module validate ran: its maker says how to build it again, traced
    inputs = (CAPTURE.name, EMIT.name, VALIDATE.name, MODULE)
    code = (HERE / "dispatch_trace.py", HERE / "iree_tools.py", HERE / "targets.py",
            HERE / "backends.py", HERE / "validate.py", HERE / "compare.py", HERE / "lower.py",
            HERE / "framework_trace.py")

    def code_files(self, model):   # (+ the adapter: bisect against the framework runs it)
        return (*super().code_files(model), *framework_trace.adapter_code(model))

    def outputs(self, model):
        return ("bisect.json", *SOURCES.values())

    def tools(self, model):
        return ("iree-compile", "iree-base-runtime", "numpy")   # (numpy: the comparison)

    def reads(self, upstream, outputs, model, target):
        if upstream == VALIDATE.name:   # its outcome (the engine reads it), none of its files
            return ()
        if upstream == CAPTURE.name:
            return ("inputs.npz", "reference.npz", "reference64.npz", "expected.npz",
                    "alternative.npz", "capture.json", *framework_trace.captured_files(model))
        if upstream == EMIT.name:
            return ("model.mlirbc", "model.json", "model.irpa")
        return outputs   # the module's maker's: what its rebuild flags may name

    def key_params(self, model, target):
        atol, rtol = VALIDATE.tolerances(model, target)
        return {"flags": compile_flags(target), "driver": target.driver, "atol": atol,
                "rtol": rtol, "trace": list(TRACE_FLAGS),
                "weights": "inline" if inline_weights(model, target) else "external",
                "references": [_describe(t) for t in references(target)]}

    def resources(self, target):
        return VALIDATE.resources(target)

    def unavailable(self, model, target):
        return VALIDATE.unavailable(model, target)

    def needed(self, status, result):
        if status in (Status.RAN, Status.CACHED, Status.UP_TO_DATE):
            return "validate passed, nothing to bisect"
        if status not in FAILURES:
            said = "was skipped" if status == Status.SKIPPED else "did not run"
            return f"validate {said}, nothing to bisect"
        if not result or result.get("passed") is not False:
            return "validate failed before it compared numbers, nothing to bisect"
        return None

    def run(self, ctx):
        info = json.loads((ctx.inputs[EMIT.name] / "model.json").read_text())
        answer = answer_for(ctx, info)
        atol, rtol = VALIDATE.tolerances(ctx.model, ctx.target)
        # (the pool exits first: a compile still running ends before its directory goes)
        with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
            build = Builds(Path(tmp), ctx, info, answer)
            # the first reference compiles beside the failing build (two iree-compiles)
            # (in this context: its tool time is the stage's)
            ahead = {c.name: pool.submit(contextvars.copy_context().run, build.compile,
                                         f"reference-{c.name}", compile_flags(c))
                     for c in references(ctx.target)[:1]}
            failing = build.compile("failing", rebuild_flags(ctx))
            if isinstance(failing, str):
                raise StageError(f"the failing target's build cannot be traced: {failing}")
            reference, values, tried = build.reference(ctx.target, atol, rtol, ahead)
            found = Search(values)
            build.run(failing, ctx.target.driver, found.step)
            result = {**found.result(reference.name, atol, rtol), "references_tried": tried}
            # IREE's builds agree, the framework not: its own tensors say where
            result.update(framework_trace.against_framework(ctx, result, values.dispatches,
                                                            answer.inputs, atol, rtol))
            _keep_sources(ctx, Path(tmp), result)
        result.update(_shown(result))
        (ctx.out / "bisect.json").write_text(json.dumps(result, indent=1, sort_keys=True))
        return result


def rebuild_flags(ctx) -> list[str]:
    """The flags that build the module validate ran again, from emit's MLIR: its maker's
    (codegen: the target's flags). A maker that cannot say is an error, never a silent
    trace of some other build."""
    maker, built = module_built(ctx)
    rebuild = getattr(maker, "rebuild_flags", None)
    if rebuild is None:
        raise StageError(f"the module validate ran was built by {maker.name}, which does not "
                         "say how to build it again (rebuild_flags): bisect cannot trace it")
    return list(rebuild(ctx.model, ctx.target, built))


def references(target) -> list:
    """The targets bisect may compare target's build with, in the order it tries them: the
    one against= named, else the llvm-cpu and vmvx targets declared (those without flags of
    their own first), leaving out any that builds just what target builds."""
    if target.compare_with_chosen:
        return list(target.compare_with)
    mine = (target.backend, target.arch, tuple(compile_flags(target)))
    # (when none is named, among the backends every machine has: Backend.reference)
    usable = [t for t in target.compare_with if BACKENDS[t.backend].reference
              and (t.backend, t.arch, tuple(compile_flags(t))) != mine]
    return sorted(usable, key=lambda t: bool(t.flags))


def _describe(target) -> dict:
    return {"name": target.name, "flags": compile_flags(target), "driver": target.driver,
            "atol": target.atol, "rtol": target.rtol}


class Builds:
    """Compiles and runs the traced builds of one model in a temp directory."""

    def __init__(self, tmp: Path, ctx, info: dict, answer):
        self.tmp, self.ctx, self.info, self.answer = tmp, ctx, info, answer
        archive = ctx.inputs[EMIT.name] / "model.irpa"
        self.parameters = archive if not inline_weights(ctx.model, ctx.target) \
            and archive.stat().st_size else None

    def compile(self, name: str, target_flags: list[str]) -> Path | str:
        """The traced module built with a target's flags (its executables' sources in
        sources/<name>), or why it could not be built."""
        emitted = self.ctx.inputs[EMIT.name]
        flags = ["--compile-from=input", *target_flags, *TRACE_FLAGS,
                 f"--iree-hal-dump-executable-sources-to={self.tmp / 'sources' / name}"]
        if self.parameters is None and (emitted / "model.irpa").stat().st_size:
            flags += [f"--iree-parameter-import={SCOPE}={emitted / 'model.irpa'}",
                      f"--iree-parameter-import-maximum-size={1 << 62}"]
        module = self.tmp / f"{name}.vmfb"
        try:
            iree_compile(emitted / "model.mlirbc", module, flags, self.ctx)
        except StageError as err:
            if err.transient:   # (a timeout, a stopped run: no verdict, never a "cannot")
                raise
            return str(err)
        return module

    def reference(self, target, atol: float, rtol: float, ahead: dict):
        """(the reference target, its traced values, what was tried): the first candidate
        that builds and whose outputs match the framework's answer (its own tolerances),
        else the first that built, as the record says; a StageError naming each one's
        failure where none built. ahead: candidates' compiles already under way."""
        tried, built = [], None
        candidates = references(target)
        if not candidates:
            raise StageError(f"no reference target to compare {target.name} with: declare an "
                             "llvm-cpu or vmvx target in targets.yaml, or name one with against=")
        for candidate in candidates:
            module = ahead[candidate.name].result() if candidate.name in ahead else \
                self.compile(f"reference-{candidate.name}", compile_flags(candidate))
            if isinstance(module, str):
                tried.append({"target": candidate.name, "outcome": f"not built: {module}"})
                continue
            values = dispatch_trace.Values(atol, rtol)
            outputs = self.run(module, candidate.driver, values.add, outputs=True)
            matches, outcome = self.matches_framework(outputs, candidate)
            tried.append({"target": candidate.name, "outcome": outcome,
                          "matches_framework": matches})
            if matches:
                return candidate, values, tried
            built = built or (candidate, values)
        if built is None:
            raise StageError("no reference could be built: " + "; ".join(
                f"{t['target']}: {t['outcome']}" for t in tried),
                result={"references_tried": tried})
        return (*built, tried)

    def matches_framework(self, outputs: list | None, target) -> tuple[bool, str]:
        """Whether target's build answered as the framework did (its own tolerances)."""
        if outputs is None:
            return True, "used: no framework answer to check it against"
        checked = judge(outputs, self.answer, self.ctx.model, target.atol, target.rtol)
        error = checked.get("max_abs_error")
        said = "matches" if checked["passed"] else "differs from"
        return checked["passed"], f"{said} the framework's answer" + \
            ("" if error is None else f" (max abs error {error:.3g})")

    def run(self, module: Path, driver: str, each, outputs: bool = False) -> list | None:
        """Run module on the model's inputs, handing each traced dispatch to `each` as it is
        read; with outputs, the module's outputs (None where there is no framework answer
        to say how many)."""
        import numpy as np
        args = module_args(self.tmp, module, self.parameters, driver, self.info["entry"],
                            self.answer.inputs)
        count = (self.answer.outputs or len(self.answer.reference)) \
            if outputs and self.answer.reference is not None else 0
        files = [self.tmp / f"out{i}.npy" for i in range(count)]
        with _streamed([tool("iree-run-module"), *args, *(f"--output=@{f}" for f in files)],
                       self.ctx) as lines:
            for dispatch in dispatch_trace.parse(lines):
                each(dispatch)
        return [np.load(f) for f in files] if count else None


@contextlib.contextmanager
def _streamed(argv: list[str], ctx):
    """argv's stderr, where IREE prints the traced tensors, line by line as it prints (a
    traced run's is hundreds of MB); a StageError with its words if it fails, a kill past
    RUN_TIMEOUT_S. The lines that are no tensor or header go to the log."""
    command = shlex.join(argv)
    ctx.log(f"$ {command}")
    said: list[str] = []

    def lines(stream):
        for line in stream:
            if not (line.startswith("=== ") or dispatch_trace.TENSOR.match(line[:80])):
                said.append(line.rstrip("\n"))
            yield line

    with tempfile.TemporaryFile() as out, \
            process.started(argv, RUN_TIMEOUT_S, stdout=out, stderr=subprocess.PIPE,
                            text=True) as proc:
        try:
            stream = lines(proc.stderr)
            yield stream
            for _ in stream:   # (what the consumer left: the process must finish)
                pass
            returncode = proc.wait()
        finally:
            proc.stderr.close()
    stderr = "\n".join(line for line in said if line.strip())
    if stderr:
        ctx.log(stderr)
    if returncode != 0:
        raise StageError(f"{Path(argv[0]).name} {process.exit_words(returncode)}: "
                         f"{runtime_error(stderr)}", command=command, exit_code=returncode)


class Search:
    """The failing build's dispatches, as they stream past the reference's values: the
    first whose inputs agree and outputs do not, and the few after it."""

    def __init__(self, values: dispatch_trace.Values):
        self.values = values
        self.agreeing = 0                 # dispatches whose outputs agreed, before the bad one
        self.first: dict | None = None
        self.first_differing: dict | None = None   # where no dispatch's inputs agreed
        self.after: list[dict] = []
        self.unpaired: list[str] = []
        self.partners: set[int] = set()   # reference dispatches whose values were matched
        self.count = 0

    def step(self, dispatch) -> None:
        self.count += 1
        step = next(dispatch_trace.steps(self.values, [dispatch]))
        # a reference dispatch is paired once any value it produced is matched here
        self.partners |= {m.partner.position for m in (*step.inputs, *step.outputs)
                          if m.partner is not None}
        if not step.paired:
            self.unpaired.append(dispatch.symbol)
        elif self.first is not None:
            if len(self.after) < AFTER:
                self.after.append(step.describe())
        elif not step.outputs_agree and step.inputs_agree:
            self.first = step.describe()
        elif not step.outputs_agree:
            self.first_differing = self.first_differing or step.describe()
        else:
            self.agreeing += 1
        dispatch.inputs = dispatch.outputs = []   # (only the reference's values are kept)

    def result(self, reference: str, atol: float, rtol: float) -> dict:
        never = [d.symbol for d in self.values.dispatches
                 if d.position not in self.partners and d.outputs]
        first = self.first
        if first is not None:
            first = {**first, "reference_target": reference, "agreeing_before": self.agreeing,
                     "source_op": None}
        result = {"first_bad_dispatch": first, "after": self.after, "reference_target": reference,
                  "atol": atol, "rtol": rtol,
                  "dispatches": {"failing": self.count, "reference": len(self.values.dispatches)},
                  "unpaired": {"failing": self.unpaired[:NAMED], "failing_count": len(self.unpaired),
                               "reference": never[:NAMED], "reference_count": len(never)},
                  "source_op_why": "kiln's MLIR carries no source locations (loc(unknown) from "
                                   "import on)"}
        result["summary"] = _summary(result, self.first_differing)
        if first is None and self.first_differing is not None:
            result["first_differing_dispatch"] = self.first_differing
        return result


def _summary(result: dict, differing: dict | None) -> str:
    first, reference = result["first_bad_dispatch"], result["reference_target"]
    if first is not None:
        return (f"first bad dispatch #{first['ordinal']} {first['symbol']}: {_error(first)} "
                f"against {reference}'s {first['partner'] or 'value'}; "
                f"{first['agreeing_before']} agree before it")
    if differing is not None:
        return (f"no dispatch's inputs agree where its outputs differ; the first that differs "
                f"is #{differing['ordinal']} {differing['symbol']}")
    return (f"every paired dispatch agrees with {reference}'s within atol/rtol: the error "
            "builds up below the per-dispatch tolerance")


def _error(dispatch: dict) -> str:
    if dispatch["nonfinite"]:
        return f"NaN/Inf in {dispatch['nonfinite']} elements where the reference has none"
    return f"max abs error {dispatch['max_abs_error']:.3g}"


def _shown(result: dict) -> dict:
    """What the reports show of a diagnosis (pipeline.report reads any stage's so): its
    summary, a table (the first bad dispatch and the next few) and its files."""
    first = result["first_bad_dispatch"] or result.get("first_differing_dispatch")
    rows = [{"": "first bad" if i == 0 and result["first_bad_dispatch"] else "",
             "#": d["ordinal"], "dispatch": d["symbol"],
             "max abs error": d["max_abs_error"] if not d["nonfinite"] else
             f"NaN/Inf x{d['nonfinite']}", "max rel error": d["max_rel_error"],
             f"{result['reference_target']}'s dispatch": d["partner"] or ""}
            for i, d in enumerate([first, *result["after"]] if first else [])]
    files = list((first or {}).get("sources", {}).values()) if first else []
    return {"rows": rows, "files": files}


def _keep_sources(ctx, tmp: Path, result: dict) -> None:
    """The executable sources of the first bad dispatch and its partner, as outputs (a note
    in each file where there is none)."""
    first = result["first_bad_dispatch"] or result.get("first_differing_dispatch")
    reference = result["reference_target"]
    picks = {"failing": ("failing", first and first["executable"]),
             "reference": (f"reference-{reference}", first and first["partner_executable"])}
    for side, (folder, executable) in picks.items():
        dest = ctx.out / SOURCES[side]
        source = tmp / "sources" / folder / f"module_{executable}.mlir" if executable else None
        if source is not None and source.is_file():
            shutil.copyfile(source, dest)
        else:
            dest.write_text(f"// no {side} dispatch to show: {result['summary']}\n")
    if first is not None:
        first["sources"] = {side: f"build/{ctx.model.name}/{ctx.target.name}/bisect/{name}"
                            for side, name in SOURCES.items()}


STAGE = Bisect()
