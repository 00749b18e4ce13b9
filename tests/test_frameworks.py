"""The JAX, TensorFlow, TFLite and ONNX adapters end to end, on real frameworks (no mocks):
each example model validates on llvm-cpu and Vulkan (lavapipe without a GPU), a second run
does nothing, and a rebuild in another directory with its own empty cache gives the same
bytes. A user's model file (.onnx, .tflite, .jaxexport, SavedModel directory) given as
model=PATH builds and validates too.

To stay fast, every installed framework's example is built by ONE doit invocation in one
project copy: the session's run of the `frameworks` matrix (conftest's frameworks_run, whose
report.html test_html reads); the per-framework tests then read that run's record and are
skipped when their framework is not installed."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import Project, copy_project

STAGES = {"capture", "serialize", "import", "legalize", "emit", "lower", "codegen", "validate",
          "pick"}
TARGETS = ("cpu", "vulkan")
# example model -> (framework, modules it needs)
EXAMPLES = {
    "jax_mlp": ("jax", ("jax", "flatbuffers")),
    "tf_mlp": ("tf", ("tensorflow", "iree.tools.tf")),
    "tflite_cnn": ("tflite", ("tensorflow", "ai_edge_litert", "tosa_converter_for_tflite")),
    "onnx_cnn": ("onnx", ("onnx", "onnxruntime")),
}
# validate's result.json carries a timing: compared field by field instead of byte for byte
# outputs that hold timings, and the fields that must still agree between two builds
TIMED = {"validate/result.json": ("passed", "max_abs_error", "max_rel_error", "atol", "rtol"),
         "pick/pick.json": ("variant",)}


def installed(modules) -> bool:
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except ModuleNotFoundError:  # a parent package is missing
        return False


def require(modules) -> None:
    for module in modules:
        pytest.importorskip(module)


def unlike(tasks: list[dict], status: str) -> list[tuple]:
    """(task, status, error or why) of every task whose status is not `status`: what an
    assertion shows, since a record entry printed whole is cut off before the reason."""
    return [(t["task"], t["status"], t.get("error") or t.get("why")) for t in tasks
            if t["status"] != status]


def files_under(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def examples(frameworks_run, tmp_path_factory):
    """Every installed example built on cpu and vulkan (the session's frameworks run), run
    again, and rebuilt elsewhere."""
    models = [m for m, (_, modules) in EXAMPLES.items() if installed(modules)]
    if not models:
        pytest.skip("no framework besides torch is installed (kiln[jax,tf,tflite,onnx])")
    args = ("validate", f"model={','.join(models)}", f"target={','.join(TARGETS)}")
    run = frameworks_run
    assert set(models) <= set(run["models"]) and set(TARGETS) <= set(run["targets"]), run
    first, first_record = run["project"], run["record"]
    first.doit(*args)
    second_record = first.record()
    # timed as the frameworks run was: the same keys are expected
    other = Project(copy_project(tmp_path_factory.mktemp("other") / "elsewhere" / "deeper"),
                    timing="on")
    other.doit(*args)
    return {"first": first, "first_record": first_record, "second_record": second_record,
            "other": other, "other_record": other.record()}


@pytest.mark.parametrize("model", list(EXAMPLES))
def test_example_validates_on_cpu_and_vulkan(examples, model):
    framework, modules = EXAMPLES[model]
    require(modules)
    tasks = [t for t in examples["first_record"] if t["model"] == model]
    assert {t["stage"] for t in tasks} == STAGES
    assert not unlike(tasks, "ran"), unlike(tasks, "ran")
    validates = {t["target"]: t["result"] for t in tasks if t["stage"] == "validate"}
    assert set(validates) == set(TARGETS)
    for target, result in validates.items():
        assert result["passed"], (target, result)
        assert result["max_abs_error"] < result["atol"], (target, result)

    build = examples["first"].root / "build" / model
    # the reference is the framework's own answer on the recorded inputs
    with np.load(build / "capture" / "reference.npz") as ref:
        assert ref.files and all(np.isfinite(ref[k]).all() for k in ref.files)
    legalize = json.loads((build / "legalize" / "legalize.json").read_text())
    # one entry point: no TF variable accessors (global$...), no framework leftovers
    assert legalize["functions"] == [legalize["entry"]], legalize["functions"]
    assert not any(name.startswith("global$") for name in legalize["functions"])
    for target in TARGETS:
        assert (build / target / "codegen" / "module.vmfb").stat().st_size > 1000


def test_a_tf_model_is_judged_by_its_float64_answer(examples):
    """TF runs the SavedModel's frozen graph in float64: capture keeps that answer and TF's
    own f32 error against it, and validate judges by the float64 rule."""
    require(EXAMPLES["tf_mlp"][1])
    captured = json.loads((examples["first"].root / "build" / "tf_mlp" / "capture" /
                           "capture.json").read_text())
    assert captured["f64"]["available"], captured["f64"]
    assert 0 < captured["f64"]["framework_error"][0] < 1e-5, captured["f64"]
    results = [t["result"] for t in examples["first_record"]
               if t["model"] == "tf_mlp" and t["stage"] == "validate"]
    assert results and all(r["rule"] == "f64-noise" and r["factor"] < 8 for r in results), results


def test_a_tf_op_without_a_float64_kernel_leaves_atol_rtol_and_says_which(tmp_path):
    """FusedBatchNormV3 has no double kernel in TF: capture still answers, without float64,
    and says why, naming the op."""
    require(EXAMPLES["tf_mlp"][1])
    import tensorflow as tf

    from pipeline.plan.models import from_path
    from stages import detect
    from stages.frameworks import get

    class Norm(tf.Module):
        def __init__(self):
            self.scale = tf.Variable(np.linspace(0.5, 2, 4, dtype=np.float32))

        @tf.function(input_signature=[tf.TensorSpec([1, 2, 2, 4], tf.float32)])
        def __call__(self, x):
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, self.scale, tf.zeros(4), mean=tf.zeros(4), variance=tf.ones(4),
                is_training=False)
            return y
    tf.saved_model.save(Norm(), str(tmp_path / "norm"))
    out = tmp_path / "capture"
    out.mkdir()
    info = get("tf").capture(from_path(tmp_path / "norm", detect, {}), out)
    assert not info["f64"]["available"]
    assert info["f64"]["why"].startswith("TF cannot run the signature's graph in float64: ")
    assert "(op FusedBatchNormV3)" in info["f64"]["why"], info["f64"]
    with np.load(out / "reference.npz") as reference:
        assert reference["out0"].shape == (1, 2, 2, 4)


@pytest.mark.parametrize("model", list(EXAMPLES))
def test_second_run_is_all_up_to_date(examples, model):
    require(EXAMPLES[model][1])
    tasks = [t for t in examples["second_record"] if t["model"] == model]
    assert len(tasks) == 5 + 4 * len(TARGETS)  # 5 per model, 4 per target (with pick)
    assert not unlike(tasks, "up-to-date"), unlike(tasks, "up-to-date")
    assert all(t["result"]["passed"] for t in tasks if t["stage"] == "validate")


@pytest.mark.parametrize("model", list(EXAMPLES))
def test_rebuild_elsewhere_with_empty_cache_is_byte_identical(examples, model):
    require(EXAMPLES[model][1])
    other_tasks = [t for t in examples["other_record"] if t["model"] == model]
    assert not unlike(other_tasks, "ran"), unlike(other_tasks, "ran")
    # a pick's key holds the timings it chose by: equal elsewhere only where validate's result
    # came from a shared cache (test_remote), not where it was timed again
    keys = {t["task"]: t["key"] for t in examples["first_record"] if t["model"] == model
            and t["stage"] != "pick"}
    assert {t["task"]: t["key"] for t in other_tasks if t["stage"] != "pick"} == keys

    here = examples["first"].root / "build" / model
    there = examples["other"].root / "build" / model
    built = files_under(here)
    assert built == files_under(there)
    assert len(built) >= 5 + 4 * len(TARGETS)
    for rel in built:
        timed = next((fields for end, fields in TIMED.items() if rel.as_posix().endswith(end)), None)
        if timed:
            mine, theirs = (json.loads((d / rel).read_text()) for d in (here, there))
            for field in timed:
                assert mine[field] == theirs[field], (rel, field)
        else:
            assert (here / rel).read_bytes() == (there / rel).read_bytes(), rel


# --- a user's model files ---------------------------------------------------------------

def _onnx_file(path: Path, batch="N") -> None:
    """An MLP with a dynamic batch dimension at opset 13 (import upgrades it to 17)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(7)
    w1, b1 = rng.standard_normal((16, 32)).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    w2, b2 = rng.standard_normal((32, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["features", "w1", "b1"], ["h"]),
             helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("Gemm", ["t", "w2", "b2"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["probs"], axis=-1)]
    graph = helper.make_graph(
        nodes, "user_mlp", [helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 4])],
        initializer=[numpy_helper.from_array(a, n) for a, n in
                     [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2")]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _tflite_file(path: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    rng = np.random.default_rng(8)
    kernel = tf.constant(rng.standard_normal((3, 3, 2, 3)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 6, 6, 2], tf.float32)])
    def conv(image):
        return tf.nn.sigmoid(tf.nn.conv2d(image, kernel, 1, "SAME"))

    converter = tf.lite.TFLiteConverter.from_concrete_functions([conv.get_concrete_function()])
    path.write_bytes(converter.convert())


def _jax_file(path: Path) -> None:
    os.environ["JAX_TRACEBACK_IN_LOCATIONS_LIMIT"] = "0"
    import jax
    import jax.numpy as jnp
    w = np.random.default_rng(9).standard_normal((5, 3)).astype(np.float32)
    exported = jax.export.export(jax.jit(lambda x, y: (jnp.tanh(x @ w), y * 2)))(
        jax.ShapeDtypeStruct((2, 5), np.float32), jax.ShapeDtypeStruct((4,), np.int32))
    path.write_bytes(bytes(exported.serialize()))


def _savedmodel_dir(path: Path) -> None:
    """Two inputs and four outputs whose keys TF's importer reorders (by a hash of the key);
    the batch dimension is dynamic, as Keras's model.export() leaves it, and one output is
    reshaped by it (a tf.Reshape IREE's TF importer converts only once the shape is static)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    class Pair(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(np.random.default_rng(10).standard_normal((4, 4)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="zed"),
                                      tf.TensorSpec([None, 4], tf.float32, name="alpha")])
        def __call__(self, zed, alpha):
            return {"b_sum": zed + alpha, "a_diff": zed @ self.w - alpha, "c": tf.nn.relu(zed) * 3,
                    "d": tf.reshape(alpha, [tf.shape(alpha)[0], 2, 2])}

    module = Pair()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__})


USER_FILES = {  # file name -> (writer, modules it needs to write and to build it)
    "user_mlp.onnx": (_onnx_file, ("onnx", "onnxruntime")),
    "user_conv.tflite": (_tflite_file, ("tensorflow", "ai_edge_litert", "tosa_converter_for_tflite")),
    "user_fn.jaxexport": (_jax_file, ("jax", "flatbuffers")),
    "user_savedmodel": (_savedmodel_dir, ("tensorflow", "iree.tools.tf")),
}


def test_user_model_files_build_and_validate_on_cpu(project, tmp_path):
    """model=PATH for each installed framework's file format; the ONNX file's dynamic batch
    is sized with shapes=, and the same file without it takes batch 1 and says so, as the
    SavedModel's does."""
    if not (installed(USER_FILES["user_mlp.onnx"][1]) or installed(USER_FILES["user_conv.tflite"][1])):
        pytest.skip("needs kiln[onnx] or kiln[tflite]")
    files = tmp_path / "user models"  # a space: paths must survive the command line
    files.mkdir()
    paths = []
    for name, (writer, modules) in USER_FILES.items():
        if installed(modules):
            writer(files / name)
            paths.append(files / name)
    proc = project.doit("validate", f"model={','.join(map(str, paths))}", "target=cpu",
                        "shapes=features:3x16", check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    by_task = project.statuses()
    for path in paths:
        task = f"validate:{path.name}@cpu"
        assert by_task.get(task) in ("ran", "cached"), (task, by_task)
    for t in project.record():
        if t["stage"] == "validate":
            assert t["result"]["passed"] and t["result"]["max_abs_error"] < t["result"]["atol"], t
    if installed(USER_FILES["user_mlp.onnx"][1]):
        inputs = np.load(project.root / "build" / "user_mlp.onnx" / "capture" / "inputs.npz")
        assert inputs["arg0"].shape == (3, 16)
    if installed(USER_FILES["user_fn.jaxexport"][1]):
        with np.load(project.root / "build" / "user_fn.jaxexport" / "capture" / "reference.npz") as ref:
            assert [ref[k].shape for k in sorted(ref.files)] == [(2, 3), (4,)]
    if installed(USER_FILES["user_savedmodel"][1]):   # its dynamic batch is 1, with a note
        with np.load(project.root / "build" / "user_savedmodel" / "capture" / "inputs.npz") as given:
            assert [given[k].shape for k in sorted(given.files)] == [(1, 4), (1, 4)]
        validate = next(t for t in project.record() if t["task"] == "validate:user_savedmodel@cpu")
        assert "input 'zed': dynamic batch dimension set to 1; give shapes=zed:8x4 to choose" \
            in validate["result"]["notes"], validate["result"]

    # without shapes=, a symbolic batch dimension is 1, with a note in the record
    if installed(USER_FILES["user_mlp.onnx"][1]):
        project.doit("validate", f"model={files / 'user_mlp.onnx'}", "target=cpu")
        validate = next(t for t in project.record() if t["stage"] == "validate")
        assert validate["result"]["passed"]
        assert any("symbolic batch dimension 'N' set to 1" in note
                   for note in validate["result"]["notes"]), validate["result"]

