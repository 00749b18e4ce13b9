"""Stage 1, capture: trace/export the model on seeded inputs; record those inputs and the
framework's own answer (the reference every target is checked against)."""
from __future__ import annotations

import json

from pipeline.stage import ModelSpec, StageError
from stages.framework_stage import FrameworkStage
from stages.frameworks import load_arrays


class Capture(FrameworkStage):
    name = "capture"
    doc = "run the model in its framework on seeded inputs: its answer is the reference"

    def outputs(self, model):
        return ("inputs.npz", "reference.npz", "expected.npz", "capture.json",
                *self.adapter(model).captured)

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
             "outputs": [{"shape": list(r.shape), "dtype": r.dtype.name} for r in reference]},
            indent=1, sort_keys=True))
        return {"notes": info["notes"]} if info["notes"] else None


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
