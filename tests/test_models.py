"""Models that are not files in models/: a model file given on the command line, a config
entry with a factory outside the repository, imported MLIR, and a framework not installed."""
import shutil
import subprocess
import sys

import numpy as np
from conftest import needs_torch, seed_cache

pytestmark = needs_torch

PT2_SCRIPT = """
import sys, torch
torch.manual_seed(3)
net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh())
dynamic = sys.argv[2] == "dynamic"
shapes = {"input": {0: torch.export.Dim("batch", min=1, max=64)}} if dynamic else None
program = torch.export.export(net, (torch.randn(4, 8),), dynamic_shapes=shapes)
torch.export.save(program, sys.argv[1])
"""


def save_pt2(path, dynamic=False):
    subprocess.run([sys.executable, "-c", PT2_SCRIPT, str(path), "dynamic" if dynamic else "static"],
                   check=True)
    return path


def test_pt2_file_validates_and_moving_it_rebuilds_nothing(project, tmp_path):
    (tmp_path / "a").mkdir()
    model = save_pt2(tmp_path / "a" / "tiny.pt2")
    project.doit("validate", f"model={model}", "target=cpu")
    record = project.record()
    assert all(t["status"] == "ran" for t in record)
    assert next(t for t in record if t["stage"] == "validate")["result"]["passed"]

    moved = tmp_path / "b" / "tiny.pt2"
    moved.parent.mkdir()
    shutil.move(model, moved)
    project.doit("validate", f"model={moved}", "target=cpu")
    assert not [t for t in project.record() if t["status"] == "ran"], project.record()


def test_dynamic_dimension_needs_a_size(project, tmp_path):
    model = save_pt2(tmp_path / "dyn.pt2", dynamic=True)
    proc = project.doit("validate", f"model={model}", "target=cpu", check=False)
    assert proc.returncode != 0
    capture = next(t for t in project.record() if t["stage"] == "capture")
    assert capture["status"] == "failed"
    assert "dynamic shape" in capture["error"] and "shapes=input:" in capture["error"]

    project.doit("validate", f"model={model}", "target=cpu", "shapes=input:2x8")
    assert next(t for t in project.record() if t["stage"] == "validate")["result"]["passed"]


def test_config_declared_model_file_with_shapes(project, tmp_path):
    save_pt2(tmp_path / "dyn.pt2", dynamic=True)
    config = project.root / "targets.yaml"
    config.write_text(config.read_text() + f"""
models:
  dynnet:
    file: {tmp_path / 'dyn.pt2'}
    shapes: {{input: [3, 8]}}
""")
    project.doit("validate", "model=dynnet", "target=cpu")
    by_stage = {t["stage"]: t for t in project.record()}
    assert by_stage["capture"]["model"] == "dynnet"
    assert by_stage["validate"]["result"]["passed"]
    with np.load(project.root / "build" / "dynnet" / "capture" / "inputs.npz") as inputs:
        assert inputs["arg0"].shape == (3, 8)


def test_config_declared_model_from_outside_the_repo(project, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "net.py").write_text(
        "def make():\n    import torch\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Sigmoid()), (torch.randn(1, 4),)\n")
    config = project.root / "targets.yaml"
    config.write_text(config.read_text() + f"""
models:
  outsider:
    framework: torch
    factory: {outside / 'net.py'}:make
    atol: 1.0e-5
""")
    project.doit("validate", "model=outsider", "target=cpu,vulkan")
    validates = [t for t in project.record() if t["stage"] == "validate"]
    assert len(validates) == 2 and all(t["result"]["passed"] for t in validates)
    assert all(t["result"]["atol"] == 1e-5 for t in validates)


def test_imported_mlir_enters_at_legalize_and_runs(project, tmp_path, mlp_built):
    seed_cache(project, mlp_built["project"])   # mlp's import comes from the cache
    project.doit("compile", "model=mlp", "target=cpu")
    mlir = tmp_path / "net.mlirbc"
    shutil.copy(project.root / "build" / "mlp" / "import" / "imported.mlirbc", mlir)
    project.doit("validate", f"model={mlir}", "target=cpu,vulkan")
    record = project.record()
    assert {t["stage"] for t in record} == {"legalize", "emit", "lower", "codegen", "validate",
                                            "pick"}
    validates = {t["target"]: t for t in record if t["stage"] == "validate"}
    assert all(t["status"] == "ran" and t["result"]["passed"] for t in validates.values())
    assert "runs only" in validates["cpu"]["result"]["checked"]
    assert validates["cpu"]["result"]["max_abs_error"] is None
    # vulkan is checked against the cpu run's outputs
    assert "against cpu's outputs" in validates["vulkan"]["result"]["checked"]
    assert validates["vulkan"]["result"]["max_abs_error"] < validates["vulkan"]["result"]["atol"]


def test_framework_not_installed_fails_only_its_model(project, mlp_built):
    seed_cache(project, mlp_built["project"])   # mlp comes from the cache
    (project.root / "stages" / "frameworks" / "absent_fw.py").write_text(
        "from pathlib import Path\nfrom . import Framework\n\n"
        "class Absent(Framework):\n    name = 'absent'\n    extra = 'absent'\n"
        "    modules = ('kiln_test_no_such_module',)\n    captured = ()\n    serialized = 'm.bin'\n\n"
        "ADAPTER = Absent()\n")
    (project.root / "models" / "ghost.py").write_text('FRAMEWORK = "absent"\n\ndef build():\n    pass\n')
    proc = project.doit("validate", "model=ghost,mlp", "target=cpu", check=False)
    assert proc.returncode != 0
    by_task = {t["task"]: t for t in project.record()}
    assert by_task["capture:ghost"]["status"] == "failed"
    assert "install kiln[absent]" in by_task["capture:ghost"]["error"]
    assert by_task["validate:mlp@cpu"]["result"]["passed"]


def test_module_factory_is_fingerprinted_by_its_source(project):
    package = project.root / "mynets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "small.py").write_text(
        "def make():\n    import torch\n    return torch.nn.Linear(4, 2), (torch.randn(1, 4),)\n")
    config = project.root / "targets.yaml"
    config.write_text(config.read_text() + "\nmodels:\n  small:\n    framework: torch\n"
                      "    factory: mynets.small:make\n  broken:\n    framework: torch\n"
                      "    factory: nonet.small:make\n")
    proc = project.doit("validate", "model=small", "target=cpu", check=False)
    assert proc.returncode != 0
    assert "models.broken.factory" in proc.stderr and "cannot find module 'nonet.small'" in proc.stderr

    config.write_text(config.read_text().split("  broken:")[0])
    project.doit("validate", "model=small", "target=cpu")
    with open(package / "small.py", "a") as f:
        f.write("# an edit to the factory's module\n")
    project.doit("validate", "model=small", "target=cpu")
    capture = next(t for t in project.record() if t["stage"] == "capture")
    assert capture["status"] == "ran" and capture["why"] == "changed inputs: source:model"


def test_factory_returning_the_wrong_thing_names_it_and_what_it_returned(project):
    models = project.root / "models"
    (models / "lonely.py").write_text(  # the module alone, no example inputs
        'FRAMEWORK = "torch"\n\ndef build():\n    import torch\n    return torch.nn.Linear(4, 2)\n')
    (models / "loose.py").write_text(   # the inputs not in a tuple
        'FRAMEWORK = "torch"\n\ndef build():\n    import torch\n'
        '    return torch.nn.Linear(4, 2), torch.randn(1, 4)\n')
    proc = project.doit("validate", "model=lonely,loose", "target=cpu", check=False)
    assert proc.returncode != 0
    by_task = {t["task"]: t for t in project.record()}
    lonely, loose = by_task["capture:lonely"]["error"], by_task["capture:loose"]["error"]
    assert f"{models / 'lonely.py'}:build returned a Linear" in lonely, lonely
    assert f"{models / 'loose.py'}:build returned (Linear, Tensor)" in loose, loose
    for error in (lonely, loose):
        assert "expected (model, inputs)" in error and "tuple or list of arrays" in error, error
