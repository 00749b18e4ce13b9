"""Stage 1, capture: trace/export the model on seeded inputs; record those inputs and the
framework's own answer (the reference every target is checked against)."""
from __future__ import annotations

from pathlib import Path

from pipeline.stage import ModelSpec, Stage
from stages import frameworks


class FrameworkStage(Stage):
    """A per-model stage whose work is done by the model's framework adapter."""
    code = (Path(__file__).parent / "frameworks" / "__init__.py",)

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

    def run(self, ctx):
        adapter = self.adapter(ctx.model)
        adapter.require()
        adapter.capture(ctx.model, ctx.out)


STAGE = Capture()
