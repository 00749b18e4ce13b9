"""stages/frameworks/base.py and stages/framework_stage.py: what every adapter shares. The
template (capture's files, serialize's copy, the input-count check) on a pure-Python adapter;
the code files that fingerprint each real adapter's stages, read from the adapters' own imports.
Real frameworks run through these in test_frameworks and the *_files tests."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from pipeline.stage import ModelSpec, StageError
from stages import frameworks
from stages.capture import STAGE as CAPTURE
from stages.framework_stage import FrameworkStage
from stages.frameworks.base import Framework, Traced
from stages.importer import STAGE as IMPORT
from stages.serialize import STAGE as SERIALIZE

PACKAGE = Path(frameworks.__file__).parent
ADAPTERS = sorted(frameworks._load_all())


class Doubler(Framework):
    """An adapter with no framework: its 'model' doubles its input."""
    name = "doubler"
    captured = ("model.bin",)
    serialized = "model.copy"

    def trace(self, model):
        inputs = [np.arange(6, dtype=np.float32).reshape(2, 3)]
        self.check_input_count(model, "the doubler", ["x"], inputs)
        return Traced(artifact=b"double", inputs=inputs, reference=[inputs[0] * 2],
                      notes=["doubled"])


def _model(framework: str = "doubler") -> ModelSpec:
    return ModelSpec(name="m", framework=framework, sources={})


def test_capture_writes_the_artifact_inputs_and_reference(tmp_path):
    info = Doubler().capture(_model(), tmp_path)
    assert (tmp_path / "model.bin").read_bytes() == b"double"
    inputs = frameworks.load_arrays(tmp_path / "inputs.npz")
    reference = frameworks.load_arrays(tmp_path / "reference.npz")
    assert np.array_equal(reference[0], inputs[0] * 2)
    assert info == {"notes": ["doubled"], "tolerances": None, "declared_outputs": None,
                    "reference_from": None, "expected_from": None, "alternative_from": None,
                    "f64": {"available": False,
                            "why": "doubler models are not run in float64 by kiln"}}
    assert frameworks.load_arrays(tmp_path / "expected.npz") == []   # none: written empty
    assert frameworks.load_arrays(tmp_path / "alternative.npz") == []
    assert frameworks.load_arrays(tmp_path / "reference64.npz") == []


class Doubler64(Doubler):
    """The doubler, also run in float64; `off` it computes something else there."""
    name = "doubler64"

    def __init__(self, off: float = 0.0):
        self.off = off

    def reference64(self, model, traced):
        return [traced.inputs[0].astype(np.float64) * 2 + self.off]


def test_capture_writes_the_float64_answer_where_the_adapter_gives_one(tmp_path):
    info = Doubler64().capture(_model(), tmp_path)
    assert info["f64"] == {"available": True, "why": "doubler64 run in float64"}
    answer64 = frameworks.load_arrays(tmp_path / "reference64.npz")
    assert answer64[0].dtype == np.float64 and np.array_equal(answer64[0], np.arange(6.).reshape(2, 3) * 2)


def test_a_float64_answer_that_is_another_computation_is_not_used(tmp_path):
    info = Doubler64(off=1.0).capture(_model(), tmp_path)
    assert not info["f64"]["available"]
    assert "not the same computation" in info["f64"]["why"]
    assert frameworks.load_arrays(tmp_path / "reference64.npz") == []


def test_serialize_copies_the_artifact_under_the_fixed_name(tmp_path):
    Doubler().capture(_model(), tmp_path)
    Doubler().serialize(tmp_path, tmp_path)
    assert (tmp_path / "model.copy").read_bytes() == b"double"


def test_input_count_mismatch_names_the_inputs():
    with pytest.raises(StageError, match=r"model m: the graph takes 2 inputs \(a, b\), "
                                         r"build\(\) gave 1"):
        Doubler().check_input_count(_model(), "the graph", ["a", "b"], [np.zeros(1)])


def _sibling_imports(path: Path) -> set[str]:
    """The modules of stages/frameworks a source file imports (relative or absolute)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 and module:
                found.add(module)
            elif module.startswith("stages.frameworks."):
                found.add(module.rsplit(".", 1)[1])
    return found


@pytest.mark.parametrize("name", ADAPTERS)
def test_adapter_code_files_hold_every_module_it_imports(name):
    """An edit to any module an adapter builds on must re-run the stages that use it."""
    adapter = frameworks.get(name)
    files = set(adapter.code_files())
    own = next(iter(adapter.code_files()))
    pending, seen = [own], set()
    while pending:   # the modules those modules import too
        path = pending.pop()
        seen.add(path)
        pending += [PACKAGE / f"{m}.py" for m in _sibling_imports(path)
                    if PACKAGE / f"{m}.py" not in seen]
    assert seen <= files, f"{name}: not in its code files: {sorted(p.name for p in seen - files)}"
    assert all(path.is_file() for path in files)


@pytest.mark.parametrize("stage", [CAPTURE, SERIALIZE, IMPORT], ids=lambda s: s.name)
def test_framework_stages_are_fingerprinted_by_their_base_and_adapter(stage):
    files = {path.name for path in stage.code_files(_model("torch"))}
    assert {"framework_stage.py", "__init__.py", "pytorch.py", "pt2_safety.py",
            "base.py"} <= files
    assert isinstance(stage, FrameworkStage)
