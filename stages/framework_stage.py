"""The base of the stages whose work a model's framework adapter does (capture, serialize,
import): which adapter, its code and packages in the keys, one framework at a time, and an
exception raised in them worded as whose it is (frameworks/refusals.py): the framework's own
refusal of its model is a verdict remembered under the key, kiln's own error is not."""
from __future__ import annotations

import threading
from pathlib import Path

from pipeline.stage import ModelSpec, Stage
from stages import frameworks
from stages.frameworks.refusals import framework_refusals

HERE = Path(__file__).parent

# Framework code keeps global state (torch's RNG seed, TF's graph and logging, JAX's config):
# under `doit -n N -P thread` two captures must not interleave, or a seed is taken by the
# wrong model. Only framework work is serialised; iree-compile stages still run in parallel.
FRAMEWORK_LOCK = threading.Lock()

# the stages in the order a model passes them: an adapter's first_stage says where it enters
FRAMEWORK_STAGES = ("capture", "serialize", "import")


class FrameworkStage(Stage):
    """A per-model stage whose work is done by the model's framework adapter."""
    # this base, the registry and the wording of refusals; the adapter's own files come from
    # code_files()
    code = (HERE / "framework_stage.py", HERE / "frameworks" / "__init__.py",
            HERE / "frameworks" / "refusals.py")

    def run(self, ctx):
        adapter = self.adapter(ctx.model)
        adapter.require()
        with FRAMEWORK_LOCK, framework_refusals(adapter, ctx.model):
            return self.work(adapter, ctx)

    def work(self, adapter, ctx) -> dict | None:
        raise NotImplementedError

    def adapter(self, model: ModelSpec):
        return frameworks.get(model.framework)

    def code_files(self, model):
        return (*super().code_files(model), *self.adapter(model).code_files())

    def tools(self, model):
        return self.adapter(model).dists

    def key_params(self, model, target):
        return model.key_fields()

    def applies_to(self, model, target):
        first = self.adapter(model).first_stage
        return first in FRAMEWORK_STAGES and \
            FRAMEWORK_STAGES.index(first) <= FRAMEWORK_STAGES.index(self.name)
