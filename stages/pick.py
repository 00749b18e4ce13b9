"""Stage 9, pick: per target, the fastest of its variants that validated becomes the module.

Each variant (a named flag set, stages/targets.py) was compiled, validated and timed by its
own lower, codegen (or whichever stage last built its module: MODULE) and validate. Pick
reads their results and modules, and writes the
winner's module to a stable path (build/<model>/<target>/pick/module.vmfb) with pick.json:
every variant, its outcome and timing, and why the winner won.

The choice is a pure function of those results, so a cached pick holds the timings it was
based on and a no-op run changes nothing. A variant must be faster than the first variant
in the target's order (its 'default') by more than the noise of the two measurements to
displace it, so equal variants never flap between runs. A variant that failed is reported,
never picked, and fails the target only when no variant passed.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline.names import DEFAULT_VARIANT, parse_upstream, variant_of
from pipeline.report.units import duration
from pipeline.stage import MODULE, Role, Stage, StageError
from pipeline.vocab import Kind
from stages.timing import ratio
from stages.validate import STAGE as VALIDATE

# a variant displaces an earlier one only when faster by more than this fraction, or by more
# than the two measurements' own spread if that is wider
NOISE_FLOOR = 0.05


class Pick(Stage):
    name = "pick"
    doc = "per target, keep the fastest variant that validated as its module"
    group = VALIDATE.name   # `doit validate` picks too
    group_doc = "validate (and time) every variant; pick each target's fastest; bisect what is off"
    # pick.json's "why" is worded with pipeline.report.units
    code = (Path(__file__).parent / "timing.py",
            Path(__file__).parent.parent / "pipeline" / "report" / "units.py")
    per_target = True
    across_variants = True
    role = Role.CHOICE
    partial_inputs = True
    inputs = (VALIDATE.name, MODULE)   # each variant's: its verdict, the module it judged

    def outputs(self, model):
        return ("module.vmfb", "pick.json")

    def reads(self, upstream, outputs, model, target):
        return ("result.json",) if upstream == VALIDATE.name else ("module.vmfb",)

    def key_params(self, model, target):
        return {"variants": [[name, list(flags)] for name, flags in target.variants],
                "noise_floor": NOISE_FLOOR}

    def resources(self, target):
        return VALIDATE.resources(target)   # where validate can run (it asks for the device)

    def unavailable(self, model, target):
        return VALIDATE.unavailable(model, target)   # validate skips every variant: so pick

    def run(self, ctx):
        order = [name for name, _ in ctx.target.variants]
        tried = _tried(ctx)
        results = {v: _result(ctx, tried[v]) for v in sorted(tried, key=order.index)}
        # timing off (stages/validate.py): nothing to choose by, so the target's order decides
        untimed = any(r and r.get("timing") == "off" for r in results.values())
        passed = {v: r for v, r in results.items()
                  if r and r.get("passed") and (untimed or r.get("latency"))}
        # the framework is timed once per target (with its default): every variant's ratio
        framework = next((r["framework_latency"] for r in results.values()
                          if r and r.get("framework_latency")), None)
        summary = [_summary(v, results[v], dict(ctx.target.variants)[v], framework)
                   for v in results]
        if not passed:
            raise StageError("no variant passed: " + "; ".join(
                f"{s['variant']}: {s['outcome']}" for s in summary), result={"variants": summary})
        winner, why = keep_first(passed, order) if untimed else choose(passed, order)
        shutil.copyfile(ctx.inputs[tried[winner][MODULE.role]] / "module.vmfb",
                        ctx.out / "module.vmfb")
        picked = {"variant": winner, "why": why, "variants": summary}
        (ctx.out / "pick.json").write_text(json.dumps(picked, indent=1, sort_keys=True))
        return {**passed[winner], **picked, "framework_latency": framework,
                "speed_ratio": ratio(passed[winner]["latency"], framework)}


def _tried(ctx) -> dict[str, dict[str, str]]:
    """variant -> {'validate': input name, 'module': input name} for the variants this run
    tried ('validate' is the target's own default; 'validate@cpu~im2col' a variant's; the
    module's is whichever stage built it: 'codegen', 'codegen@cpu~im2col')."""
    modules = ctx.built(MODULE)
    tried: dict[str, dict[str, str]] = {}
    for name in ctx.inputs:
        stage, target = parse_upstream(name)
        variant = variant_of(target) if target else DEFAULT_VARIANT
        tried.setdefault(variant, {})[MODULE.role if name in modules else stage] = name
    return {v: names for v, names in tried.items() if VALIDATE.name in names}


def _result(ctx, names: dict[str, str]) -> dict | None:
    """A variant's validate result, or None where it has none (it failed or was skipped)."""
    try:
        return json.loads((ctx.inputs[names[VALIDATE.name]] / "result.json").read_text())
    except (OSError, ValueError):
        return None


def _summary(variant: str, result: dict | None, flags, framework: dict | None) -> dict:
    if result is None:
        outcome = "no result: its compile or validation failed (see its stages)"
    elif not result.get("passed"):
        outcome = "outputs differ from the reference"
    else:
        outcome = Kind.PASSED
    latency = (result or {}).get("latency") or {}
    return {"variant": variant, "flags": list(flags or ()), "outcome": outcome,
            "latency": latency or None, "speed_ratio": ratio(latency, framework)}


def noise(a: dict, b: dict) -> float:
    """How far apart two medians may be and still be the same speed: the floor, or the two
    measurements' half-ranges relative to their medians, whichever is wider."""
    spread = sum((m["max_ms"] - m["min_ms"]) / (2 * m["median_ms"]) for m in (a, b)
                 if m.get("median_ms"))
    return max(NOISE_FLOOR, spread)


def keep_first(passed: dict[str, dict], order: list[str]) -> tuple[str, str]:
    """(winner, why) without timings: the first passing variant in the target's order, its
    default where that passed."""
    first = min(passed, key=order.index)
    if first == order[0]:
        return first, f"timing off: kept the {first} variant"
    return first, (f"timing off: kept {first}, the first variant in the target's order that "
                   f"passed ({order[0]} did not)")


def choose(passed: dict[str, dict], order: list[str]) -> tuple[str, str]:
    """(winner, why): the fastest passing variant, unless a variant earlier in the target's
    order is within the noise of it (then the earlier one stays)."""
    def median(v):
        return passed[v]["latency"]["median_ms"]

    fastest = min(passed, key=lambda v: (median(v), order.index(v)))
    others = ", ".join(f"{v} {duration(median(v))}" for v in sorted(passed, key=order.index)
                       if v != fastest)
    for v in sorted(passed, key=order.index):
        if v == fastest:
            break
        margin = noise(passed[v]["latency"], passed[fastest]["latency"])
        if median(v) <= median(fastest) * (1 + margin):
            return v, (f"{v} kept: {duration(median(v))}, within {margin:.0%} (the noise) "
                       f"of the fastest, {fastest} {duration(median(fastest))}")
    return fastest, (f"{fastest}: fastest that passed, {duration(median(fastest))} median"
                     + (f" (others: {others})" if others else " (the only one that passed)"))


STAGE = Pick()
