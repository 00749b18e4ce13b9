"""Inputs the user gives (inputs= on the command line, inputs: in targets.yaml) are the ones
the reference and validation use, for a factory model and a model file alike; a file that
does not fit the model says so."""
from __future__ import annotations

import numpy as np

from conftest import needs_torch
from stages.frameworks import load_arrays

pytestmark = needs_torch

CONFIG = """\
targets:
  cpu: {backend: llvm-cpu, arch: generic}
matrices:
  default: {models: [given], targets: [cpu]}
models:
  given: {factory: models/mlp.py:build, framework: torch, inputs: {0: x.npy}}
"""


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


def test_inputs_of_the_wrong_shape_are_named(project):
    np.savez(project.root / "bad.npz", x=np.zeros((3, 5), np.float32))
    proc = project.doit("validate", "model=mlp", "target=cpu", "inputs=bad.npz", check=False)
    assert proc.returncode != 0
    capture = next(t for t in project.record() if t["task"] == "capture:mlp")
    assert "given input 'arg0' has shape [3, 5], the model takes [2, 16]" in capture["error"]


def test_inputs_for_several_models_at_once_is_refused(project):
    np.savez(project.root / "x.npz", x=np.zeros((2, 16), np.float32))
    proc = project.doit("validate", "model=mlp,resnet", "inputs=x.npz", check=False)
    assert proc.returncode != 0 and "give inputs for one model at a time" in proc.stderr
