"""Which failures a run remembers (issue 26, item 3), on real frameworks: a framework's own
refusal of its model is a verdict on the stage's inputs, remembered under the stage's key as
a tool's normal non-zero exit is, so the next run runs no stage for it; a timeout, the machine
out of memory, or an exception raised in kiln's own code is no verdict, and runs again.

The doit runs fail at capture (a second or two each: nothing is compiled); the rest call the
framework stages' wording of an exception (stages/frameworks/refusals.py) in-process, on
exceptions the frameworks and kiln raise for real."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pipeline.run.decide import not_a_verdict  # noqa: E402
from pipeline.stage import ModelSpec, StageError  # noqa: E402
from stages.frameworks import get, load_factory, seeded_inputs  # noqa: E402
from stages.frameworks.refusals import framework_refusals  # noqa: E402

ORT_REFUSAL = ("onnxruntime refused the model: NotImplemented: [ONNXRuntimeError] : 9 : "
               "NOT_IMPLEMENTED : Could not find an implementation for Min(13)")


def _min_int16():
    """Min on int16: onnxruntime's CPU provider has no kernel for it (NOT_IMPLEMENTED), the
    same answer on every run; with no test data beside it there is no other reference."""
    graph = helper.make_graph(
        [helper.make_node("Min", ["a", "b"], ["y"])], "min16",
        [helper.make_tensor_value_info(n, TensorProto.INT16, [3]) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.INT16, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def _entry(project, task: str) -> dict:
    return next(t for t in project.record(everything=True) if t["task"] == task)


def _stages_run(project) -> dict[str, str]:
    """The tasks whose stage ran this run (whether it passed or failed)."""
    return {t: s for t, s in project.statuses().items() if s in ("ran", "failed")}


def _float4_case(case_dir: Path) -> None:
    """An ONNX test case (model.onnx, test_data_set_0/) casting float16 to float4: onnxruntime
    has no kernel for it (its output_0.pb is the reference), IREE's ONNX importer no float4
    type (OnnxImportError at import), the same on every run."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT4E2M1)], "cast4",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT4E2M1, [4])])
    data = case_dir / "test_data_set_0"
    data.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]),
              str(case_dir / "model.onnx"))
    x = np.array([0.5, 1.0, -2.0, 6.0], np.float16)
    (data / "input_0.pb").write_bytes(numpy_helper.from_array(x, "x").SerializeToString())
    y = helper.make_tensor("y", TensorProto.FLOAT4E2M1, [4], x.astype(np.float32).tolist())
    (data / "output_0.pb").write_bytes(y.SerializeToString())


def test_framework_refusals_are_remembered_and_the_next_run_runs_no_stage(project, tmp_path):
    """onnxruntime's refusal at capture, IREE's ONNX importer's at import."""
    folder = tmp_path / "suite"
    _float4_case(folder / "cast4")
    onnx.save(_min_int16(), str(folder / "min16.onnx"))
    first = project.doit("validate", f"model={folder}", "target=cpu", check=False)
    capture, imported = _entry(project, "capture:min16"), _entry(project, "import:cast4")
    assert first.returncode != 0 and capture["status"] == imported["status"] == "failed"
    assert capture["error"].startswith(ORT_REFUSAL), capture["error"]
    assert imported["error"] == ("iree.compiler refused the model: OnnxImportError: Unknown ONNX "
                                 "tensor element type: 23"), imported["error"]
    log = (project.root / capture["log"]).read_text()
    assert "failure remembered under its key" in log
    assert "Traceback" in log and "onnxruntime" in log   # where it was raised, for the user

    again = project.doit("validate", f"model={folder}", "target=cpu", check=False)
    assert again.returncode != 0
    for task in (capture, imported):
        assert _entry(project, task["task"])["status"] == "failed (cached)"
        assert _entry(project, task["task"])["error"] == task["error"]
    assert _stages_run(project) == {}, project.statuses()


SLOW_MODEL = '''FRAMEWORK = "onnx"


def build():
    import subprocess
    # a helper the model waits on that does not answer in time: a timeout, no verdict
    subprocess.run(["sleep", "30"], timeout=0.2)
'''


def test_a_timeout_is_not_remembered_and_the_next_run_runs_the_stage_again(project):
    (project.root / "models" / "slow.py").write_text(SLOW_MODEL)
    for _ in range(2):
        project.doit("validate", "model=slow", "target=cpu", check=False)
        capture = _entry(project, "capture:slow")
        assert capture["status"] == "failed", capture
        assert capture["error"].startswith("TimeoutExpired: "), capture["error"]
        log = (project.root / capture["log"]).read_text()
        assert "failure not remembered: TimeoutExpired is no verdict" in log
    assert capture["why"].startswith("its last run failed with this same key, and the cache "
                                     "remembers no failure for it"), capture


MODEL = ModelSpec("m", "onnx", {})


def _raised_in(call, model: ModelSpec = MODEL, framework: str = "onnx") -> BaseException:
    """The exception call() raises, as a framework stage words it."""
    with pytest.raises(BaseException) as raised, framework_refusals(get(framework), model):
        call()
    return raised.value


def _onnxruntime_on_min_int16():
    import onnxruntime
    session = onnxruntime.InferenceSession(_min_int16().SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    session.run(None, {n: np.ones(3, np.int16) for n in "ab"})


def test_a_framework_refusal_is_a_verdict_naming_the_framework_and_its_exception():
    err = _raised_in(_onnxruntime_on_min_int16)
    assert isinstance(err, StageError) and str(err).startswith(ORT_REFUSAL), err
    assert not_a_verdict(err, err.log) is None
    assert "Traceback" in err.log and "onnxruntime_inference_collection.py" in err.log
    assert type(err.__cause__).__name__ == "NotImplemented"


def test_an_exception_raised_in_kilns_own_code_is_kilns_and_no_verdict():
    # (shapes must be a dict: kiln's own code fails on None, a bug's AttributeError)
    err = _raised_in(lambda: seeded_inputs([("x", [2], "float32")], None, 0, "m"))
    assert isinstance(err, StageError), err
    assert str(err).startswith("kiln's own error (a bug): AttributeError: "), err
    assert not_a_verdict(err, err.log) == "raised in kiln's own code: no verdict on the model"
    assert "stages/frameworks/inputs.py" in err.log


def test_the_models_own_code_raising_is_a_verdict_naming_its_file(tmp_path):
    factory = tmp_path / "bad.py"
    factory.write_text("def build():\n    raise ValueError('no such layer: 7')\n")
    model = ModelSpec("bad", "onnx", {"model": factory}, factory=f"{factory}:build")
    err = _raised_in(load_factory(model.factory), model)
    assert isinstance(err, StageError) and not_a_verdict(err, err.log) is None
    assert str(err) == f"the model's own code raised ValueError: no such layer: 7 ({factory}, " \
                       "line 2)", err


@pytest.mark.parametrize("error", [MemoryError(), OSError(28, "No space left on device"),
                                   ModuleNotFoundError("No module named 'onnxscript'")],
                         ids=["MemoryError", "ENOSPC", "missing-package"])
def test_the_machines_failure_stays_no_verdict_wherever_raised(error):
    def failing():
        raise error
    err = _raised_in(failing)
    assert err is error and not_a_verdict(err) is not None


def test_a_framework_out_of_memory_is_no_verdict():
    torch = pytest.importorskip("torch")
    # (4 PiB of weights: torch's own Python code asks its allocator, which refuses)
    err = _raised_in(lambda: torch.nn.Linear(2 ** 25, 2 ** 25), framework="torch")
    assert isinstance(err, StageError) and str(err).startswith("torch refused the model: ")
    assert not_a_verdict(err, err.log).startswith("the machine failed it ("), err
