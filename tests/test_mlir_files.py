"""MLIR written by hand: a plain func.func with tensor arguments and no hal.tensor.import ABI
wrapper. Its inputs come from the entry function's signature; with no framework reference,
validation checks that it runs."""
from __future__ import annotations

import json

MATMUL = """
func.func @main(%a: tensor<{rows}x8xf32>, %b: tensor<8x2xf32>) -> tensor<{rows}x2xf32> {{
  %zero = arith.constant 0.0 : f32
  %c0 = arith.constant 0 : index
  %n = tensor.dim %a, %c0 : tensor<{rows}x8xf32>
  %init = tensor.empty({size}) : tensor<{rows}x2xf32>
  %fill = linalg.fill ins(%zero : f32) outs(%init : tensor<{rows}x2xf32>) -> tensor<{rows}x2xf32>
  %product = linalg.matmul ins(%a, %b : tensor<{rows}x8xf32>, tensor<8x2xf32>)
                           outs(%fill : tensor<{rows}x2xf32>) -> tensor<{rows}x2xf32>
  %out = arith.addf %product, %product : tensor<{rows}x2xf32>
  return %out : tensor<{rows}x2xf32>
}}
"""


def matmul_mlir(dynamic: bool = False) -> str:
    # tensor.empty takes the dynamic row count as an operand, and none for a static shape
    return MATMUL.format(rows="?" if dynamic else "4", size="%n" if dynamic else "")


def write_bytecode(text: str, path):
    from iree.compiler import ir
    module = ir.Module.parse(text, ir.Context())
    with open(path, "wb") as f:
        module.operation.write_bytecode(f)
    return path


def by_stage(project) -> dict[str, dict]:
    return {t["stage"]: t for t in project.record()}


def assert_runs(project, inputs):
    stages = by_stage(project)
    assert set(stages) == {"legalize", "emit", "lower", "codegen", "validate", "pick"}
    result = stages["validate"]["result"]
    assert result["passed"] and "runs only" in result["checked"]
    legalized = project.root / "build" / stages["legalize"]["model"] / "legalize" / "legalize.json"
    assert json.loads(legalized.read_text())["inputs"] == inputs


def test_hand_written_mlir_takes_its_inputs_from_the_signature(project, tmp_path):
    model = tmp_path / "matmul.mlir"
    model.write_text(matmul_mlir())
    project.doit("validate", f"model={model}", "target=cpu")
    assert_runs(project, [["input0", [4, 8], "float32"], ["input1", [8, 2], "float32"]])


def test_hand_written_mlir_with_a_dynamic_dimension_needs_a_size(project, tmp_path):
    model = tmp_path / "dyn.mlir"
    model.write_text(matmul_mlir(dynamic=True))
    proc = project.doit("validate", f"model={model}", "target=cpu", check=False)
    assert proc.returncode != 0
    validate = by_stage(project)["validate"]
    assert validate["status"] == "failed" and "shapes=input0:" in validate["error"]

    project.doit("validate", f"model={model}", "target=cpu", "shapes=input0:3x8")
    assert_runs(project, [["input0", [None, 8], "float32"], ["input1", [8, 2], "float32"]])


def test_hand_written_mlir_as_bytecode(project, tmp_path):
    model = write_bytecode(matmul_mlir(), tmp_path / "matmul.mlirbc")
    project.doit("validate", f"model={model}", "target=cpu")
    assert_runs(project, [["input0", [4, 8], "float32"], ["input1", [8, 2], "float32"]])


UNKNOWN_OP = """
func.func @main(%a: tensor<4xf32>) -> tensor<4xf32> {
  %0 = "foo.bar"(%a) : (tensor<4xf32>) -> tensor<4xf32>
  return %0 : tensor<4xf32>
}
"""


def test_an_op_of_an_unknown_dialect_is_named_and_remembered(project, tmp_path):
    """iree-compile passes an op in generic form through to its output, which kiln reads
    back: the failure names the op, not only 'Unable to parse module assembly:'."""
    model = tmp_path / "odd.mlir"
    model.write_text(UNKNOWN_OP)
    proc = project.doit("validate", f"model={model}", "target=cpu", check=False)
    assert proc.returncode != 0
    legalize = by_stage(project)["legalize"]
    assert legalize["status"] == "failed"
    assert legalize["error"] == "ops IREE cannot legalize: foo.bar", legalize["error"]
    project.doit("validate", f"model={model}", "target=cpu", check=False)
    assert by_stage(project)["legalize"]["status"] == "failed (cached)"   # a verdict


def test_a_module_kiln_cannot_parse_names_the_file_and_why(tmp_path):
    import pytest

    from pipeline.stage import StageError
    from stages.mlir import parse
    with pytest.raises(StageError) as err:
        parse(UNKNOWN_OP.encode(), source=tmp_path / "odd.mlir")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'odd.mlir'}:3: not MLIR IREE can read: ") and \
        "unregistered dialect" in message and "\n" not in message, message
