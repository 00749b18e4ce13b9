"""stages/frameworks/pt2_safety.py: .pt2 files crafted to run code as torch.export.load reads
them (pickled entries, a sympy expression, AOTInductor native code) are refused, and nothing in
them runs; plain ones load. The crafted archives are real torch.export.save output, edited."""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from conftest import Project, needs_torch

pytestmark = needs_torch


def by_stage(project: Project) -> dict[str, dict]:
    return {t["stage"]: t for t in project.record()}


class Payload:
    """Unpickled, it creates the marker file: what a hostile .pt2 does with os.system."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "a"))


def _torch_saved(obj) -> bytes:
    import torch
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _clean_pt2(path: Path, dynamic: bool = False) -> Path:
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.linear(x) * 2

    shapes = {"x": {0: torch.export.Dim("batch", min=2)}} if dynamic else None
    torch.manual_seed(0)
    torch.export.save(torch.export.export(Net(), (torch.randn(3, 4),), dynamic_shapes=shapes),
                      str(path))
    return path


def _tampered(src: Path, dst: Path, changes: dict) -> Path:
    """src with entries (relative to the archive's top folder) replaced or added: a value is the
    new bytes, or a function of the old ones."""
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dst, "w") as out:
        root = archive.namelist()[0].split("/")[0]
        for name in archive.namelist():
            data = archive.read(name)
            change = changes.get(name.split("/", 1)[1], data)
            out.writestr(name, change(data) if callable(change) else change)
        for rel, change in changes.items():
            if f"{root}/{rel}" not in archive.namelist():
                out.writestr(f"{root}/{rel}", change)
    return dst


def _edit_json(edit):
    def change(data: bytes) -> bytes:
        value = json.loads(data)
        edit(value)
        return json.dumps(value).encode()
    return change


def _pickled_weight(config):
    config["config"]["linear.weight"]["use_pickle"] = True


def _opaque_constant(config):
    config["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False,
                                "use_pickle": True, "tensor_meta": None}


# (archive changes given the marker, the entry the error must name)
PICKLED = {
    # every .pt2 has it: torch.load(weights_only=True), then weights_only=False when refused
    "example_inputs": (lambda m: {"data/sample_inputs/model.pt": _torch_saved(((Payload(m),), {}))},
                       "data/sample_inputs/model.pt"),
    # use_pickle: torch.load(weights_only=False)
    "pickled_weight": (lambda m: {
        "data/weights/model_weights_config.json": _edit_json(_pickled_weight),
        "data/weights/weight_0": _torch_saved(Payload(m))}, "data/weights/weight_0"),
    # opaque_obj_: pickle.loads
    "opaque_constant": (lambda m: {
        "data/constants/model_constants_config.json": _edit_json(_opaque_constant),
        "data/constants/opaque_obj_0": pickle.dumps(Payload(m))}, "data/constants/opaque_obj_0"),
}


@pytest.mark.parametrize("kind", sorted(PICKLED))
def test_pickled_pt2_is_refused_at_capture_and_never_unpickled(kind, project, tmp_path):
    marker = tmp_path / "unpickled"
    changes, entry = PICKLED[kind]
    model = _tampered(_clean_pt2(tmp_path / "clean.pt2"), tmp_path / "hostile.pt2", changes(marker))
    proc = project.doit("capture", f"model={model}", "target=cpu", check=False)
    assert not marker.exists(), "the .pt2's pickle ran"
    assert proc.returncode != 0
    capture = by_stage(project)["capture"]
    assert capture["status"] == "failed"
    error = capture["error"]
    assert "hostile.pt2" in error and entry in error and "pickled data" in error
    assert "does not load it" in error and "re-export" in error and "torch.export.save" in error


def _load(path: Path):
    from stages.frameworks.pytorch import load_program
    return load_program(path)


def test_pt2_sympy_expression_is_not_evaluated(tmp_path):
    """torch parses each symbolic shape with sympy.sympify, which is eval()."""
    from pipeline.stage import StageError
    marker = tmp_path / "evaluated"
    clean = _clean_pt2(tmp_path / "dynamic.pt2", dynamic=True)
    assert _load(clean).graph_signature.user_inputs   # a real one loads

    def evil(value):   # every symbolic shape opens the marker, then is what it was
        if isinstance(value, dict):
            if isinstance(value.get("expr_str"), str):
                value["expr_str"] = f"open({str(marker)!r}, 'a') and {value['expr_str']}"
            value = list(value.values())
        for item in value if isinstance(value, list) else ():
            evil(item)
    hostile = _tampered(clean, tmp_path / "hostile.pt2", {"models/model.json": _edit_json(evil)})
    with pytest.raises(StageError, match=r"hostile.pt2: models/model.json .*not plain sympy"):
        _load(hostile)
    assert not marker.exists()


def test_pt2_aotinductor_library_is_not_loaded(tmp_path):
    """load_pt2 dlopen()s data/aotinductor/<model>/*.so: its constructor would run."""
    from pipeline.stage import StageError
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("needs a C compiler to build the library")
    marker = tmp_path / "loaded"
    source = tmp_path / "evil.c"
    source.write_text("#include <stdio.h>\n__attribute__((constructor)) static void f(void) "
                      f'{{ fclose(fopen("{marker}", "a")); }}\n')
    library = tmp_path / "evil.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    hostile = _tampered(_clean_pt2(tmp_path / "clean.pt2"), tmp_path / "hostile.pt2", {
        "data/aotinductor/model/x.wrapper.so": library.read_bytes(),
        "data/aotinductor/model/x.wrapper_metadata.json": b'{"AOTI_DEVICE_KEY": "cpu"}'})
    with pytest.raises(StageError, match=r"entry data/aotinductor/model/x.wrapper.so is "
                                         r"AOTInductor native code"):
        _load(hostile)
    assert not marker.exists()


def test_pre_2_8_pt2_loads_but_its_pickles_do_not_run(tmp_path):
    """The old layout (a top-level "version" entry) is still read, with weights_only=True."""
    import torch
    from torch._export.serde.schema import SCHEMA_VERSION
    from torch._export.serde.serialize import serialize

    from pipeline.stage import StageError
    program = torch.export.load(str(_clean_pt2(tmp_path / "clean.pt2")))
    artifact = serialize(program)
    marker = tmp_path / "unpickled"

    def old_layout(path: Path, example_inputs: bytes) -> Path:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("version", ".".join(map(str, SCHEMA_VERSION)))
            archive.writestr("serialized_exported_program.json", artifact.exported_program)
            archive.writestr("serialized_state_dict.pt", artifact.state_dict)
            archive.writestr("serialized_constants.pt", artifact.constants)
            archive.writestr("serialized_example_inputs.pt", example_inputs)
        return path

    assert _load(old_layout(tmp_path / "old.pt2", artifact.example_inputs)).graph_signature
    hostile = old_layout(tmp_path / "hostile.pt2", _torch_saved(((Payload(marker),), {})))
    with pytest.raises(StageError, match=r"hostile.pt2: entry serialized_example_inputs.pt holds "
                                         r"pickled data .*\(it names (builtins|io)\.open\)"):
        _load(hostile)
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ   # set only while loading


# --- the checks one by one, without a file ---------------------------------------------------

# torch.export.save's own srepr of symbolic shapes, as found in real .pt2 files
PLAIN_EXPRS = ["Symbol('s65', positive=True, integer=True)",
               "Mul(Integer(2), Symbol('s65', positive=True, integer=True))",
               "Add(Symbol('s0', integer=True), Integer(-1))",
               "Float('1.5', precision=53)", "Integer(3)"]
# each would run Python as sympify evaluates it
HOSTILE_EXPRS = ["open('/tmp/x', 'a')", "__import__('os').system('true')",
                 "Symbol('s0').__class__", "Symbol('s0; import os')", "eval('1')",
                 "Integer(2) and exec('1')", "Symbol(**{'name': 's0'})", "[1][0]",
                 "Mul(Integer(2), 'Symbol(1)')", "Symbol(b's0')", "lambda: 1", "not valid ("]


@pytest.mark.parametrize("text", PLAIN_EXPRS)
def test_plain_sympy_expression_is_accepted(text):
    from stages.frameworks.pt2_safety import plain_sym_expr
    assert plain_sym_expr(text)


@pytest.mark.parametrize("text", HOSTILE_EXPRS)
def test_expression_that_is_not_plain_sympy_is_refused(text):
    from stages.frameworks.pt2_safety import plain_sym_expr
    assert not plain_sym_expr(text)


def test_loading_as_data_forces_weights_only_and_restores_the_environment(tmp_path, monkeypatch):
    import torch

    from pipeline.stage import StageError
    from stages.frameworks.pt2_safety import loading_as_data
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")   # the user's own switch
    pickled = io.BytesIO(_torch_saved(Payload(tmp_path / "unpickled")))
    with pytest.raises(StageError, match="pickled data that is not only tensors"):
        with loading_as_data(_clean_pt2(tmp_path / "clean.pt2")):
            torch.load(pickled, weights_only=False)   # as torch's own fallback asks
    assert not (tmp_path / "unpickled").exists()
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == "1"
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
