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

The result names the first dispatch whose outputs differ from the reference's (beyond the
target's atol/rtol) by more than its inputs' error and its precision explain (the rule:
stages/dispatch_trace.py, docs/DESIGN.md §10.9), how many agreed before it, how the error
grows over the next few, the dispatches that had no partner, and the two executables'
sources (dispatch.failing.mlir, dispatch.reference.mlir). Where no dispatch stands out, the
error grew a little at each (rounding, in a deep net): it says "accumulated rounding, no
single dispatch". Either way the error along the paired dispatches is the result's curve
(and report.html's plot). kiln's MLIR carries no source locations (from import on it holds
only loc(unknown): docs/DESIGN.md §10.3): the source op is not named.

A target's variants are diagnosed once where they fail the same way: a variant's bisect
reads the bisects of the variants before it in the target's order (peers), and where one
of them traced a failure whose output error is within SAME_FAILURE times its own, it
refers to that diagnosis instead of tracing again (docs/DESIGN.md §10.9). Each result says
its cost in seconds.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import shlex
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline import process
from pipeline.names import parse_upstream
from pipeline.run.entry import FAILURES
from pipeline.stage import MODULE, Role, Stage, StageError
from pipeline.vocab import Status
from stages import dispatch_trace, framework_trace
from stages.backends import BACKENDS
from stages.capture import STAGE as CAPTURE
from stages.emit import EMITTED, EMITTERS, emitted
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
RESULT = "bisect.json"
# a variant whose output error is within this factor of an earlier variant's traced failure
# (both ways) fails the same way: it refers to that diagnosis (docs/DESIGN.md §10.9)
SAME_FAILURE = 2.0
ACCUMULATED = "accumulated rounding, no single dispatch"


class Bisect(Stage):
    name = "bisect"
    doc = "where validate failed on the numbers: trace both builds, name the first bad dispatch"
    group = VALIDATE.name   # `doit validate` (and plain `doit`) bisects what it found off
    per_target = True
    follows = VALIDATE.name
    role = Role.DIAGNOSIS
    # the module validate ran: its maker says how to build it again, traced
    inputs = (CAPTURE.name, EMITTED, VALIDATE.name, MODULE)
    # the earlier variants' bisects, where they ran (peers): a variant that did not fail has
    # none
    partial_inputs = True
    code = (HERE / "dispatch_trace.py", HERE / "iree_tools.py", HERE / "targets.py",
            HERE / "backends.py", HERE / "validate.py", HERE / "compare.py", HERE / "lower.py",
            HERE / "framework_trace.py")

    def code_files(self, model):   # (+ the adapter: bisect against the framework runs it)
        return (*super().code_files(model), *framework_trace.adapter_code(model))

    def outputs(self, model):
        return (RESULT, *SOURCES.values())

    def peers(self, model, target, targets):
        """The variants of target's own target before it, in its order: the ones whose
        diagnosis it may share."""
        if target.base is None:
            return ()
        siblings = [t.name for t in targets if t.base == target.base]
        return tuple(siblings[:siblings.index(target.name)]) if target.name in siblings else ()

    def tools(self, model):
        return ("iree-compile", "iree-base-runtime", "numpy")   # (numpy: the comparison)

    def reads(self, upstream, outputs, model, target):
        if upstream == VALIDATE.name:   # its outcome (the engine reads it), none of its files
            return ()
        if upstream == CAPTURE.name:
            return ("inputs.npz", "reference.npz", "reference64.npz", "expected.npz",
                    "alternative.npz", "capture.json", *framework_trace.captured_files(model))
        if upstream in EMITTERS:
            return ("model.mlirbc", "model.json", "model.irpa")
        if upstream == self.name:   # an earlier variant's diagnosis
            return (RESULT,)
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
        started = time.perf_counter()
        info = json.loads((emitted(ctx) / "model.json").read_text())
        answer = answer_for(ctx, info)
        atol, rtol = VALIDATE.tolerances(ctx.model, ctx.target)
        # (the pool exits first: a compile still running ends before its directory goes)
        with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
            build = Builds(Path(tmp), ctx, info, answer)
            earlier = _earlier_diagnoses(ctx)
            own = build.error(build.run(module_built(ctx)[1] / "module.vmfb", ctx.target.driver,
                                        None, outputs=True)) if earlier else None
            same = next((e for e in earlier if same_failure(own, e["failing_error"])), None)
            if same is not None:
                result = _referral(same, own)
                _keep_notes(ctx, result)
            else:
                result = _traced(ctx, build, pool, atol, rtol)
                _keep_sources(ctx, Path(tmp), result)
        result["seconds"] = round(time.perf_counter() - started, 2)
        result["said"] = result["summary"]   # (what it found, without the cost)
        result["summary"] += f" ({_cost(result)})"
        result.update(_shown(result))
        (ctx.out / RESULT).write_text(json.dumps(result, indent=1, sort_keys=True))
        return result


def _traced(ctx, build: Builds, pool, atol: float, rtol: float) -> dict:
    """The failing build and a reference traced and compared (the diagnosis proper)."""
    # the first reference compiles beside the failing build (two iree-compiles)
    # (in this context: its tool time is the stage's)
    ahead = {c.name: pool.submit(contextvars.copy_context().run, build.compile,
                                 f"reference-{c.name}", compile_flags(c))
             for c in references(ctx.target)[:1]}
    clock = time.perf_counter()
    failing = build.compile("failing", rebuild_flags(ctx))
    if isinstance(failing, str):
        raise StageError(f"the failing target's build cannot be traced: {failing}")
    reference, values, tried = build.reference(ctx.target, atol, rtol, ahead)
    traced_reference = time.perf_counter()
    found = Search(values)
    outputs = build.run(failing, ctx.target.driver, found.step, outputs=True)
    steps = {"compile and trace the reference": round(traced_reference - clock, 2),
             "trace the failing build and compare": round(time.perf_counter() - traced_reference, 2)}
    result = {**found.result(reference.name, atol, rtol), "references_tried": tried,
              "failing_error": build.error(outputs), "seconds_by_step": steps}
    # IREE's builds agree, the framework not: its own tensors say where (docs/DESIGN.md §10.8)
    result.update(framework_trace.against_framework(ctx, result, values.dispatches,
                                                    build.answer.inputs, atol, rtol))
    return result


def _earlier_diagnoses(ctx) -> list[dict]:
    """The bisect results of the variants before this one that traced a failure (not those
    that referred on: their diagnosis is one of these), with the variant's name."""
    found = []
    for name, path in ctx.inputs.items():
        stage, variant = parse_upstream(name)
        result = path / RESULT
        if stage != STAGE.name or variant is None or not result.is_file():
            continue
        earlier = json.loads(result.read_text())
        if earlier.get("refers_to") is None and "failing_error" in earlier and "said" in earlier:
            found.append({**earlier, "target": variant})
    return found


def same_failure(mine: dict | None, theirs: dict | None) -> bool:
    """Whether two variants' outputs are off alike: both NaN/Inf, or max abs errors within
    SAME_FAILURE of each other (rounding differs a little between flag sets; a fault of its
    own is seldom within 2x of another's error)."""
    if mine is None or theirs is None:
        return False
    a, b = mine.get("max_abs_error"), theirs.get("max_abs_error")
    if a is None or b is None:
        return bool(a is None and b is None and mine["nonfinite"] and theirs["nonfinite"])
    return b / SAME_FAILURE <= a <= b * SAME_FAILURE if a and b else a == b


def _referral(earlier: dict, own: dict) -> dict:
    """This variant's diagnosis as the earlier variant's, which it refers to."""
    target = earlier["target"]
    mine, theirs = own["max_abs_error"], earlier["failing_error"]["max_abs_error"]
    errors = "NaN/Inf in both" if mine is None else \
        f"output error {mine:.3g} against its {theirs:.3g}, within {SAME_FAILURE:g}x"
    kept = ("first_bad_dispatch", "after", "finding", "reference_target", "atol", "rtol")
    return {**{k: earlier.get(k) for k in kept}, "refers_to": target, "failing_error": own,
            "referred_seconds": earlier.get("seconds"),
            "summary": f"the same failure as {target}'s ({errors}): {earlier['said']}",
            "files": earlier.get("files", []), "rows": earlier.get("rows", [])}


def _cost(result: dict) -> str:
    if result.get("refers_to"):
        earlier = result.get("referred_seconds")
        return f"not traced again: {result['seconds']:.0f} s" + \
            (f", where {result['refers_to']}'s bisect took {earlier:.0f} s" if earlier else "")
    return f"bisect took {result['seconds']:.0f} s"


def _keep_notes(ctx, result: dict) -> None:
    """A referral's output files: notes saying whose sources to read."""
    for side, name in SOURCES.items():
        (ctx.out / name).write_text(f"// the same failure as {result['refers_to']}'s: its "
                                    f"{side} dispatch is in build/{ctx.model.name}/"
                                    f"{result['refers_to']}/bisect/{name}\n")


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
        archive = emitted(ctx) / "model.irpa"
        self.parameters = archive if not inline_weights(ctx.model, ctx.target) \
            and archive.stat().st_size else None

    def compile(self, name: str, target_flags: list[str]) -> Path | str:
        """The traced module built with a target's flags (its executables' sources in
        sources/<name>), or why it could not be built."""
        emitted_dir = emitted(self.ctx)
        flags = ["--compile-from=input", *target_flags, *TRACE_FLAGS,
                 f"--iree-hal-dump-executable-sources-to={self.tmp / 'sources' / name}"]
        if self.parameters is None and (emitted_dir / "model.irpa").stat().st_size:
            flags += [f"--iree-parameter-import={SCOPE}={emitted_dir / 'model.irpa'}",
                      f"--iree-parameter-import-maximum-size={1 << 62}"]
        module = self.tmp / f"{name}.vmfb"
        try:
            iree_compile(emitted_dir / "model.mlirbc", module, flags, self.ctx)
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

    def error(self, outputs: list | None) -> dict | None:
        """The outputs' error against the framework's answer (None: no answer)."""
        if outputs is None:
            return None
        checked = judge(outputs, self.answer, self.ctx.model, self.ctx.target.atol,
                        self.ctx.target.rtol)
        return {"max_abs_error": checked.get("max_abs_error"),
                "max_rel_error": checked.get("max_rel_error"),
                "nonfinite": checked.get("max_abs_error") is None}

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
        with _streamed([tool("iree-run-module", self.ctx.target.toolchain), *args,
                       *(f"--output=@{f}" for f in files)],
                       self.ctx) as lines:
            for dispatch in dispatch_trace.parse(lines):
                if each is not None:
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
    first the blame rule names (its outputs off by more than its inputs' error and its
    precision explain, and that error reaching the dispatch that reads them) and the few
    after it, and the error along every paired one."""

    def __init__(self, values: dispatch_trace.Values):
        self.values = values
        self.walk = dispatch_trace.Walk(values)
        # every paired dispatch's description, with whether its outputs agree and it is
        # blamed (its blame may be withdrawn or confirmed by a later one)
        self.paired: list[tuple[dict, bool, bool]] = []
        self.withdrawn: dict[int, int] = {}   # a blamed dispatch's ordinal -> its reader's
        self.confirmed: dict[int, int] = {}
        self.unpaired: list[str] = []
        self.partners: set[int] = set()   # reference dispatches whose values were matched
        self.count = 0

    def step(self, dispatch) -> None:
        self.count += 1
        step = self.walk.step(dispatch)
        # a reference dispatch is paired once any value it produced is matched here
        self.partners |= {m.partner.position for m in (*step.inputs, *step.outputs)
                          if m.partner is not None}
        self.withdrawn.update(dict.fromkeys(step.withdrawn, dispatch.position))
        self.confirmed.update(dict.fromkeys(step.confirms, dispatch.position))
        if step.paired:
            self.paired.append((step.describe(), step.outputs_agree, step.blamed))
        else:
            self.unpaired.append(dispatch.symbol)
        dispatch.inputs = dispatch.outputs = []   # (only the reference's values are kept)

    def result(self, reference: str, atol: float, rtol: float) -> dict:
        never = [d.symbol for d in self.values.dispatches
                 if d.position not in self.partners and d.outputs]
        kept = [(d, agrees, blamed) for d, agrees, blamed in self.paired
                if d["ordinal"] not in self.withdrawn]
        at = next((i for i, (_, _, blamed) in enumerate(kept) if blamed), None)
        first = None
        if at is not None:
            first = {**kept[at][0], "reference_target": reference, "source_op": None,
                     "agreeing_before": sum(agrees for _, agrees, _ in kept[:at]),
                     "confirmed_by": self.confirmed.get(kept[at][0]["ordinal"])}
        differing = next((d for d, agrees, _ in kept if not agrees), None)
        result = {"first_bad_dispatch": first, "reference_target": reference,
                  "after": [d for d, _, _ in kept[at + 1:at + 1 + AFTER]] if first else [],
                  "finding": "dispatch" if first else ACCUMULATED,
                  "atol": atol, "rtol": rtol, "curve": _curve([d for d, _, _ in kept]),
                  "rule": {"amplify": dispatch_trace.AMPLIFY,
                           "rounding": dispatch_trace.ROUNDING,
                           "printed_floor": dispatch_trace.PRINTED_FLOOR},
                  "set_aside": {"count": len(self.withdrawn), "dispatches": [
                      {"ordinal": d["ordinal"], "symbol": d["symbol"],
                       "relative_error": d["relative_error"], "read_by": self.withdrawn[d["ordinal"]]}
                      for d, _, _ in self.paired if d["ordinal"] in self.withdrawn][:NAMED]},
                  "dispatches": {"failing": self.count, "reference": len(self.values.dispatches)},
                  "unpaired": {"failing": self.unpaired[:NAMED], "failing_count": len(self.unpaired),
                               "reference": never[:NAMED], "reference_count": len(never)},
                  "source_op_why": "kiln's MLIR carries no source locations (loc(unknown) from "
                                   "import on)"}
        result["summary"] = _summary(result, differing)
        if differing is not None and first is None:
            result["first_differing_dispatch"] = differing
        return result


def _curve(described: list[dict]) -> dict[str, list]:
    """The error along the paired dispatches, a list per figure."""
    return {name: [d[name] for d in described] for name in
            ("ordinal", "max_abs_error", "relative_error", "inputs_relative_error")}


def _summary(result: dict, differing: dict | None) -> str:
    first, reference = result["first_bad_dispatch"], result["reference_target"]
    if first is not None:
        unpaired = first["unpaired_inputs"]
        caveat = f"; its input {', '.join(unpaired)} has no partner in {reference}'s build: " \
            "the fault may be in the dispatch that made it" if unpaired else ""
        return (f"first bad dispatch #{first['ordinal']} {first['symbol']}: {_error(first)} "
                f"against {reference}'s {first['partner'] or 'value'}, beyond what its inputs' "
                f"error and its precision explain; {first['agreeing_before']} agree before it"
                f"{caveat}{_set_aside(result)}")
    curve = result["curve"]
    if differing is None:
        return (f"{ACCUMULATED}: every paired dispatch agrees with {reference}'s within "
                f"atol/rtol: the error builds up below the per-dispatch tolerance"
                f"{_set_aside(result)}")
    known = [(o, e) for o, e in zip(curve["ordinal"], curve["relative_error"]) if e is not None]
    (start, low), (end, high) = (known[0], known[-1]) if known else ((0, 0.0), (0, 0.0))
    grew = f": the error {'grows' if high > low else 'goes'} from {low:.2g} of the values' " \
        f"scale at #{start} to {high:.2g} at #{end}" if known else ""
    return (f"{ACCUMULATED}{grew}, each dispatch within what its inputs' error and its "
            f"precision explain; the first over atol/rtol is #{differing['ordinal']} "
            f"{differing['symbol']}{_set_aside(result)}")


def _set_aside(result: dict) -> str:
    """The words for blames withdrawn because their error never reached their reader."""
    count = result["set_aside"]["count"]
    if not count:
        return ""
    first = result["set_aside"]["dispatches"][0]
    error = "NaN/Inf" if first["relative_error"] is None else \
        f"error {first['relative_error']:.2g} of its scale"
    return (f"; {count} dispatch{'es' * (count > 1)} set aside, paired with another tensor "
            f"of the same layout (#{first['ordinal']}'s {error} did not reach "
            f"#{first['read_by']}, which reads it)")


def _error(dispatch: dict) -> str:
    if dispatch["nonfinite"]:
        return f"NaN/Inf in {dispatch['nonfinite']} elements where the reference has none"
    relative = dispatch.get("relative_error")
    return f"max abs error {dispatch['max_abs_error']:.3g}" + \
        (f" ({relative:.2g} of its scale, where its inputs carry "
         f"{dispatch['inputs_relative_error']:.2g})"
         if relative is not None and dispatch.get("inputs_relative_error") is not None else "")


def _shown(result: dict) -> dict:
    """What the reports show of a diagnosis (pipeline.report reads any stage's so): its
    summary, a table (the first bad dispatch and the next few, or where the error first
    passed the tolerance), its files, and a plot of the error along the dispatches."""
    if result.get("refers_to"):   # (the earlier variant's rows and files, as referred)
        return {}
    first = result["first_bad_dispatch"] or result.get("first_differing_dispatch")
    label = "first bad" if result["first_bad_dispatch"] else "first over atol/rtol"
    rows = [{"": label if i == 0 else "",
             "#": d["ordinal"], "dispatch": d["symbol"],
             "max abs error": d["max_abs_error"] if not d["nonfinite"] else
             f"NaN/Inf x{d['nonfinite']}", "max rel error": d["max_rel_error"],
             f"{result['reference_target']}'s dispatch": d["partner"] or ""}
            for i, d in enumerate([first, *result["after"]] if first else [])]
    files = list((first or {}).get("sources", {}).values()) if first else []
    return {"rows": rows, "files": files, "plot": _plot(result)}


def _plot(result: dict) -> dict | None:
    """The error curve as pipeline.report draws any diagnosis's plot (None: no point)."""
    curve = result["curve"]
    if not curve["ordinal"]:
        return None
    first = result["first_bad_dispatch"]
    return {"title": f"error along the paired dispatches, against {result['reference_target']}",
            "x_label": "dispatch (execution order)", "y_label": "error (log)",
            "x": curve["ordinal"],
            "series": {"max abs error": curve["max_abs_error"],
                       "relative error (of the values' scale)": curve["relative_error"],
                       "its inputs' relative error": curve["inputs_relative_error"]},
            "mark": first and {"x": first["ordinal"], "label": "first bad dispatch"},
            "lines": {"atol": result["atol"]}}


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
