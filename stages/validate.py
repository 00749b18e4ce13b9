"""Stage 8, validate: load the .vmfb on the target's driver in a fresh process (a Vulkan
device created in doit's own process hangs forked workers), run the reference inputs,
compare with the framework's answer within the target's atol/rtol, and time one call."""
from __future__ import annotations

import json
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.stage import Stage, StageError, StageSkipped
from stages import frameworks
from stages.iree_tools import devices, tool

HERE = Path(__file__).parent
SLOW_CALL_MS = 2000


def _device(driver: str) -> str | None:
    return next((d for d in devices() if d.startswith(f"{driver}://")), None)


def compare(outputs: list[np.ndarray], reference: list[np.ndarray], atol: float, rtol: float) -> dict:
    if len(outputs) != len(reference):
        raise StageError(f"module returned {len(outputs)} outputs, the reference has {len(reference)}")
    max_abs = max_rel = 0.0
    passed = True
    for got, want in zip(outputs, reference):
        if got.shape != want.shape:
            raise StageError(f"output shape {got.shape} differs from the reference's {want.shape}")
        got64, want64 = got.astype(np.float64), want.astype(np.float64)
        diff = np.abs(got64 - want64)
        max_abs = max(max_abs, float(diff.max(initial=0.0)))
        max_rel = max(max_rel, float((diff / np.maximum(np.abs(want64), 1e-30)).max(initial=0.0)))
        passed &= bool(np.allclose(got64, want64, atol=atol, rtol=rtol))
    return {"passed": passed, "max_abs_error": max_abs, "max_rel_error": max_rel,
            "atol": atol, "rtol": rtol}


class Validate(Stage):
    name = "validate"
    per_target = True
    inputs = ("capture", "emit", "codegen")
    code = (HERE / "iree_tools.py",)

    def outputs(self, model):
        return ("result.json", "outputs.npz")

    def tools(self, model):
        return ("iree-base-runtime",)   # iree-run-module has no --version: its package's

    def tolerances(self, model, target) -> tuple[float, float]:
        return (target.atol if model.atol is None else model.atol,
                target.rtol if model.rtol is None else model.rtol)

    def peers(self, model, target, targets):
        # no framework answer (imported MLIR): compare with the first llvm-cpu target's run
        if frameworks.get(model.framework).has_reference or target.backend == "llvm-cpu":
            return ()
        cpu = next((t.name for t in targets if t.backend == "llvm-cpu"), None)
        return (cpu,) if cpu else ()

    def params(self, model, target):
        atol, rtol = self.tolerances(model, target)
        # the device it ran on is part of the answer: lavapipe's pass is not a GPU's
        return {"driver": target.driver, "device": _device(target.driver), "atol": atol, "rtol": rtol}

    def run(self, ctx):
        driver = ctx.target.driver
        if _device(driver) is None:
            raise StageSkipped(f"skipped: no {driver} device")
        info = json.loads((ctx.inputs["emit"] / "model.json").read_text())
        peer = None
        if "capture" in ctx.inputs:
            inputs = frameworks.load_arrays(ctx.inputs["capture"] / "inputs.npz")
            reference = frameworks.load_arrays(ctx.inputs["capture"] / "reference.npz")
        else:  # imported MLIR given as a file: no framework to ask; a CPU run, if any, is the answer
            inputs = frameworks.seeded_inputs(info["inputs"], ctx.model.shapes, ctx.model.seed,
                                              ctx.model.name)
            peer = next((name for name in ctx.inputs if name.startswith("validate@")), None)
            reference = frameworks.load_arrays(ctx.inputs[peer] / "outputs.npz") if peer else None
        module = ctx.inputs["codegen"] / "module.vmfb"
        with tempfile.TemporaryDirectory() as tmp:
            outputs, timing = _run_module(Path(tmp), module, driver, info["entry"], inputs,
                                          None if reference is None else len(reference), ctx)
        atol, rtol = self.tolerances(ctx.model, ctx.target)
        if reference is None:
            checked = {"passed": True, "max_abs_error": None, "max_rel_error": None, "atol": atol,
                       "rtol": rtol, "checked": "runs only: no framework reference for an MLIR file"}
        else:
            checked = compare(outputs, reference, atol, rtol)
            if peer:
                checked["checked"] = f"against {peer.split('@')[1]}'s outputs (no framework reference)"
        result = {**checked, **timing, "device": _device(driver)}
        np.savez(ctx.out / "outputs.npz", **{f"out{i}": o for i, o in enumerate(outputs)})
        (ctx.out / "result.json").write_text(json.dumps(result, indent=1, sort_keys=True))
        if not result["passed"]:
            raise StageError(f"outputs differ from the reference: max abs error "
                             f"{result['max_abs_error']:.3g} (atol {atol:g}), max rel error "
                             f"{result['max_rel_error']:.3g} (rtol {rtol:g})", result=result)
        return result


def _run_module(tmp: Path, module: Path, driver: str, entry: str, inputs, n_outputs: int, ctx):
    """iree-run-module for the outputs (it reads Vulkan results back through a staging
    buffer), then iree-benchmark-module for the time of one call: skipped when one call is
    already slow (ResNet-18 on lavapipe takes minutes), where the single call's wall time,
    module load included, is the figure reported."""
    args = [f"--device={driver}", f"--module={module}", f"--function={entry}"]
    for i, array in enumerate(inputs):
        np.save(tmp / f"in{i}.npy", array)
        args.append(f"--input=@{tmp / f'in{i}.npy'}")
    started = time.perf_counter()
    if n_outputs is None:  # count them from a first run's printout
        printed = _check([tool("iree-run-module"), *args], ctx)
        n_outputs = sum(line.startswith("result[") for line in printed.splitlines())
    outs = [tmp / f"out{i}.npy" for i in range(n_outputs)]
    _check([tool("iree-run-module"), *args, *(f"--output=@{o}" for o in outs)], ctx)
    wall_ms = (time.perf_counter() - started) * 1000
    outputs = [np.load(o) for o in outs]
    if wall_ms > SLOW_CALL_MS:
        return outputs, {"latency_ms": wall_ms, "timing": "one call, wall clock incl. load"}
    bench = [tool("iree-benchmark-module"), *args, "--benchmark_format=json",
             "--benchmark_min_time=0.2s"]
    report = json.loads(_check(bench, ctx))
    times = [b["real_time"] for b in report["benchmarks"] if b.get("time_unit") == "ms"]
    return outputs, {"latency_ms": min(times) if times else None, "timing": "iree-benchmark-module"}


def _check(argv: list[str], ctx) -> str:
    command = shlex.join(argv)
    ctx.log(f"$ {command}")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if proc.stderr:
        ctx.log(proc.stderr)
    if proc.returncode != 0:
        message = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise StageError(f"{Path(argv[0]).name} exited with {proc.returncode}: {message}",
                         command=command)
    return proc.stdout


STAGE = Validate()
