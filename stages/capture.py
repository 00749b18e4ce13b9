"""Stage 1, capture: trace/export the model on seeded inputs; record those inputs and the
framework's own answer (the reference every target is checked against), and, where the
framework can compute the model in float64, that answer too (reference64.npz, empty where it
cannot) with the framework's own f32 error against it per output: validate's noise rule
(stages/compare.py) judges a target's float outputs by it."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.stage import ModelSpec, StageError
from stages.compare import float64_error, judged_by_float64
from stages.framework_stage import FrameworkStage
from stages.frameworks import load_arrays

HERE = Path(__file__).parent


class Capture(FrameworkStage):
    name = "capture"
    doc = "run the model in its framework on seeded inputs: its answer is the reference"
    code = (*FrameworkStage.code, HERE / "compare.py")   # the framework's f32 error

    def outputs(self, model):
        return ("inputs.npz", "reference.npz", "reference64.npz", "expected.npz",
                "alternative.npz", "capture.json", *self.adapter(model).captured)

    def work(self, adapter, ctx):
        info = adapter.capture(ctx.model, ctx.out)
        reference = load_arrays(ctx.out / "reference.npz")
        _check_declared(ctx.model, info["declared_outputs"], reference)
        for note in info["notes"]:
            ctx.log(f"note: {note}")
        declared = info["declared_outputs"]
        # what the reference and expected.npz are, where not the framework's answer alone, and
        # how many outputs the model has (a model's own expected outputs may give fewer)
        origin = {k: info[k] for k in ("reference_from", "expected_from") if info.get(k)}
        (ctx.out / "capture.json").write_text(json.dumps(
            {"notes": info["notes"], "tolerances": info["tolerances"], **origin,
             "model_outputs": len(reference) if declared is None else len(declared),
             "outputs": [{"shape": list(r.shape), "dtype": r.dtype.name} for r in reference],
             "f64": _float64_record(info, reference, load_arrays(ctx.out / "reference64.npz")),
             "alternative": _alternative_record(info, reference,
                                                load_arrays(ctx.out / "alternative.npz"))},
            indent=1, sort_keys=True))
        return {"notes": info["notes"]} if info["notes"] else None


def _float64_record(info: dict, reference: list, reference64: list) -> dict:
    """capture.json's "f64": whether the float64 answer exists (and why not), and per output
    the framework's own f32 error against it: None for an output the noise rule does not
    judge (integer, bool, quantized) or whose error is meaningless (NaN/Inf mismatch)."""
    record = dict(info["f64"])
    if reference64:
        tolerances = info["tolerances"] or []
        record["framework_error"] = [
            float64_error(r, r64) if judged_by_float64(
                r, quantized=i < len(tolerances) and tolerances[i] is not None) else None
            for i, (r, r64) in enumerate(zip(reference, reference64))]
    return record


def _alternative_record(info: dict, reference: list, alternative: list) -> dict | None:
    """capture.json's "alternative": what the framework's second answer is, and per output
    its spread from the reference (max abs; None where NaN/Inf differ), the framework's own
    noise where it has no float64 answer."""
    if not alternative:
        return None
    return {"from": info["alternative_from"],
            "spread": [float64_error(r, a) for r, a in zip(reference, alternative)]}


def _check_declared(model: ModelSpec, declared, reference) -> None:
    """The framework's answer must have the shapes the model declares for its outputs; when it
    does not, the inputs do not fit the model (a wrong size or value range), which would
    otherwise surface later as a baffling shape mismatch against the compiled module."""
    for i, (dims, got) in enumerate(zip(declared or [], reference)):
        if dims is None:
            continue
        fits = len(dims) == got.ndim and all(d is None or d < 0 or d == g
                                             for d, g in zip(dims, got.shape))
        if not fits:
            raise StageError(f"model {model.name}: the inputs do not fit the model: output {i} "
                             f"is declared {dims} but the framework answered {list(got.shape)} "
                             "on these inputs; give inputs that fit (inputs=FILE.npz or "
                             "shapes=NAME:DIMS)")


STAGE = Capture()
