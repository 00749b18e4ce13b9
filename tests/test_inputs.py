"""Inputs the user gives (inputs= on the command line, inputs: in targets.yaml) are the ones
the reference and validation use, for a factory model and a model file alike; a file that
does not fit the model says so. Then stages/frameworks/inputs.py and arrays.py on their own:
seeded inputs, given arrays matched to a signature, .npz files read back in order."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import needs_torch

from pipeline.stage import ModelSpec, StageError
from stages.frameworks import INT_INPUT_HIGH, load_arrays, model_inputs, save_arrays

CONFIG = """\
targets:
  cpu: {backend: llvm-cpu, arch: generic}
matrices:
  default: {models: [given], targets: [cpu]}
models:
  given: {factory: models/mlp.py:build, framework: torch, inputs: {0: x.npy}}
"""


@needs_torch
def test_given_inputs_feed_reference_and_validation(project):
    given = np.linspace(-3, 3, 32, dtype=np.float32).reshape(2, 16)
    np.savez(project.root / "x.npz", x=given)
    project.doit("validate", "model=mlp", "target=cpu", "inputs=x.npz")
    captured = load_arrays(project.root / "build" / "mlp" / "capture" / "inputs.npz")
    assert np.array_equal(captured[0], given)
    assert next(t for t in project.record() if t["stage"] == "validate")["result"]["passed"]

    # the config's inputs: by position, and the file's content is in the capture key
    project.write_config(CONFIG)
    np.save(project.root / "x.npy", given)
    project.doit("validate")
    np.save(project.root / "x.npy", given * 2)
    project.doit("validate")
    capture = next(t for t in project.record() if t["task"] == "capture:given")
    assert capture["status"] == "ran" and "source:inputs:0" in capture["why"]
    captured = load_arrays(project.root / "build" / "given" / "capture" / "inputs.npz")
    assert np.array_equal(captured[0], given * 2)


@needs_torch
def test_inputs_of_the_wrong_shape_are_named(project):
    np.savez(project.root / "bad.npz", x=np.zeros((3, 5), np.float32))
    proc = project.doit("validate", "model=mlp", "target=cpu", "inputs=bad.npz", check=False)
    assert proc.returncode != 0
    capture = next(t for t in project.record() if t["task"] == "capture:mlp")
    assert "given input 'arg0' has shape [3, 5], the model takes [2, 16]" in capture["error"]


@needs_torch
def test_inputs_for_several_models_at_once_is_refused(project):
    np.savez(project.root / "x.npz", x=np.zeros((2, 16), np.float32))
    proc = project.doit("validate", "model=mlp,resnet", "inputs=x.npz", check=False)
    assert proc.returncode != 0 and "give inputs for one model at a time" in proc.stderr

def test_a_zero_size_dimension_is_static_not_dynamic():
    from pipeline.stage import StageError
    from stages.frameworks import seeded_inputs
    # shapes=x:0x4 sizes a dynamic input to an empty one; a declared 0 needs no size at all
    (given,) = seeded_inputs([("x", [None, 4], "float32")], {"x": [0, 4]}, 0, "m")
    (declared,) = seeded_inputs([("x", [0, 4], "float32")], {}, 0, "m")
    assert given.shape == declared.shape == (0, 4)
    with pytest.raises(StageError, match="dynamic shape"):
        seeded_inputs([("x", [-1, 4], "float32")], {}, 0, "m")


def test_seeded_integers_are_valid_indices_and_floats_are_normal():
    from stages.frameworks import seeded_inputs
    ids, values = seeded_inputs([("ids", [1000], "int64"), ("x", [1000], "float32")], {}, 0, "m")
    assert ids.min() >= 0 and ids.max() < INT_INPUT_HIGH and values.dtype == np.float32
    again = seeded_inputs([("ids", [1000], "int64"), ("x", [1000], "float32")], {}, 0, "m")
    assert np.array_equal(values, again[1])   # the same seed, the same inputs


def test_given_arrays_match_inputs_by_name_else_by_order(tmp_path):
    signature = [("a", [2], "float32"), ("b", [3], "float32")]
    np.savez(tmp_path / "named.npz", b=np.ones(3), a=np.zeros(2))
    np.savez(tmp_path / "unnamed.npz", first=np.zeros(2), second=np.ones(3))
    for name in ("named", "unnamed"):
        model = ModelSpec(name="m", framework="onnx", sources={"inputs": tmp_path / f"{name}.npz"})
        a, b = model_inputs(model, signature)
        assert a.shape == (2,) and b.shape == (3,) and b.dtype == np.float32 and b.sum() == 3
    model = ModelSpec(name="m", framework="onnx", sources={"inputs": tmp_path / "named.npz"})
    with pytest.raises(StageError, match="have none for input 'c'"):
        model_inputs(model, [*signature, ("c", [1], "float32")])


def test_arrays_load_back_in_index_order(tmp_path):
    arrays = [np.full(1, i) for i in range(12)]   # arg10 sorts before arg2 as text
    save_arrays(tmp_path / "a.npz", "arg", arrays)
    assert [int(a[0]) for a in load_arrays(tmp_path / "a.npz")] == list(range(12))
