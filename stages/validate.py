"""Stage 8, validate: load the .vmfb on the target's driver in a fresh process (a Vulkan
device created in doit's own process hangs forked workers), run the reference inputs,
compare with the framework's answer, and time the module and the framework's own run of the
model on the same inputs and threads (stages/timing.py).

A float output the framework also computed in float64 (capture's reference64.npz) is judged
by the noise rule (stages/compare.py): its error vs float64 at most FACTOR times the
framework's own f32 error. Other outputs, and every output of a model with its own atol/rtol
(an override), are judged within atol + rtol * |reference|; that comparison is recorded for
every output, informational where the noise rule decided.

The framework is timed here rather than in a stage of its own: its figure then sits beside
the module's, measured under the same lock in the same run on the same machine, and a
framework time is only worth having next to a module time. It runs in a fresh process from
capture's artifacts (the exported program, the .onnx, ...), which validate therefore reads;
a model's targets validated by one doit run share one framework timing (stages/timing.py)."""
from __future__ import annotations

import json
import os
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.cache.digest import digest_file
from pipeline.names import parse_upstream
from pipeline.stage import MODULE, Role, Stage, StageError
from stages import frameworks, timing
from stages.backends import BACKENDS, is_host_driver
from stages.capture import STAGE as CAPTURE
from stages.compare import compare, describe_noise, noise_rule
from stages.emit import EMITTED, EMITTERS, emitted
from stages.iree_tools import devices, tool
from stages.lower import inline_weights
from stages.runtime import device_for, module_args, run_module, run_tool

HERE = Path(__file__).parent


class Validate(Stage):
    name = "validate"
    doc = "run each module on its device, compare with the framework's answer, time both"
    per_target = True
    default = True   # `doit` alone validates the default matrix
    role = Role.VERDICT
    # the module built for the target: codegen's, or a later stage's that remakes it
    inputs = (CAPTURE.name, EMITTED, MODULE)
    code = (HERE / "iree_tools.py", HERE / "compare.py", HERE / "timing.py", HERE / "backends.py")

    def outputs(self, model):
        return ("result.json", "outputs.npz")

    def code_files(self, model):
        # the adapter's runner() is what the framework's time measures
        return (*super().code_files(model), *frameworks.get(model.framework).code_files())

    def tools(self, model):
        # iree-run-module has no --version: its package's; numpy's, which compares the
        # outputs (the verdict); the framework's, which is timed
        return ("iree-base-runtime", "numpy", *frameworks.get(model.framework).dists)

    def reads(self, upstream, outputs, model, target):
        if upstream == CAPTURE.name:   # the framework's own artifacts too: its run is timed
            return ("inputs.npz", "reference.npz", "reference64.npz", "expected.npz",
                    "alternative.npz", "capture.json",
                    *frameworks.get(model.framework).captured)
        if upstream in EMITTERS:      # the weights, where the module loads them at run time
            return ("model.json", *(() if inline_weights(model, target) else ("model.irpa",)))
        return outputs

    def tolerances(self, model, target) -> tuple[float, float]:
        return (target.atol if model.atol is None else model.atol,
                target.rtol if model.rtol is None else model.rtol)

    def peers(self, model, target, targets):
        # no framework answer (imported MLIR): compare with the first llvm-cpu target's run
        answers = lambda t: BACKENDS[t.backend].answers_imported_mlir  # noqa: E731
        if frameworks.get(model.framework).has_reference or answers(target):
            return ()
        cpu = next((t.name for t in targets if answers(t)), None)
        return (cpu,) if cpu else ()

    def resources(self, target):
        # a CPU driver runs on any worker; a device only on workers that declare it
        return {} if is_host_driver(target.driver) else {target.driver: 1}

    def worker_resources(self):
        return {d.split("://")[0]: 1 for d in devices() if not is_host_driver(d)}

    def key_params(self, model, target):
        atol, rtol = self.tolerances(model, target)
        # the device it ran on is part of the answer: lavapipe's pass is not a GPU's
        return {"driver": target.driver, "device": device_for(target.driver), "atol": atol, "rtol": rtol,
                **_timing_params(target), **self._own_inputs(model)}

    def _own_inputs(self, model) -> dict:
        """Without a framework (imported MLIR) validate makes the inputs itself, from the
        model's shapes, seed and input files: those are then part of its key (a run with
        other shapes= is another answer, never the cached one)."""
        if frameworks.get(model.framework).has_reference:
            return {}
        files = {role: digest_file(path) for role, path in sorted(model.input_files().items())}
        return {"inputs": {"shapes": model.shapes, "seed": model.seed, "files": files}}

    def unavailable(self, model, target):
        return None if device_for(target.driver) else f"skipped: no {target.driver} device"

    def run(self, ctx):
        # a bad setting fails before anything runs; None: timing off
        import numpy as np
        at_most = timing_repetitions() if ctx.target.timing else None
        emitted_dir = emitted(ctx)
        info = json.loads((emitted_dir / "model.json").read_text())
        answer = answer_for(ctx, info)
        archive = emitted_dir / "model.irpa"
        parameters = archive if not inline_weights(ctx.model, ctx.target) \
            and archive.stat().st_size else None
        outputs, speed, lost = _run_and_time(ctx, info, parameters, answer, at_most)
        atol, rtol = self.tolerances(ctx.model, ctx.target)
        result = {**judge(outputs, answer, ctx.model, atol, rtol), **speed,
                  "device": device_for(ctx.target.driver),
                  "parameters": str(archive.relative_to(emitted_dir.parent.parent)) if parameters else None}
        if answer.notes or lost:
            result["notes"] = [*answer.notes, *lost]
        np.savez(ctx.out / "outputs.npz", **{f"out{i}": o for i, o in enumerate(outputs)})
        (ctx.out / "result.json").write_text(json.dumps(result, indent=1, sort_keys=True))
        if not result["passed"]:
            raise StageError(failure_message(result, atol, rtol, _reference_name(answer)),
                             result=result)
        return result


@dataclass
class Answer:
    """What the module is run on and compared with: capture's inputs and the framework's
    answer, or, for an imported MLIR file (no framework), seeded inputs and a peer target's
    outputs if there is one (else nothing to compare with)."""
    inputs: list
    reference: list | None
    tolerances: list | None = None   # capture's per-output tolerances (quantized outputs)
    notes: list = field(default_factory=list)
    peer: str | None = None          # the target whose outputs are the reference
    outputs: int | None = None       # how many the module returns (None: as the reference)
    # a model's own expected outputs, compared with too (may be fewer than its outputs), and
    # what the reference and they are, where not the framework's answer alone
    expected: list | None = None
    origin: dict = field(default_factory=dict)
    # the framework's float64 answer (None: none) and capture's "f64" record (why, and its own
    # f32 error per output)
    reference64: list | None = None
    f64: dict = field(default_factory=dict)
    # the framework's answer by another implementation of its own, and capture's record of
    # it (what it is, its spread from the reference per output)
    alternative: list | None = None
    alternative_record: dict | None = None


def answer_for(ctx, info: dict) -> Answer:
    if CAPTURE.name in ctx.inputs:
        captured = ctx.inputs[CAPTURE.name]
        said = json.loads((captured / "capture.json").read_text())
        return Answer(frameworks.load_arrays(captured / "inputs.npz"),
                      frameworks.load_arrays(captured / "reference.npz"),
                      said.get("tolerances"), said.get("notes", []), outputs=said.get("model_outputs"),
                      expected=frameworks.load_arrays(captured / "expected.npz") or None,
                      origin={k: said[k] for k in ("reference_from", "expected_from") if k in said},
                      reference64=frameworks.load_arrays(captured / "reference64.npz") or None,
                      f64=said.get("f64", {}),
                      alternative=frameworks.load_arrays(captured / "alternative.npz") or None,
                      alternative_record=said.get("alternative"))
    peer = next((name for name in ctx.inputs if parse_upstream(name)[1]), None)
    return Answer(frameworks.model_inputs(ctx.model, info["inputs"]),
                  frameworks.load_arrays(ctx.inputs[peer] / "outputs.npz") if peer else None,
                  peer=parse_upstream(peer)[1] if peer else None)


def module_built(ctx) -> tuple[Stage, Path]:
    """The stage that built the module for ctx's own target (the MODULE input: codegen, or a
    later stage that remade it) and its directory."""
    own = [(name, path) for name, path in ctx.built(MODULE).items()
           if not parse_upstream(name)[1]]
    if len(own) != 1:   # (the plan gives every target one: a stage that applies nowhere)
        raise StageError(f"{len(own)} modules built for target {ctx.target.name}: a stage of "
                         f"role '{MODULE.role}' must build exactly one per target it applies to")
    ((name, built),) = own
    return ctx.makers[name], built


# the speed fields of a result with timing off: no figure rather than a wrong one
UNTIMED = {"timing": "off", "latency_ms": None, "latency": None, "framework_latency": None,
           "speed_ratio": None, "framework_latency_why": "timing off"}


def _run_and_time(ctx, info: dict, parameters: Path | None, answer: Answer,
                  at_most: int | None) -> tuple[list, dict, list[str]]:
    """(outputs, speed figures, notes of runs repeated because the device was lost). With
    timing off (at_most None) nothing is timed: no benchmark, no framework process."""
    lost: list[str] = []
    module = module_built(ctx)[1] / "module.vmfb"
    with tempfile.TemporaryDirectory() as tmp:
        args = module_args(Path(tmp), module, parameters, ctx.target.driver, info["entry"],
                            answer.inputs)
        expected = answer.outputs or (None if answer.reference is None else len(answer.reference))
        outputs, wall_ms = run_module(Path(tmp), args, expected, ctx, lost)
        speed = dict(UNTIMED) if at_most is None else _speed(args, wall_ms, at_most, ctx, lost)
    return outputs, speed, lost


def judge(outputs: list, answer: Answer, model, atol: float, rtol: float) -> dict:
    """The comparison's verdict and errors (passed, max abs/rel error, tolerances used)."""
    if answer.reference is None:
        return {"passed": True, "max_abs_error": None, "max_rel_error": None, "atol": atol,
                "rtol": rtol, "checked": "runs only: no framework reference for an MLIR file"}
    per_output = _per_output_tolerances(answer.tolerances, model)
    # a model's own expected outputs may be fewer than its outputs: the first ones (ONNX's
    # runner's reading of output_N.pb), where they are the reference
    partial = outputs[:len(answer.reference)] if answer.origin.get("reference_from") else outputs
    checked = compare(partial, answer.reference, atol, rtol, per_output)
    _judge_by_noise(checked, partial, answer, model)
    _match_alternative(checked, partial, answer, per_output)
    if any(per_output or []):
        checked["tolerance_why"] = [t and t.get("why") for t in answer.tolerances]
    if answer.peer:
        checked["checked"] = f"against {answer.peer}'s outputs (no framework reference)"
    if answer.origin:
        _check_expected(checked, outputs, answer, atol, rtol, per_output)
    return checked


def _judge_by_noise(checked: dict, outputs: list, answer: Answer, model) -> None:
    """Into checked: each float output with a float64 answer judged by the noise rule (its
    verdict replaces atol/rtol's, which stays as tolerance_passed), the rule each output was
    judged by, and the summary's rule, errors and factor (the output nearest its limit)."""
    import numpy as np
    errors = answer.f64.get("framework_error") or []
    spreads = (answer.alternative_record or {}).get("spread") or []
    quantized = answer.tolerances or []
    override = model.atol is not None or model.rtol is not None
    judged = []
    for output in checked["outputs"]:
        index = output["index"]
        framework_error = errors[index] if index < len(errors) else None
        spread = spreads[index] if index < len(spreads) else None
        steps = quantized[index] if index < len(quantized) else None
        if steps and not _beyond_steps(spread, steps):
            spread = None
        dtype = np.asarray(answer.reference[index]).dtype
        if override or dtype.kind != "f" or (framework_error is None and spread is None):
            output["rule"] = "atol/rtol"
            continue
        if answer.reference64 is not None and framework_error is not None:
            verdict = noise_rule(outputs[index], answer.reference64[index], framework_error,
                                 dtype)
        else:   # no float64: the spread of the framework's own two implementations
            verdict = noise_rule(outputs[index], answer.reference[index], spread, dtype,
                                 rule="spread")
            verdict["spread_from"] = answer.alternative_record["from"]
            if steps:
                verdict["spread_why"] = f"the framework's own kernels differ by {spread:.3g}, " \
                    f"more than this output's steps allow ({steps['atol']:.3g})"
        output.update(tolerance_passed=output["passed"], **verdict)
        judged.append(output)
    checked["passed"] = all(o["passed"] for o in checked["outputs"])
    if not judged:
        checked["rule"] = "atol/rtol"
        checked["rule_why"] = "the model's own atol/rtol" if override else \
            answer.f64.get("why") or "no float64 answer"
        return
    nearest = max(judged, key=lambda o: float("inf") if o["factor"] is None else o["factor"])
    checked.update({k: nearest[k] for k in ("rule", "framework_error", "target_error", "factor",
                                            "factor_allowed")})


def _beyond_steps(spread: float | None, steps: dict) -> bool:
    """Whether the framework's two implementations differ on a quantized float output by
    more than its steps allow (dynamic-range files, where LiteRT's XNNPACK and reference
    kernels quantize activations on the fly each their own way): then that spread, not the
    steps, is the model's own noise, judged by the same rule as a float model's."""
    return spread is not None and spread > steps.get("atol", 0.0)


# the rules that judge an output by the framework's own noise (stages/compare.py's noise_rule)
NOISE_RULES = ("f64-noise", "spread")


def _match_alternative(checked: dict, outputs: list, answer: Answer, per_output) -> None:
    """A quantized output that misses the reference within its steps passes where it matches
    the framework's other implementation within them (LiteRT's reference kernels, where its
    XNNPACK kernels round otherwise): recorded as `matched`, with that comparison."""
    if answer.alternative is None or not per_output:
        return
    for output in checked["outputs"]:
        index = output["index"]
        given = per_output[index] if index < len(per_output) else None
        if output["passed"] or given is None or index >= len(answer.alternative):
            continue
        other = compare([outputs[index]], [answer.alternative[index]], *given, [given])
        if other["passed"]:
            output.update(passed=True, matched=answer.alternative_record["from"],
                          matched_max_abs_error=other["max_abs_error"])
    checked["passed"] = all(o["passed"] for o in checked["outputs"])
    matched = [o["index"] for o in checked["outputs"] if o.get("matched")]
    if matched:
        checked["matched"] = f"outputs {matched} match {answer.alternative_record['from']} " \
            "within their steps, not the default kernels"


def _reference_name(answer: Answer) -> str:
    named = answer.origin.get("reference_from")
    return "the reference" if not named else \
        f"{named}'s answer" if named == "onnxruntime" else named


def _check_expected(checked: dict, outputs: list, answer: Answer, atol: float, rtol: float,
                    per_output) -> None:
    """Into checked: the comparison with the model's own expected outputs too (the first
    outputs, as many as it gives), and what the module was compared with."""
    reference, expected = answer.origin.get("reference_from"), answer.origin.get("expected_from")
    checked["checked"] = f"against {reference}" + (f" and {expected}" if expected else " alone")
    if len(outputs) > len(answer.reference) and not expected:
        checked["checked"] += f" (outputs {len(answer.reference)} to {len(outputs) - 1} unchecked)"
    if expected:
        also = compare(outputs[:len(answer.expected)], answer.expected, atol, rtol, per_output)
        checked["expected"] = {"from": expected, **also}
        checked["passed"] = checked["passed"] and also["passed"]
        for key in ("max_abs_error", "max_rel_error"):   # the worse of the two
            values = [checked[key], also[key]]
            checked[key] = None if None in values else max(values)


def timing_repetitions(checked: bool = True) -> int | str:
    """KILN_TIMING_REPETITIONS (stages/timing.py), or a StageError saying what is valid.
    Unchecked (for the key, made while planning, where an error would be a traceback): a bad
    value as given, and validate's run fails with the message."""
    try:
        return timing.repetitions_setting()
    except ValueError as err:
        if not checked:
            return os.environ[timing.REPETITIONS_ENV]
        raise StageError(str(err)) from None


def _timing_params(target) -> dict:
    """What of the timing enters the key: off, or the repetitions (a quick figure, the test
    suite's, never stands in for a full one) and who times the framework."""
    if not target.timing:
        return {"timing": "off"}
    return {"timing_repetitions": timing_repetitions(checked=False),
            **({} if times_framework(target) else {"framework": "timed by the default variant"})}


def times_framework(target) -> bool:
    """The framework's own run is timed by a target's default variant only (and once per
    model in a run: stages/timing.py): its speed does not depend on IREE's flags (the pick
    reports every variant against it)."""
    return target.variant in (None, "default")


def _per_output_tolerances(tolerances, model) -> list | None:
    """(atol, rtol) per output from capture (e.g. quantization steps); a model's own atol/rtol
    in targets.yaml overrides them."""
    if not tolerances or model.atol is not None:
        return None
    return [None if t is None else (float(t["atol"]), float(t.get("rtol", 0.0)))
            for t in tolerances]


def failure_message(result: dict, atol: float, rtol: float,
                     reference: str = "the reference") -> str:
    """Why the outputs failed: for the reference, and for the model's own expected outputs
    where they were compared too, whichever differ."""
    expected = result.get("expected")
    checked = [(reference, result), *([(expected["from"], expected)] if expected else [])]
    return "; ".join(_differs(name, comparison, atol, rtol)
                     for name, comparison in checked if not comparison["passed"])


def _differs(name: str, checked: dict, atol: float, rtol: float) -> str:
    outputs = checked.get("outputs", [])

    def worst(key: str) -> str:   # an output's error is None where NaN/Inf made it meaningless
        values = [o[key] for o in outputs]
        return "n/a" if None in values else f"{max(values, default=0.0):.3g}"

    noisy = [o for o in outputs if o.get("rule") in NOISE_RULES]
    if noisy:   # judged by the noise rule: say so output by output
        failing = [o for o in noisy if not o["passed"]]
        words = [f"output {o['index']}: {describe_noise(o)}" for o in failing]
        others = [o for o in outputs if o not in noisy and not o["passed"]]
        if not others:
            return f"outputs differ from {name}: " + "; ".join(words)
        words.append(_differs(name, {**checked, "outputs": others}, atol, rtol))
        return "; ".join(words)
    text = f"outputs differ from {name}: max abs error {worst('max_abs_error')} (atol {atol:g}), " \
        f"max rel error {worst('max_rel_error')} (rtol {rtol:g})"
    nonfinite = sum((o.get("nonfinite_mismatch") or 0) for o in outputs)
    text += f"; {nonfinite} elements NaN/Inf on one side and not the same on the other" \
        if nonfinite else ""
    failing = [o for o in outputs if not o["passed"] and "atol" in o]
    return text + "".join(f"; output {o['index']}: max abs error "
                          + ("n/a" if o["max_abs_error"] is None else f"{o['max_abs_error']:.3g}")
                          + f" against its own atol {o['atol']:g}" for o in failing)


def _speed(args: list[str], wall_ms: float, at_most: int, ctx, lost: list[str]) -> dict:
    """The timing fields of the result: the module's latency (iree-benchmark-module; a module
    too slow to repeat keeps its one call), the framework's own on the same inputs and
    threads, their ratio, and the setting they were measured with (at most `at_most`
    repetitions each). One timing at a time on this machine. A framework that cannot be
    timed is recorded as such, never a failure."""
    driver = ctx.target.driver
    threads = timing.threads_for(driver)
    repetitions = timing.iree_plan(wall_ms, at_most)
    with timing.one_at_a_time(ctx) as serialized:
        if repetitions is None:
            latency = timing.iree_single_call(wall_ms)
        else:
            bench = [tool("iree-benchmark-module", ctx.target.toolchain), *args,
                     *timing.iree_benchmark_flags(repetitions, driver, threads)]
            report, _ = run_tool(bench, ctx, lost)
            try:
                latency = timing.iree_latency(json.loads(report), driver, threads, serialized)
            except (ValueError, KeyError) as err:   # not the JSON the tool should print
                raise StageError(f"iree-benchmark-module: unreadable report ({err})",
                                 command=shlex.join(bench)) from None
        if CAPTURE.name not in ctx.inputs:
            framework, why = None, "no framework: the model is an MLIR file"
        elif not times_framework(ctx.target):
            # the framework's speed does not depend on IREE's flags: the default variant times it
            framework, why = None, "timed with the target's default variant (see its pick)"
        else:
            framework, why = timing.framework_latency(
                ctx.model.framework, ctx.inputs[CAPTURE.name], threads, serialized, ctx.log,
                at_most, ctx.target.name)
    speed = {"latency_ms": latency["median_ms"], "latency": latency,
             "framework_latency": framework, "speed_ratio": timing.ratio(latency, framework),
             "timing_setting": {"repetitions": at_most, "set_by": timing.REPETITIONS_ENV
                                if os.environ.get(timing.REPETITIONS_ENV, "").strip()
                                else "default"}}
    if framework is None:
        speed["framework_latency_why"] = why
    return speed


STAGE = Validate()
