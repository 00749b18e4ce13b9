"""Stage 2, serialize: write the framework's interchange format under a fixed file name."""
from __future__ import annotations

from stages.capture import STAGE as CAPTURE
from stages.framework_stage import FrameworkStage


class Serialize(FrameworkStage):
    name = "serialize"
    doc = "write the model in its framework's interchange format"
    inputs = (CAPTURE.name,)

    def outputs(self, model):
        return (self.adapter(model).serialized,)

    def work(self, adapter, ctx):
        adapter.serialize(ctx.inputs[CAPTURE.name], ctx.out)


STAGE = Serialize()
