"""Stage 1, capture: trace/export the model on seeded inputs; record those inputs and the
framework's own answer (the reference every target is checked against)."""
from __future__ import annotations

import threading
from pathlib import Path

from pipeline.stage import ModelSpec, Stage
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
            self.work(adapter, ctx)

    def work(self, adapter, ctx) -> None:
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
        return ("inputs.npz", "reference.npz", *self.adapter(model).captured)

    def work(self, adapter, ctx):
        adapter.capture(ctx.model, ctx.out)


STAGE = Capture()
