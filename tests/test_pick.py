"""stages/pick.py on hand-made validate results: which variant each input belongs to, what a
variant's outcome says, and the error when none passed. No compiler, no framework: pick only
reads the result.json files its variants' validates left (the search itself, end to end, is
in tests/test_variants.py)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pipeline.stage import ModelSpec, StageContext, StageError, Target
from stages import pick
from stages.codegen import STAGE as CODEGEN
from stages.validate import STAGE as VALIDATE

TARGET = Target("cpu", "llvm-cpu", "generic", "local-task", (), 1e-4, 1e-4,
                variants=(("default", ()), ("im2col", ("--im2col",)), ("mmt4d", ("--mmt4d",))))


def latency(median: float) -> dict:
    return {"median_ms": median, "min_ms": median, "max_ms": median}


def context(tmp_path: Path, results: dict[str, dict | None]) -> StageContext:
    """pick's context: for each variant a validate directory (with result.json unless its
    result is None: it failed) and a codegen directory with a module."""
    inputs, makers = {}, {}
    for variant, result in results.items():
        suffix = "" if variant == "default" else f"@cpu~{variant}"
        for stage in (VALIDATE, CODEGEN):
            directory = tmp_path / variant / stage.name
            directory.mkdir(parents=True)
            inputs[stage.name + suffix] = directory
            makers[stage.name + suffix] = stage
        (inputs["codegen" + suffix] / "module.vmfb").write_bytes(variant.encode())
        if result is not None:
            (inputs["validate" + suffix] / "result.json").write_text(json.dumps(result))
    out = tmp_path / "out"
    out.mkdir()
    return StageContext(ModelSpec("m", "mlir", {}), TARGET, inputs, out, makers=makers)


def test_inputs_are_grouped_by_the_variant_they_came_from(tmp_path):
    ctx = context(tmp_path, {"default": {}, "im2col": {}})
    assert pick._tried(ctx) == {"default": {"validate": "validate", "module": "codegen"},
                                "im2col": {"validate": "validate@cpu~im2col",
                                           "module": "codegen@cpu~im2col"}}


def test_the_fastest_passing_variant_is_copied_with_its_reason(tmp_path):
    framework = latency(20.0)
    ctx = context(tmp_path, {
        "default": {"passed": True, "latency": latency(60.0), "framework_latency": framework},
        "im2col": {"passed": True, "latency": latency(20.0)},
        "mmt4d": {"passed": False, "latency": latency(5.0)}})   # fast, but wrong
    result = pick.STAGE.run(ctx)
    assert result["variant"] == "im2col" and (ctx.out / "module.vmfb").read_bytes() == b"im2col"
    assert result["speed_ratio"] == pytest.approx(1.0)
    outcomes = {v["variant"]: v["outcome"] for v in result["variants"]}
    assert outcomes == {"default": "passed", "im2col": "passed",
                        "mmt4d": "outputs differ from the reference"}
    assert json.loads((ctx.out / "pick.json").read_text())["variant"] == "im2col"


def test_no_passing_variant_says_each_ones_outcome(tmp_path):
    ctx = context(tmp_path, {"default": None, "im2col": {"passed": False}})
    with pytest.raises(StageError) as err:
        pick.STAGE.run(ctx)
    assert "no variant passed" in str(err.value)
    assert "default: no result" in str(err.value)
    assert "im2col: outputs differ from the reference" in str(err.value)
    assert [v["variant"] for v in err.value.result["variants"]] == ["default", "im2col"]


def test_noise_is_the_floor_or_the_measurements_own_spread():
    assert pick.noise(latency(10.0), latency(10.0)) == pick.NOISE_FLOOR
    wide = {"median_ms": 10.0, "min_ms": 8.0, "max_ms": 12.0}   # +-20% around the median
    assert pick.noise(wide, latency(10.0)) == pytest.approx(0.2)


UNTIMED = {"passed": True, "timing": "off", "latency": None, "framework_latency": None}


def test_with_timing_off_the_default_variant_is_kept_and_says_why(tmp_path):
    ctx = context(tmp_path, {"default": UNTIMED, "im2col": UNTIMED})
    result = pick.STAGE.run(ctx)
    assert result["variant"] == "default" and result["why"] == "timing off: kept the default variant"
    assert (ctx.out / "module.vmfb").read_bytes() == b"default" and result["speed_ratio"] is None


def test_with_timing_off_and_the_default_failed_the_first_that_passed_is_kept(tmp_path):
    ctx = context(tmp_path, {"default": None, "im2col": {**UNTIMED, "passed": False},
                             "mmt4d": UNTIMED})
    result = pick.STAGE.run(ctx)
    assert result["variant"] == "mmt4d" and "timing off: kept mmt4d" in result["why"]
    assert "(default did not)" in result["why"]


def test_a_tuned_module_not_faster_beyond_the_noise_is_refused(tmp_path):
    """The tuned variant (stages/tune.py) comes last in the target's order: it displaces the
    variants before it only when faster than each by more than the noise."""
    target = Target("cpu", "llvm-cpu", "generic", "local-task", (), 1e-4, 1e-4,
                    variants=(("default", ()), ("im2col", ("--im2col",)), ("tuned", ("--im2col",))))
    noisy = {"median_ms": 19.4, "min_ms": 18.0, "max_ms": 21.0}   # +-8%: wider than the floor
    ctx = context(tmp_path / "a", {"default": {"passed": True, "latency": latency(40.0)},
                                   "im2col": {"passed": True, "latency": latency(20.0)},
                                   "tuned": {"passed": True, "latency": noisy}})
    ctx = dataclasses.replace(ctx, target=target)
    result = pick.STAGE.run(ctx)
    assert result["variant"] == "im2col" and "within" in result["why"]
    assert (ctx.out / "module.vmfb").read_bytes() == b"im2col"
    # faster beyond its spread: kept
    ctx = context(tmp_path / "b", {"default": {"passed": True, "latency": latency(40.0)},
                                   "im2col": {"passed": True, "latency": latency(20.0)},
                                   "tuned": {"passed": True, "latency": latency(17.0)}})
    result = pick.STAGE.run(dataclasses.replace(ctx, target=target))
    assert result["variant"] == "tuned" and (ctx.out / "module.vmfb").read_bytes() == b"tuned"
