"""TFLite adapter: a .tflite flatbuffer (converted from a tf.Module, or a user's file), LiteRT
interpreter reference, Arm's tosa-converter-for-tflite to TOSA.

A models/ file's build() returns (module, inputs): a tf.Module with one tf.function that has
an input_signature (the one named __call__ if there are several), converted here with
tf.lite.TFLiteConverter.from_concrete_functions; or the .tflite flatbuffer's bytes themselves.
inputs is a tuple of numpy arrays in the function's argument order. build() seeds its own
weights and inputs (numpy default_rng). A user's .tflite file gets seeded inputs from the
interpreter's input details (shape_signature; -1 is a dynamic dimension).

iree-import-tflite is broken with every TF tried, so import uses tosa-converter-for-tflite
in-process, as bytecode (its text form uses syntax IREE's parser rejects), then parses it with
IREE's bindings and writes bytecode again with every location stripped. The function's
arguments and results follow the flatbuffer's subgraph inputs/outputs, which is also the
interpreter's input/output detail order used for inputs.npz and reference.npz.
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path

from pipeline.stage import ModelSpec, StageError

from . import Framework, build_model, save_arrays, seeded_inputs
from .tf_fw import _entry_function, _tf, absl_safe


class TFLite(Framework):
    name = "tflite"
    extra = "tflite"
    modules = ("ai_edge_litert", "tosa_converter_for_tflite")   # + tensorflow to convert
    dists = ("tensorflow-cpu", "ai-edge-litert", "tosa-converter-for-tflite")
    suffixes = (".tflite",)
    input_type = "tosa"
    captured = ("model.tflite",)
    serialized = "model.tflite"

    def code_files(self) -> tuple[Path, ...]:
        return (*super().code_files(), Path(__file__).parent / "tf_fw.py")

    @absl_safe
    def capture(self, model: ModelSpec, out: Path) -> None:
        if model.factory:
            module, inputs = build_model(model, lambda m: True, "tf.Module or .tflite bytes")
            flatbuffer = bytes(module) if isinstance(module, (bytes, bytearray)) \
                else _convert(module, model.name)
        else:  # a user's .tflite file
            flatbuffer = Path(model.sources["model"]).read_bytes()
            inputs = None
        interpreter = _interpreter(flatbuffer)
        details = interpreter.get_input_details()
        if inputs is None:
            inputs = seeded_inputs(_signature(details), model.shapes, model.seed, model.name)
        if len(inputs) != len(details):
            raise StageError(f"model {model.name}: the flatbuffer takes {len(details)} inputs, "
                             f"build() gave {len(inputs)}")
        for detail, array in zip(details, inputs):
            if list(detail["shape"]) != list(array.shape):
                interpreter.resize_tensor_input(detail["index"], list(array.shape))
        interpreter.allocate_tensors()
        for detail, array in zip(details, inputs):
            interpreter.set_tensor(detail["index"], array.astype(detail["dtype"], copy=False))
        interpreter.invoke()
        reference = [interpreter.get_tensor(d["index"]).copy()
                     for d in interpreter.get_output_details()]
        (out / "model.tflite").write_bytes(flatbuffer)
        save_arrays(out / "inputs.npz", "arg", inputs)
        save_arrays(out / "reference.npz", "out", reference)

    def serialize(self, captured: Path, out: Path) -> None:
        shutil.copyfile(captured / "model.tflite", out / self.serialized)

    @absl_safe
    def import_mlir(self, serialized: Path, out: Path) -> None:
        from tosa_converter_for_tflite import (TosaConverterDebugInfo, TosaConverterOutputFormat,
                                               tflite_flatbuffer_to_tosa_mlir)

        from stages.mlir import parse, write_stripped
        buffer = io.BytesIO()
        tflite_flatbuffer_to_tosa_mlir(str(serialized), buffer, TosaConverterOutputFormat.Bytecode,
                                       TosaConverterDebugInfo.Disabled)
        write_stripped(parse(buffer.getvalue()), out)


def _convert(module, name: str) -> bytes:
    import importlib.util
    if importlib.util.find_spec("tensorflow") is None:
        raise StageError(f"model {name}: converting a tf.Module to .tflite needs TensorFlow: "
                         "install kiln[tf] (or return the .tflite bytes from build())")
    tf = _tf()
    _, function = _entry_function(module, name)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], module)
    return bytes(converter.convert())


def _interpreter(flatbuffer: bytes):
    from ai_edge_litert.interpreter import Interpreter
    return Interpreter(model_content=flatbuffer, num_threads=1)


def _signature(details) -> list[tuple[str, list, str]]:
    import numpy as np
    return [(d["name"], [None if s < 0 else int(s) for s in d["shape_signature"]],
             np.dtype(d["dtype"]).name) for d in details]


ADAPTER = TFLite()
