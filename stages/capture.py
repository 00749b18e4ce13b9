"""Stage 1, capture: trace/export the model on seeded inputs; record those inputs and the
framework's own answer (the reference every target is checked against)."""
from __future__ import annotations

import threading
import json
from pathlib import Path

from pipeline.stage import ModelSpec, Stage, StageError
from stages import frameworks

# Framework code keeps global state (torch's RNG seed, TF's graph and logging, JAX's config):
# under `doit -n N -P thread` two captures must not interleave, or a seed is taken by the
# wrong model. Only framework work is serialised; iree-compile stages still run in parallel.
FRAMEWORK_LOCK = threading.Lock()


class FrameworkStage(Stage):
    """A per-model stage whose work is done by the model's framework adapter."""
    code = (Path(__file__).parent / "frameworks" / "__init__.py",)

    def run(self, ctx):
        adapter = self.adapter(ctx.model)
        adapter.require()
        with FRAMEWORK_LOCK:
            return self.work(adapter, ctx)

    def work(self, adapter, ctx) -> dict | None:
        raise NotImplementedError

    def adapter(self, model: ModelSpec):
        return frameworks.get(model.framework)

    def code_files(self, model):
        return (*super().code_files(model), *self.adapter(model).code_files())

    def tools(self, model):
        return self.adapter(model).dists

    def params(self, model, target):
        return model.params()

    def applies_to(self, model):
        order = ["capture", "serialize", "import"]
        first = self.adapter(model).first_stage
        return first in order and order.index(first) <= order.index(self.name)


class Capture(FrameworkStage):
    name = "capture"

    def outputs(self, model):
        return ("inputs.npz", "reference.npz", "capture.json", *self.adapter(model).captured)

    def work(self, adapter, ctx):
        info = adapter.capture(ctx.model, ctx.out) or {}
        unknown = set(info) - set(frameworks.CAPTURE_INFO)
        assert not unknown, f"adapter {adapter.name} returned unknown capture info {unknown}"
        reference = frameworks.load_arrays(ctx.out / "reference.npz")
        _check_declared(ctx.model, info.get("declared_outputs"), reference)
        for note in info.get("notes", []):
            ctx.log(f"note: {note}")
        (ctx.out / "capture.json").write_text(json.dumps(
            {"notes": info.get("notes", []), "tolerances": info.get("tolerances"),
             "outputs": [{"shape": list(r.shape), "dtype": r.dtype.name} for r in reference]},
            indent=1, sort_keys=True))
        return {"notes": info["notes"]} if info.get("notes") else None


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
