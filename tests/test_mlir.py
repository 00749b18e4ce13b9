"""stages/mlir.py on IREE's own MLIR bindings: ops counted, public functions, an entry's inputs
read from a hand-written signature, and written without any source location."""
from __future__ import annotations

from stages import mlir

HAND_WRITTEN = b"""
func.func @main(%a: tensor<4x8xf32>, %b: tensor<?x8xi8>) -> tensor<4x8xf32> {
  %0 = arith.addf %a, %a : tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}
func.func private @helper(%a: tensor<2xf32>) -> tensor<2xf32> {
  return %a : tensor<2xf32>
}
"""


def test_ops_and_public_functions():
    module = mlir.parse(HAND_WRITTEN)
    counts = mlir.op_names(module)
    assert counts["func.func"] == 2 and counts["arith.addf"] == 1 and counts["func.return"] == 2
    assert mlir.public_functions(module) == ["main"]


def test_inputs_of_a_hand_written_entry_come_from_its_signature():
    module = mlir.parse(HAND_WRITTEN)
    assert mlir.entry_inputs(module, "main") == [("input0", [4, 8], "float32"),
                                                  ("input1", [None, 8], "int8")]


def test_written_text_holds_no_location(tmp_path):
    module = mlir.parse(b'func.func @f(%a: tensor<2xf32>) -> tensor<2xf32> {\n'
                        b'  return %a : tensor<2xf32> loc("/home/someone/model.py":3:1)\n}\n')
    path = tmp_path / "out.mlir"
    mlir.write_stripped(module, path, bytecode=False)
    assert "/home/someone" not in path.read_text() and "func.func" in path.read_text()
