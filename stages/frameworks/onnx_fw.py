"""ONNX adapter: an onnx.ModelProto (or a user's .onnx file), onnxruntime reference, IREE's
own ONNX importer (the one behind iree-import-onnx) to the torch dialect.

A models/ file's build() returns (onnx.ModelProto, inputs): the model, e.g. from onnx.helper
or torch.onnx.export, and a tuple of numpy example inputs in the graph's input order. build()
seeds its own weights and inputs (numpy default_rng). A user's .onnx file gets seeded inputs
from its graph inputs (initializers listed as inputs by old exporters are skipped); a dynamic
dimension needs shapes=name:1x3x224x224.

Import does what iree-import-onnx does: upgrade to opset 17 when the model is older (IREE's
ONNX lowering covers 17+; older BatchNormalization/Split/... forms fail), full checker, shape
inference with data propagation, then onnx_importer. The reference runs on onnxruntime's CPU
provider with one thread, so reference.npz is the same bytes on every build. Models with
external data files are not supported (only the .onnx file's content enters the key).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.stage import ModelSpec, StageError

from . import Framework, build_model, save_arrays, seeded_inputs

OPSET = 17


class Onnx(Framework):
    name = "onnx"
    extra = "onnx"
    modules = ("onnx", "onnxruntime")
    dists = ("onnx", "onnxruntime")
    suffixes = (".onnx",)
    input_type = "onnx"
    captured = ("model.onnx",)
    serialized = "model.onnx"

    def capture(self, model: ModelSpec, out: Path) -> None:
        import onnx
        if model.factory:
            proto, inputs = build_model(model, lambda m: isinstance(m, onnx.ModelProto),
                                        "onnx.ModelProto")
        else:  # a user's .onnx file
            proto = onnx.load(str(model.sources["model"]), load_external_data=False)
            inputs = seeded_inputs(_signature(proto), model.shapes, model.seed, model.name)
        names = [name for name, _, _ in _signature(proto)]
        if len(names) != len(inputs):
            raise StageError(f"model {model.name}: the graph takes {len(names)} inputs "
                             f"({', '.join(names)}), build() gave {len(inputs)}")
        data = proto.SerializeToString(deterministic=True)
        (out / "model.onnx").write_bytes(data)
        reference = _session(data).run(None, dict(zip(names, inputs)))
        save_arrays(out / "inputs.npz", "arg", inputs)
        save_arrays(out / "reference.npz", "out", reference)

    def serialize(self, captured: Path, out: Path) -> None:
        shutil.copyfile(captured / "model.onnx", out / self.serialized)

    def import_mlir(self, serialized: Path, out: Path) -> None:
        import onnx
        from iree.compiler import ir
        from iree.compiler.extras import onnx_importer

        from stages.mlir import write_stripped
        proto = onnx.load(str(serialized), load_external_data=False)
        if _opset(proto) < OPSET:
            proto = onnx.version_converter.convert_version(proto, OPSET)
        try:
            onnx.checker.check_model(proto, full_check=True)
        except onnx.checker.ValidationError as err:
            raise StageError(f"the ONNX model is invalid: {str(err).splitlines()[0]}") from None
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        info = onnx_importer.ModelInfo(proto)
        module = info.create_module(context=ir.Context())
        onnx_importer.NodeImporter.define_function(info.main_graph, module.operation).import_all()
        module.operation.verify()
        write_stripped(module, out)


def _opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), OPSET)


def _session(data: bytes):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _signature(proto) -> list[tuple[str, list, str]]:
    import onnx
    initializers = {i.name for i in proto.graph.initializer}
    signature = []
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        signature.append((value.name, dims, dtype))
    return signature


ADAPTER = Onnx()
