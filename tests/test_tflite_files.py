"""Users' real TFLite files, end to end on llvm-cpu: Keras-converted files (batch -1 in
shape_signature next to a concrete shape), and quantized files of every kind (full-integer
int8 and uint8, integer inside with float edges, dynamic-range).

Every file is made here with TensorFlow's TFLiteConverter from one small Keras CNN. To stay
fast (TF start-up is slow), one module-scoped project runs ONE `doit validate` over every
file; the tests read that run's record and capture.json. Checks that need no compiler call
the adapter in-process."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import Project, copy_project

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # before TensorFlow loads
pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("tosa_converter_for_tflite")

from pipeline.stage import ModelSpec, StageError  # noqa: E402
from stages.frameworks import load_arrays  # noqa: E402
from stages.frameworks.tflite_fw import ADAPTER, QUANT_STEPS  # noqa: E402

SHAPE = (8, 8, 3)      # one image, NHWC without the batch
CLASSES = 5
TOKENS, VOCABULARY = 6, 200
SIZED_BATCH = 3        # the batch shapes= gives the `keras_sized` config model
# file stem -> how the converter quantizes the CNN
KINDS = ("float", "int8", "uint8", "int8_inside", "dynamic")
# file stem -> dynamic-range quantized or not, of the embedding model
EMBEDDINGS = {"embedding": False, "embedding_dynamic": True}


# --- the model files ---------------------------------------------------------------------

def _keras_cnn():
    """conv 3x3 -> relu -> flatten -> dense: batch None, as every Keras model has. The dense
    weights (256x5) are large enough for dynamic-range quantization to make them int8."""
    import tensorflow as tf
    tf.keras.utils.set_random_seed(0)
    return tf.keras.Sequential([
        tf.keras.Input(SHAPE, name="image"),
        tf.keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(CLASSES)])


def _keras_embedding():
    """token ids -> Embedding -> Dense, batch None: with a dynamic batch the Dense over 3-D
    becomes SHAPE/GATHER/REDUCE_PROD ops tosa-converter-for-tflite cannot legalize. Dynamic-
    range quantization makes the table int8 and dequantizes what GATHER picks: no hybrid op."""
    import tensorflow as tf
    tf.keras.utils.set_random_seed(1)
    return tf.keras.Sequential([
        tf.keras.Input((TOKENS,), dtype="int32", name="tokens"),
        tf.keras.layers.Embedding(VOCABULARY, 8),
        tf.keras.layers.Dense(3)])


def _calibration():
    rng = np.random.default_rng(0)
    for _ in range(20):
        yield [rng.standard_normal((1, *SHAPE)).astype(np.float32)]


def _convert(kind: str) -> bytes:
    import tensorflow as tf
    converter = tf.lite.TFLiteConverter.from_keras_model(_keras_cnn())
    if kind != "float":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind in ("int8", "uint8", "int8_inside"):
        converter.representative_dataset = _calibration
    if kind in ("int8", "uint8"):  # full-integer, integer inputs and outputs
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = \
            tf.int8 if kind == "int8" else tf.uint8
    return bytes(converter.convert())


def _convert_embedding(dynamic_range: bool) -> bytes:
    import tensorflow as tf
    converter = tf.lite.TFLiteConverter.from_keras_model(_keras_embedding())
    if dynamic_range:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return bytes(converter.convert())


def _details(path: Path) -> SimpleNamespace:
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(path))
    return SimpleNamespace(inputs=interpreter.get_input_details(),
                           outputs=interpreter.get_output_details())


# --- one project, one build of every file --------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tflite_files")
    files = root / "user models"   # a space: paths must survive the command line
    files.mkdir()
    paths = {kind: files / f"keras_{kind}.tflite" for kind in (*KINDS, *EMBEDDINGS)}
    for kind in KINDS:
        paths[kind].write_bytes(_convert(kind))
    for kind, dynamic_range in EMBEDDINGS.items():
        paths[kind].write_bytes(_convert_embedding(dynamic_range))
    details = {kind: _details(path) for kind, path in paths.items()}
    input_name = details["float"].inputs[0]["name"]   # serving_default_image:0

    project = Project(copy_project(root / "proj"))
    # the float file once more, its batch sized by the config (a `file:` model with shapes)
    with open(project.root / "targets.yaml", "a") as config:
        config.write(f"\nmodels:\n  keras_sized:\n    file: {json.dumps(str(paths['float']))}\n"
                     f"    shapes: {{{json.dumps(input_name)}: [{SIZED_BATCH}, 8, 8, 3]}}\n")
    proc = project.doit("validate", f"model={','.join(map(str, paths.values()))},keras_sized",
                        "target=cpu", check=False)
    return SimpleNamespace(project=project, paths=paths, details=details, proc=proc,
                           input_name=input_name, record={t["task"]: t for t in project.record()})


def _model(built, kind: str) -> str:
    return built.paths[kind].name


def _capture_dir(built, model: str) -> Path:
    return built.project.root / "build" / model / "capture"


def _capture_info(built, model: str) -> dict:
    return json.loads((_capture_dir(built, model) / "capture.json").read_text())


def _arrays(built, model: str, name: str) -> list[np.ndarray]:
    return load_arrays(_capture_dir(built, model) / name)


def _validated(built, model: str) -> dict:
    """Every stage ran, and validate passed: its result."""
    for stage in ("capture", "serialize", "import", "legalize", "emit", "codegen"):
        task = built.record.get(f"{stage}:{model}") or built.record.get(f"{stage}:{model}@cpu")
        assert task and task["status"] in ("ran", "cached"), \
            (model, stage, task, built.proc.stdout[-3000:])
    validate = built.record[f"validate:{model}@cpu"]
    assert validate["status"] in ("ran", "cached"), validate
    assert validate["result"]["passed"], validate["result"]
    return validate["result"]


# --- 1. Keras-converted files: batch -1 next to a concrete shape ---------------------------

def test_keras_file_declares_a_dynamic_batch_next_to_a_concrete_shape(built):
    detail = built.details["float"].inputs[0]
    assert list(detail["shape_signature"]) == [-1, *SHAPE]
    assert list(detail["shape"]) == [1, *SHAPE]


def test_keras_file_takes_its_batch_from_the_model_shape_with_a_note(built):
    model = _model(built, "float")
    result = _validated(built, model)
    assert result["max_abs_error"] < result["atol"], result
    assert [a.shape for a in _arrays(built, model, "inputs.npz")] == [(1, *SHAPE)]
    assert [a.shape for a in _arrays(built, model, "reference.npz")] == [(1, CLASSES)]
    notes = _capture_info(built, model)["notes"]
    assert any(f"input '{built.input_name}': dynamic batch 1 taken from the model's own shape"
               in n and f"shapes={built.input_name}:8x8x8x3" in n for n in notes), notes
    assert _capture_info(built, model)["tolerances"] is None   # a float model: the target's


def test_shapes_win_over_the_model_shape(built):
    result = _validated(built, "keras_sized")
    assert result["max_abs_error"] < result["atol"], result
    assert [a.shape for a in _arrays(built, "keras_sized", "inputs.npz")] == \
        [(SIZED_BATCH, *SHAPE)]
    assert [a.shape for a in _arrays(built, "keras_sized", "reference.npz")] == \
        [(SIZED_BATCH, CLASSES)]
    assert not any("batch" in n for n in _capture_info(built, "keras_sized")["notes"])


def test_user_inputs_size_the_dynamic_batch_themselves(built, tmp_path):
    np.savez(tmp_path / "mine.npz", image=np.full((2, *SHAPE), 0.5, np.float32))
    spec = ModelSpec("mine", "tflite", {"model": built.paths["float"],
                                        "inputs": tmp_path / "mine.npz"})
    out = tmp_path / "capture"
    out.mkdir()
    info = ADAPTER.capture(spec, out)
    assert info["notes"] == []
    with np.load(out / "reference.npz") as reference:
        assert reference["out0"].shape == (2, CLASSES)


def test_declared_outputs_come_from_the_output_shape_signature(built, tmp_path):
    out = tmp_path / "capture"
    out.mkdir()
    info = ADAPTER.capture(ModelSpec("k", "tflite", {"model": built.paths["int8"]}), out)
    assert info["declared_outputs"] == [[None, CLASSES]]


def _captured_input_signatures(built, model: str) -> list[list[int]]:
    return [list(d["shape_signature"])
            for d in _details(_capture_dir(built, model) / "model.tflite").inputs]


def test_capture_makes_the_dynamic_inputs_static_in_the_file_it_passes_on(built, tmp_path):
    assert _captured_input_signatures(built, _model(built, "float")) == [[1, *SHAPE]]
    assert _captured_input_signatures(built, "keras_sized") == [[SIZED_BATCH, *SHAPE]]
    # written the same way every time: later stages' keys depend on these bytes
    spec = ModelSpec("k", "tflite", {"model": built.paths["float"]})
    again = tmp_path / "capture"
    again.mkdir()
    ADAPTER.capture(spec, again)
    assert (again / "model.tflite").read_bytes() == \
        (_capture_dir(built, _model(built, "float")) / "model.tflite").read_bytes()


def test_embedding_model_with_a_dynamic_batch_validates(built):
    model = _model(built, "embedding")
    assert list(built.details["embedding"].inputs[0]["shape_signature"]) == [-1, TOKENS]
    result = _validated(built, model)
    assert result["max_abs_error"] < result["atol"], result
    [tokens] = _arrays(built, model, "inputs.npz")
    assert tokens.dtype == np.int32 and tokens.shape == (1, TOKENS)
    assert 0 <= tokens.min() and tokens.max() < 10   # valid ids for any vocabulary


def test_litert_reference_kernels_are_a_second_answer_whose_spread_is_the_noise(built):
    # LiteRT has no float64: its reference kernels' answer beside its default (XNNPACK) one
    model = _model(built, "embedding")
    capture = json.loads((built.project.root / "build" / model / "capture" / "capture.json")
                         .read_text())
    assert capture["alternative"]["from"] == "LiteRT's reference kernels"
    assert capture["alternative"]["spread"][0] is not None
    result = _validated(built, model)
    assert result["rule"] == "spread" and result["factor"] <= result["factor_allowed"], result
    assert result["framework_error"] == capture["alternative"]["spread"][0]


# --- 2. quantized files --------------------------------------------------------------------

def _steps_why(detail, dtype: str) -> str:
    scale, zero_point = detail["quantization"]
    return (f"{dtype} output quantized with scale {scale:.3g}, zero point {zero_point}: "
            f"{QUANT_STEPS} quantization steps")


@pytest.mark.parametrize("kind", ["int8", "uint8"])
def test_full_integer_output_gets_a_tolerance_of_quantization_steps(built, kind):
    model = _model(built, kind)
    output = built.details[kind].outputs[0]
    assert np.dtype(output["dtype"]).name == kind and output["quantization"][0] > 0
    tolerances = _capture_info(built, model)["tolerances"]
    # the raw integer codes are compared: atol counts steps
    assert tolerances == [{"atol": float(QUANT_STEPS), "rtol": 0.0,
                           "why": _steps_why(output, kind)}]


@pytest.mark.parametrize("kind", ["int8", "uint8"])
def test_quantized_inputs_are_seeded_over_their_real_range(built, kind):
    model = _model(built, kind)
    detail = built.details[kind].inputs[0]
    scale, zero_point = detail["quantization"]
    [codes] = _arrays(built, model, "inputs.npz")
    assert codes.dtype == np.dtype(kind) and codes.shape == (1, *SHAPE)
    real = (codes.astype(np.float64) - zero_point) * scale   # standard normal, quantized
    assert -0.5 < real.mean() < 0.5 and 0.7 < real.std() < 1.3, (real.mean(), real.std())
    assert np.ptp(codes.astype(int)) > 10        # not the integers of [0, 10)
    notes = _capture_info(built, model)["notes"]
    assert any(f"{kind} quantized (scale {scale:.3g}, zero point {zero_point}): seeded with "
               "standard-normal values" in n for n in notes), notes


def test_int8_model_validates_within_two_quantization_steps(built):
    model = _model(built, "int8")
    result = _validated(built, model)
    output = built.details["int8"].outputs[0]
    assert result["tolerance_why"] == [_steps_why(output, "int8")]
    assert result["outputs"][0]["atol"] == float(QUANT_STEPS)
    assert result["max_abs_error"] <= QUANT_STEPS


def _run_module(built, model: str) -> list[np.ndarray]:
    """The compiled module's outputs on capture's inputs, as validate runs it."""
    from stages.iree_tools import tool
    from stages.weights import SCOPE
    build = built.project.root / "build" / model
    entry = json.loads((build / "emit" / "model.json").read_text())["entry"]
    args = [tool("iree-run-module"), "--device=local-task",
            f"--module={build / 'cpu' / 'codegen' / 'module.vmfb'}", f"--function={entry}"]
    if (build / "emit" / "model.irpa").stat().st_size:
        args.append(f"--parameters={SCOPE}={build / 'emit' / 'model.irpa'}")
    work = build.parent / f"{model}-run"
    work.mkdir(exist_ok=True)
    for i, array in enumerate(_arrays(built, model, "inputs.npz")):
        np.save(work / f"in{i}.npy", array)
        args.append(f"--input=@{work / f'in{i}.npy'}")
    subprocess.run([*args, f"--output=@{work / 'out0.npy'}"], check=True, capture_output=True)
    return [np.load(work / "out0.npy")]


def test_uint8_model_runs_within_two_quantization_steps(built):
    model = _model(built, "uint8")
    [reference] = _arrays(built, model, "reference.npz")
    [got] = _run_module(built, model)
    # IREE's ABI is signless: the module returns the uint8 codes as int8 bit patterns
    assert got.dtype.itemsize == 1
    assert np.abs(got.view(np.uint8).astype(int) - reference.astype(int)).max() <= QUANT_STEPS
    # and validate reads them back as uint8 (same width, other signedness: the same bits)
    _validated(built, model)


def test_integer_model_with_float_edges_gets_steps_of_the_dequantized_tensor(built):
    model = _model(built, "int8_inside")
    assert np.dtype(built.details["int8_inside"].outputs[0]["dtype"]) == np.float32
    [tolerance] = _capture_info(built, model)["tolerances"]
    # the output int8 tensor the last DEQUANTIZE reads: the same one the int8 file returns
    scale, zero_point = built.details["int8"].outputs[0]["quantization"]
    assert tolerance["atol"] == pytest.approx(QUANT_STEPS * scale)
    assert tolerance["why"] == (f"float output dequantized from int8 quantized with scale "
                                f"{scale:.3g}, zero point {zero_point}: {QUANT_STEPS} "
                                "quantization steps")
    result = _validated(built, model)
    assert result["tolerance_why"] == [tolerance["why"]]


def test_dynamic_range_model_validates_with_a_note(built):
    model = _model(built, "dynamic")
    output = built.details["dynamic"].outputs[0]
    assert np.dtype(output["dtype"]) == np.float32 and output["quantization"][0] == 0
    info = _capture_info(built, model)
    assert any(n.startswith("dynamic-range quantized (integer weights, float activations): "
                            "LiteRT's FULLY_CONNECTED quantize") for n in info["notes"]), info
    # LiteRT's hybrid kernel quantizes its float input to int8 on the fly; IREE does not
    [reference] = _arrays(built, model, "reference.npz")
    [tolerance] = info["tolerances"]
    assert tolerance["atol"] == pytest.approx(QUANT_STEPS * np.abs(reference).max() / 127)
    assert "dynamic-range quantized" in tolerance["why"], tolerance
    result = _validated(built, model)
    assert result["max_abs_error"] <= tolerance["atol"]
    assert result["notes"] == info["notes"]


def test_dynamic_range_model_without_hybrid_ops_keeps_the_target_tolerance(built):
    model = _model(built, "embedding_dynamic")
    info = _capture_info(built, model)
    assert info["tolerances"] is None
    assert "dynamic-range quantized (integer weights, float activations): the weights are " \
        "dequantized before use, so outputs are compared within the target's tolerance" \
        in info["notes"], info
    result = _validated(built, model)
    # the target's atol/rtol, not a per-output one
    assert "tolerance_why" not in result and "atol" not in result["outputs"][0], result
    assert result["max_abs_error"] < result["atol"], result


@pytest.mark.parametrize("content, why", [
    (b"", "the file is empty"),
    (b"hello, a text file named .tflite\n", "The model is not a valid Flatbuffer buffer"),
])
def test_a_file_that_is_no_flatbuffer_is_a_verdict_naming_it(project, tmp_path, content, why):
    path = tmp_path / "text.tflite"
    path.write_bytes(content)
    with pytest.raises(StageError) as err:
        ADAPTER.capture(ModelSpec("text", "tflite", {"model": path}), tmp_path)
    assert str(err.value).startswith(f"{path} is not a TFLite model") and why in str(err.value)
    project.doit("validate", f"model={path}", "target=cpu", check=False)
    capture = next(t for t in project.record() if t["stage"] == "capture")
    assert capture["status"] == "failed" and capture["error"] == str(err.value)
    project.doit("validate", f"model={path}", "target=cpu", check=False)
    again = next(t for t in project.record() if t["stage"] == "capture")
    assert again["status"] == "failed (cached)", again   # remembered: a verdict on the file
