""".pt2 files whose outputs are not plain tensors: a registered dataclass from the user's own
package (as a Hugging Face model returns BaseModelOutput), and a dict in insertion order.
(.pt2 files crafted to run code as they load: test_pt2_safety.py.)"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import Project, copy_project, needs_torch

pytestmark = needs_torch

# fields not in alphabetical order: the compiled module returns them in field order
OUTPUTS_MODULE = """
import dataclasses
import torch

@dataclasses.dataclass
class Out:
    second: torch.Tensor
    first: torch.Tensor

torch.export.register_dataclass(Out, serialized_type_name="mypkg.outputs.Out")
"""

EXPORT_SCRIPT = """
import sys, torch
from mypkg.outputs import Out

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 3)

    def forward(self, x):
        y = self.linear(x)
        return Out(second=torch.tanh(y), first=y * 2)

torch.manual_seed(0)
torch.export.save(torch.export.export(Net(), (torch.randn(4, 8),)), sys.argv[1])
"""

DICT_SCRIPT = """
import sys, torch

class Net(torch.nn.Module):
    def forward(self, x):
        return {"zeta": x + 1, "alpha": torch.sigmoid(x) * 3}

torch.export.save(torch.export.export(Net(), (torch.randn(2, 5),)), sys.argv[1])
"""


@pytest.fixture(scope="module")
def dataclass_pt2(tmp_path_factory):
    """(.pt2 whose output is mypkg.outputs.Out, the folder holding mypkg)."""
    root = tmp_path_factory.mktemp("dataclass_pt2")
    package = root / "site" / "mypkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "outputs.py").write_text(textwrap.dedent(OUTPUTS_MODULE))
    model = root / "out.pt2"
    # exported in a separate process: this one must not have mypkg registered
    subprocess.run([sys.executable, "-c", EXPORT_SCRIPT, str(model)], check=True,
                   env={**_environ(), "PYTHONPATH": str(root / "site")})
    return model, root / "site"


def _environ() -> dict:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def by_stage(project: Project) -> dict[str, dict]:
    return {t["stage"]: t for t in project.record()}


def test_pytree_output_class_is_imported_from_its_package(dataclass_pt2, tmp_path, monkeypatch):
    model, site = dataclass_pt2
    monkeypatch.setenv("PYTHONPATH", str(site))
    project = Project(copy_project(tmp_path / "proj"))
    project.doit("validate", f"model={model}", "target=cpu")
    result = by_stage(project)["validate"]["result"]
    assert result["passed"] and result["max_abs_error"] < 1e-5


def test_pytree_output_class_not_importable_says_what_to_install(dataclass_pt2, tmp_path,
                                                                  monkeypatch):
    model, _ = dataclass_pt2
    monkeypatch.delenv("PYTHONPATH", raising=False)
    project = Project(copy_project(tmp_path / "proj"))
    proc = project.doit("validate", f"model={model}", "target=cpu", check=False)
    assert proc.returncode != 0
    capture = by_stage(project)["capture"]
    assert capture["status"] == "failed"
    assert "mypkg.outputs.Out" in capture["error"]
    assert "pip install mypkg" in capture["error"] and "PYTHONPATH" in capture["error"]
    # handled, not a torch traceback on the console
    assert "Deserializing" not in proc.stdout + proc.stderr


def test_dict_outputs_keep_the_exported_order(project, tmp_path):
    model = tmp_path / "dict.pt2"
    subprocess.run([sys.executable, "-c", DICT_SCRIPT, str(model)], check=True)
    project.doit("validate", f"model={model}", "target=cpu")
    result = by_stage(project)["validate"]["result"]
    assert result["passed"] and result["max_abs_error"] < 1e-5
