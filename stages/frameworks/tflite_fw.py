"""TFLite adapter: a .tflite flatbuffer (converted from a tf.Module, or a user's file), LiteRT
interpreter reference, Arm's tosa-converter-for-tflite to TOSA.

A models/ file's build() returns (module, inputs): a tf.Module with one tf.function that has
an input_signature (the one named __call__ if there are several), converted here with
tf.lite.TFLiteConverter.from_concrete_functions; or the .tflite flatbuffer's bytes themselves.
inputs is a tuple of numpy arrays in the function's argument order. build() seeds its own
weights and inputs (numpy default_rng).

A user's .tflite file takes the user's inputs (inputs=, matched to the interpreter's input
details by name or position), else seeded ones sized from the input details:
- shapes=NAME:DIMS sizes an input; otherwise a dynamic dimension (-1 in shape_signature, as
  every Keras-converted file has for its batch) takes the model's own concrete `shape` entry
  (1 for a Keras batch), with a note;
- a quantized integer input (int8/uint8 with a scale) gets standard-normal values quantized
  with its scale and zero point, not small integers, so the model sees values in the range it
  was calibrated for.
Capture's model.tflite (what LiteRT answers for and IREE imports) has every dynamic input
fixed to the captured shape: tosa-converter-for-tflite cannot legalize some graphs with a
dynamic batch (a Keras Embedding -> Dense) that convert once the inputs are static.
Quantized files of every kind are accepted: full-integer (int8 or uint8 inputs and outputs),
integer inside with float inputs and outputs, and dynamic-range (integer weights, float
activations). IREE's quantized arithmetic rounds differently from LiteRT's, about one
quantization step apart, so capture returns a per-output tolerance (with its why) of
QUANT_STEPS steps:
- a quantized integer output: its raw codes are compared, so atol = QUANT_STEPS;
- a float output a DEQUANTIZE makes from a quantized tensor: QUANT_STEPS times its scale;
- dynamic-range files whose hybrid kernels (e.g. FULLY_CONNECTED with int8 weights) quantize
  float activations to int8 on the fly in LiteRT, where IREE computes in float with the
  dequantized weights (5e-3 apart on a small CNN): QUANT_STEPS symmetric int8 steps of each
  float output's own magnitude, with a note. Where no hybrid kernel runs (the weights are
  dequantized before use, e.g. an embedding table) the target's tolerance stays, with a note.
The output details' shape_signature (-1 = dynamic) is returned as declared_outputs, which
capture checks LiteRT's answer against.

iree-import-tflite is broken with every TF tried, so import uses tosa-converter-for-tflite
in-process, as bytecode (its text form uses syntax IREE's parser rejects), then parses it with
IREE's bindings and writes bytecode again with every location stripped. The function's
arguments and results follow the flatbuffer's subgraph inputs/outputs, which is also the
interpreter's input/output detail order used for inputs.npz and reference.npz.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # (numpy is imported where used: planning imports none)
    import numpy as np

from pipeline.stage import ModelSpec, StageError

from .base import NOT_INSTALLED, QUANT_STEPS, Framework, Intermediate, NoIntermediates, Traced
from .factory import build_model
from .inputs import model_inputs
from .tf_common import absl_safe, entry_function, load_tf


class TFLite(Framework):
    name = "tflite"
    extra = "tflite"
    modules = ("ai_edge_litert", "tosa_converter_for_tflite")   # + tensorflow to convert
    dists = ("tensorflow-cpu", "ai-edge-litert", "tosa-converter-for-tflite")
    # LiteRT, the TFLite converter (TensorFlow's) and Keras that models build on, the TOSA
    # converter and the MLIR parser that read its output
    packages = ("ai_edge_litert", "tensorflow", "keras", "tf_keras", "tosa_converter_for_tflite",
                "iree.compiler")
    suffixes = (".tflite",)
    input_type = "tosa"
    captured = ("model.tflite",)
    serialized = "model.tflite"
    builds_on = ("tf_common",)

    @absl_safe
    def trace(self, model: ModelSpec) -> Traced:
        notes = []
        if model.factory:
            built, inputs = build_model(model, lambda m: True, "tf.Module or .tflite bytes")
            flatbuffer = bytes(built) if isinstance(built, (bytes, bytearray)) \
                else _convert(built, model.name)
        else:  # a user's .tflite file
            flatbuffer = Path(model.sources["model"]).read_bytes()
            inputs = None
        source = f"what {model.factory} returned" if model.factory else model.sources["model"]
        interpreter = _first_interpreter(flatbuffer, source)
        details = interpreter.get_input_details()
        if inputs is None:
            inputs, notes = _file_inputs(model, details)
        self.check_input_count(model, "the flatbuffer", [d["name"] for d in details], inputs)
        static = _with_static_inputs(flatbuffer, details, inputs)
        if static is not flatbuffer:  # LiteRT answers for exactly the file IREE imports
            flatbuffer, interpreter = static, _interpreter(static)
            details = interpreter.get_input_details()
        reference = _run(interpreter, details, inputs)
        outputs = interpreter.get_output_details()
        tolerances = _output_tolerances(interpreter, outputs, reference)
        notes += _dynamic_range_notes(interpreter, outputs)
        alternative = _run(_interpreter(flatbuffer, reference_kernels=True), details, inputs)
        return Traced(artifact=flatbuffer, inputs=inputs, reference=reference, notes=notes,
                      tolerances=tolerances if any(tolerances) else None,
                      declared_outputs=[_dims(d["shape_signature"]) for d in outputs],
                      alternative=alternative, alternative_from=REFERENCE_KERNELS)

    # serialize: capture's model.tflite is the interchange file, copied under the fixed name

    @absl_safe
    def import_mlir(self, serialized_file: Path, mlir_file: Path) -> None:
        from tosa_converter_for_tflite import (
            TosaConverterDebugInfo,
            TosaConverterOutputFormat,
            tflite_flatbuffer_to_tosa_mlir,
        )

        from stages.mlir import parse, write_stripped
        buffer = io.BytesIO()
        try:
            tflite_flatbuffer_to_tosa_mlir(str(serialized_file), buffer,
                                           TosaConverterOutputFormat.Bytecode,
                                           TosaConverterDebugInfo.Disabled)
        except RuntimeError as err:   # the converter's verdict on this file: deterministic
            raise StageError(f"Arm's TFLite-to-TOSA converter (tosa-converter-for-tflite) "
                             f"cannot convert the model: {err}") from None
        write_stripped(parse(buffer.getvalue()), mlir_file)

    def intermediates(self, capture_dir: Path, inputs: list) -> list[Intermediate]:
        """Every op's output tensor as LiteRT's reference kernels compute it, kept by the
        interpreter's experimental_preserve_all_tensors, in the order the ops run. Not
        XNNPACK's (the reference answer's): on int8 files it rounds layer by layer away from
        the reference kernels, which IREE's every tensor equals (docs/DESIGN.md §10.8), so its
        own rounding would be named as IREE's fault. A DEQUANTIZE's float output carries its
        int8 input's scale: it is rounded as that is."""
        flatbuffer = (capture_dir / self.captured[0]).read_bytes()
        interpreter = _interpreter(flatbuffer, reference_kernels=True, preserve_all_tensors=True)
        _run(interpreter, interpreter.get_input_details(), inputs)
        tensors = _tensors(interpreter)
        found = []
        for op in _ops(interpreter):
            for index in (int(i) for i in op["outputs"] if int(i) in tensors):
                detail = tensors[index]
                scale, zero_point = _quantization(
                    tensors[int(op["inputs"][0])] if op["op_name"] == "DEQUANTIZE" else detail) \
                    or (None, None)
                found.append(Intermediate(detail["name"], op["op_name"],
                                          interpreter.get_tensor(index).copy(), scale, zero_point))
        if not found:
            raise NoIntermediates("this LiteRT does not list its ops (_get_ops_details)")
        return found

    timing_threads = "LiteRT Interpreter num_threads"

    def runner(self, capture_dir: Path, inputs: list, threads: int):
        # the interpreter capture asked for the reference, on the same flatbuffer
        interpreter = _interpreter((capture_dir / self.captured[0]).read_bytes(), threads)
        details = interpreter.get_input_details()
        return lambda: _run(interpreter, details, inputs)


def _convert(module, name: str) -> bytes:
    import importlib.util
    if importlib.util.find_spec("tensorflow") is None:
        raise StageError(f"model {name}: converting a tf.Module to .tflite needs TensorFlow: "
                         "install kiln[tf] (or return the .tflite bytes from build())",
                         transient=NOT_INSTALLED)
    tf = load_tf()
    _, function = entry_function(module, name)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], module)
    return bytes(converter.convert())


# LiteRT's second implementation of every op: its answer beside the default (XNNPACK)
# kernels' is the framework's own spread (validate's rule where LiteRT has no float64), and a
# quantized target that matches it exactly is right where XNNPACK rounds otherwise (measured
# on the zoo's Keras int8 files: IREE equals these kernels to the step, XNNPACK is 11-34
# steps off both)
REFERENCE_KERNELS = "LiteRT's reference kernels"


def _first_interpreter(flatbuffer: bytes, source):
    """LiteRT's interpreter of a model's flatbuffer (source: its file, or factory). One
    LiteRT refuses (an empty file, a text file named .tflite) is a StageError naming source,
    a verdict on it: LiteRT's ValueError names no file, and is no verdict (every run tried
    the file again, and blamed a timeout or a lost device)."""
    if not flatbuffer:
        raise StageError(f"{source} is not a TFLite model: the file is empty")
    try:
        return _interpreter(flatbuffer)
    except ValueError as err:
        raise StageError(f"{source} is not a TFLite model LiteRT can read: {err}") from None


def _interpreter(flatbuffer: bytes, threads: int = 1, reference_kernels: bool = False,
                 preserve_all_tensors: bool = False):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
    return Interpreter(model_content=flatbuffer, num_threads=threads,
                       experimental_op_resolver_type=resolver,
                       experimental_preserve_all_tensors=preserve_all_tensors)


def _run(interpreter, details, inputs) -> list:
    """LiteRT's answer on these inputs, the tensors resized to them first."""
    for detail, array in zip(details, inputs):
        if list(detail["shape"]) != list(array.shape):
            interpreter.resize_tensor_input(detail["index"], list(array.shape))
    interpreter.allocate_tensors()
    for detail, array in zip(details, inputs):
        interpreter.set_tensor(detail["index"], array.astype(detail["dtype"], copy=False))
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]).copy() for d in interpreter.get_output_details()]


def _with_static_inputs(flatbuffer: bytes, details, inputs) -> bytes:
    """The flatbuffer with each dynamic input fixed to its captured shape, or the same bytes
    when none is dynamic. tosa-converter-for-tflite fails to legalize some graphs with a
    dynamic batch (a Keras Embedding -> Dense: "Could not legalize the TFLite model to TOSA")
    that convert once the inputs are static; the ops inside keep their own signatures."""
    if all(min(d["shape_signature"], default=0) >= 0 for d in details):
        return flatbuffer
    from ai_edge_litert.tools import flatbuffer_utils
    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    if any(getattr(buffer, "offset", 0) for buffer in model.buffers or []):
        return flatbuffer   # weights stored past the flatbuffer (> 2 GB): not rewritten
    tensors = model.subgraphs[0].tensors
    for detail, array in zip(details, inputs):
        tensors[detail["index"]].shape = list(array.shape)
        tensors[detail["index"]].shapeSignature = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _dims(shape) -> list:
    return [None if s < 0 else int(s) for s in shape]


def _signature(details) -> list[tuple[str, list, str]]:
    """The inputs as declared: a dynamic dimension (-1 in shape_signature) is None."""
    import numpy as np
    return [(d["name"], _dims(d["shape_signature"]), np.dtype(d["dtype"]).name) for d in details]


# --- a user's file: its inputs ----------------------------------------------------------

def _file_inputs(model: ModelSpec, details) -> tuple[list, list[str]]:
    """(inputs, notes) for a user's file: the user's own, else seeded ones, sized from the
    model's own shapes and drawn over each quantized input's range."""
    import numpy as np
    if model.input_files():  # the user's arrays size the dynamic dimensions themselves
        return model_inputs(model, _signature(details)), []
    signature, notes = _sized_signature(details, model.shapes)
    inputs = model_inputs(model, signature)
    rng = np.random.default_rng(model.seed)
    for position, detail in enumerate(details):
        if _quantization(detail) is not None:
            inputs[position] = _quantized_normal(rng, detail, inputs[position].shape)
            notes.append(_quantized_input_note(detail))
    return inputs, notes


def _sized_signature(details, shapes: dict) -> tuple[list, list[str]]:
    """The signature with each dynamic dimension the user did not size taken from the model's
    own concrete `shape`: a Keras-converted file declares its batch -1 next to a shape of 1.
    A dimension with no concrete size stays dynamic (seeding then asks for shapes=)."""
    signature, notes = [], []
    for detail, (name, dims, dtype) in zip(details, _signature(details)):
        own = [int(s) for s in detail["shape"]]
        if name not in shapes and None in dims and len(own) == len(dims):
            taken = {i: own[i] for i, dim in enumerate(dims) if dim is None and own[i] > 0}
            if taken:
                notes.append(_own_shape_note(name, dims, own, taken))
                dims = [taken.get(i, dim) for i, dim in enumerate(dims)]
        signature.append((name, dims, dtype))
    return signature, notes


def _own_shape_note(name: str, dims: list, own: list, taken: dict[int, int]) -> str:
    what = ", ".join(("batch" if i == 0 else f"dimension {i}") + f" {size}"
                     for i, size in taken.items())
    example = "x".join(str(8 if i == 0 and dim is None else size)
                       for i, (dim, size) in enumerate(zip(dims, own)))
    return (f"input '{name}': dynamic {what} taken from the model's own shape "
            f"{'x'.join(map(str, own))}; another size: shapes={name}:{example}")


def _quantization(detail) -> tuple[float, int] | None:
    """(scale, zero point) of a per-tensor quantized integer tensor, else None."""
    import numpy as np
    scale, zero_point = detail["quantization"]
    if scale == 0 or np.dtype(detail["dtype"]).kind not in "iu":
        return None
    return float(scale), int(zero_point)


def _quantized_normal(rng, detail, shape) -> np.ndarray:
    """Standard-normal real values quantized to the input's codes (clipped to its dtype), like
    a float model's seeded inputs: integers from [0, 10) would all be near one real value."""
    import numpy as np
    scale, zero_point = _quantization(detail)
    dtype = np.dtype(detail["dtype"])
    codes = np.round(rng.standard_normal(shape) / scale) + zero_point
    return np.clip(codes, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)


def _quantized_input_note(detail) -> str:
    import numpy as np
    scale, zero_point = _quantization(detail)
    return (f"input '{detail['name']}': {np.dtype(detail['dtype']).name} quantized (scale "
            f"{scale:.3g}, zero point {zero_point}): seeded with standard-normal values "
            "quantized to its codes")


# --- quantized models: how far IREE may be from LiteRT ----------------------------------

INT8_STEPS = 127   # symmetric int8: the steps between 0 and the largest magnitude


def _output_tolerances(interpreter, outputs, reference) -> list[dict | None]:
    """Per output, a tolerance of QUANT_STEPS quantization steps where LiteRT's answer is
    quantized (see the helpers); None keeps the target's."""
    hybrid = _hybrid_ops(interpreter)
    tolerances = []
    for detail, answer in zip(outputs, reference):
        tolerance = _integer_output_tolerance(detail) or \
            _dequantized_output_tolerance(interpreter, detail["index"])
        if tolerance is None and hybrid and answer.dtype.kind == "f":
            tolerance = _hybrid_tolerance(answer, hybrid)
        tolerances.append(tolerance)
    return tolerances


def _integer_output_tolerance(detail) -> dict | None:
    """A quantized integer output: its codes are what is compared, so atol counts steps."""
    import numpy as np
    quantization = _quantization(detail)
    if quantization is None:
        return None
    scale, zero_point = quantization
    return {"atol": float(QUANT_STEPS), "rtol": 0.0,
            "why": f"{np.dtype(detail['dtype']).name} output quantized with scale {scale:.3g}, "
                   f"zero point {zero_point}: {QUANT_STEPS} quantization steps"}


def _dequantized_output_tolerance(interpreter, tensor_index: int) -> dict | None:
    """A float output a DEQUANTIZE op makes from a quantized tensor (integer inside, float at
    the edges): the steps are that tensor's, so atol is steps times its scale."""
    import numpy as np
    source = _dequantize_source(interpreter, tensor_index)
    quantization = source and _quantization(source)
    if not quantization:
        return None
    scale, zero_point = quantization
    return {"atol": QUANT_STEPS * scale, "rtol": 0.0,
            "why": f"float output dequantized from {np.dtype(source['dtype']).name} quantized "
                   f"with scale {scale:.3g}, zero point {zero_point}: {QUANT_STEPS} "
                   "quantization steps"}


def _hybrid_tolerance(answer, hybrid: list[str]) -> dict | None:
    """Dynamic-range quantization: LiteRT's hybrid kernels quantize their float inputs to int8
    on the fly (symmetric, max |x| / 127 a step) where IREE computes in float with the
    dequantized weights; allow QUANT_STEPS such steps of the output itself."""
    import numpy as np
    largest = float(np.abs(answer).max(initial=0.0))
    if not np.isfinite(largest) or largest == 0:
        return None
    return {"atol": QUANT_STEPS * largest / INT8_STEPS, "rtol": 0.0,
            "why": f"dynamic-range quantized: LiteRT's {', '.join(hybrid)} quantize float "
                   "activations to int8 on the fly, IREE computes in float: "
                   f"{QUANT_STEPS} int8 steps of the output (max |output| {largest:.3g} / "
                   f"{INT8_STEPS})"}


def _ops(interpreter) -> list[dict]:
    """The interpreter's ops (a private method, but long-standing), without the delegate
    pseudo-ops that stand for the ops they took over."""
    ops = getattr(interpreter, "_get_ops_details", None)
    return [op for op in (ops() if ops else []) if op["op_name"] != "DELEGATE"]


def _tensors(interpreter) -> dict[int, dict]:
    return {d["index"]: d for d in interpreter.get_tensor_details()}


def _dequantize_source(interpreter, tensor_index: int) -> dict | None:
    """The details of the tensor a DEQUANTIZE op turns into this one, if one does."""
    for op in _ops(interpreter):
        if op["op_name"] == "DEQUANTIZE" and tensor_index in op["outputs"]:
            return _tensors(interpreter).get(int(op["inputs"][0]))
    return None


def _hybrid_ops(interpreter) -> list[str]:
    """The names of ops that take float activations and quantized integer weights and give
    float: dynamic-range quantization's hybrid kernels."""
    tensors = _tensors(interpreter)
    names = []
    for op in _ops(interpreter):
        operands = [tensors[int(i)] for i in op["inputs"] if int(i) in tensors]
        results = [tensors[int(i)] for i in op["outputs"] if int(i) in tensors]
        if any(_is_float(t) for t in operands) and any(_has_scales(t) for t in operands) \
                and results and all(_is_float(t) for t in results) and op["op_name"] not in names:
            names.append(op["op_name"])
    return names


def _dynamic_range_notes(interpreter, outputs) -> list[str]:
    """A note when the model is dynamic-range quantized: quantized weights, float outputs that
    no DEQUANTIZE makes (those are integer inside, with their own tolerance)."""
    if not any(_has_scales(t) for t in interpreter.get_tensor_details()) or any(
            _quantization(d) or _dequantize_source(interpreter, d["index"]) for d in outputs):
        return []
    hybrid = _hybrid_ops(interpreter)
    if hybrid:
        return [f"dynamic-range quantized (integer weights, float activations): LiteRT's "
                f"{', '.join(hybrid)} quantize their float inputs on the fly, so float outputs "
                f"are compared within {QUANT_STEPS} int8 steps of their own magnitude"]
    return ["dynamic-range quantized (integer weights, float activations): the weights are "
            "dequantized before use, so outputs are compared within the target's tolerance"]


def _is_float(tensor) -> bool:
    import numpy as np
    return np.dtype(tensor["dtype"]).kind == "f"


def _has_scales(tensor) -> bool:
    """A quantized integer tensor, per-tensor or per-channel."""
    import numpy as np
    return np.dtype(tensor["dtype"]).kind in "iu" and \
        len(tensor["quantization_parameters"]["scales"]) > 0


ADAPTER = TFLite()
