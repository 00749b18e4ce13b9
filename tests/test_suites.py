"""Suites from a folder (issue 17, item 1): model=DIR and a matrix's `suite: DIR` take every
model under a folder, each case named by its own folder (ONNX's test layout,
<case>/model.onnx; <case>/model/ as a SavedModel) or its file's stem, and compared with its
own expected outputs.

The planning tests make the plan in-process with the stages' real hooks wrapped to count
what they are asked (nothing is compiled). ONE `doit validate ... timing=off` runs a handful
of ONNX's own node test cases, written from the installed onnx package in ONNX's layout."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import Project, copy_project

import stages
from pipeline.plan.options import Options
from pipeline.plan.tasks import make_plan, task_specs
from pipeline.stage import ConfigError

CONFIG = """targets:
  cpu: {backend: llvm-cpu, arch: host}
matrices:
  default: {models: [mlp], targets: [cpu]}
"""


class Counted:
    """The stages' detect and companions hooks, counting the paths they are asked about."""

    def __init__(self):
        self.asked: list[tuple[str, str]] = []

    def detect(self, path):
        self.asked.append(("detect", str(path)))
        return stages.detect(path)

    def companions(self, framework, path):
        self.asked.append(("companions", str(path)))
        return stages.companions(framework, path)


def plan(root: Path, hooks: Counted | None = None, config: str = CONFIG, **variables):
    """make_plan in a project at root (targets.yaml, models/mlp.py), as one doit process would."""
    hooks = hooks or Counted()
    root.mkdir(parents=True, exist_ok=True)
    (root / "targets.yaml").write_text(config)
    (root / "models").mkdir(exist_ok=True)
    (root / "models" / "mlp.py").write_text("FRAMEWORK = 'torch'\n\ndef build():\n    pass\n")
    return make_plan(Options.parse({"target": "cpu", **variables}), stages.pipeline(),
                     hooks.detect, stages.resolve_target, [], root=root,
                     companions=hooks.companions)


def models_of(made) -> dict[str, str]:
    return {d["model"].name: d["model"].framework for _, d in made.graph.nodes(data=True)}


def write(path: Path, data: bytes = b"not parsed at plan time") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def suite(tmp_path) -> Path:
    """A folder as users bring them: ONNX's layout, loose files, a SavedModel, a hidden folder."""
    folder = tmp_path / "suite"
    write(folder / "test_relu" / "model.onnx")
    write(folder / "test_relu" / "test_data_set_0" / "input_0.pb")
    write(folder / "nested" / "deeper" / "test_add" / "model.onnx")
    write(folder / "zoo" / "net-v1.2.tflite")
    write(folder / "zoo" / "my net.mlir", b"func.func @main() { return }\n")
    write(folder / "zoo" / "notes.txt")
    write(folder / "tf_model" / "saved_model.pb")
    write(folder / "tf_model" / "variables" / "model.onnx")   # inside a model: not a case
    write(folder / ".cache" / "model.onnx")                    # hidden: not a case
    write(folder / "logs.onnx")                                # a name build/ uses
    return folder


def test_every_model_under_a_folder_is_a_case_named_by_its_folder_or_stem(tmp_path, suite):
    made = plan(tmp_path / "proj", model=str(suite))
    assert models_of(made) == {"test_relu": "onnx", "test_add": "onnx", "net-v1.2": "tflite",
                               "my_net": "mlir", "tf_model": "tf", "logs_": "onnx"}
    relu = next(d["model"] for _, d in made.graph.nodes(data=True)
                if d["model"].name == "test_relu")
    assert relu.sources == {"model": suite / "test_relu" / "model.onnx",
                            "test_data:test_data_set_0/input_0.pb":
                                suite / "test_relu" / "test_data_set_0" / "input_0.pb"}


def test_a_second_plan_of_the_folder_asks_no_hook_and_a_new_case_only_its_own(tmp_path, suite):
    hooks = Counted()
    plan(tmp_path / "proj", hooks, model=str(suite))
    assert ("companions", str(suite / "test_relu" / "model.onnx")) in hooks.asked
    hooks.asked.clear()
    plan(tmp_path / "proj", hooks, model=str(suite))   # a new process: a fresh facts memo
    assert hooks.asked == []
    # (a model is asked again when a file appears beside it: nested/ holds none)
    write(suite / "nested" / "test_new" / "model.onnx")
    made = plan(tmp_path / "proj", hooks, model=str(suite))
    assert "test_new" in models_of(made)
    assert [a for a in hooks.asked if a[0] == "companions"] == \
        [("companions", str(suite / "nested" / "test_new" / "model.onnx"))]
    # the plan memo watches every folder the scan looked in
    assert suite / "nested" / "test_new" in made.listed and suite / "zoo" in made.listed


def test_task_specs_are_what_json_reads_back(tmp_path, suite):
    """The plan memo keeps the specs as they are (pipeline.plan.memo.save): a tuple there would
    be a list only in a run made from JSON."""
    specs = task_specs(plan(tmp_path / "proj", model=str(suite)))
    assert json.loads(json.dumps(specs)) == specs
    # and of JSON's own types, which marshal writes as they are (a StrEnum, equal to its
    # string above, would send every plan through the slow round trip)
    import marshal
    assert marshal.loads(marshal.dumps(specs)) == specs


def test_a_savedmodel_directory_named_model_is_named_by_its_folder(tmp_path, suite):
    """<case>/model/ as a SavedModel, like <case>/model.onnx: the case is <case> (a model zoo
    writes one folder per model); a SavedModel under another name keeps its own."""
    write(suite / "keras_net" / "model" / "saved_model.pb")
    write(suite / "keras_net" / "model" / "variables" / "model.onnx")   # inside: not a case
    write(suite / "other" / "model.v2" / "saved_model.pb")
    made = plan(tmp_path / "proj", model=str(suite))
    assert models_of(made)["keras_net"] == "tf" and models_of(made)["model.v2"] == "tf"
    assert "model" not in models_of(made)


def test_two_cases_of_one_name_are_an_error_naming_both(tmp_path, suite):
    write(suite / "zoo" / "test_relu.onnx")
    with pytest.raises(ConfigError) as err:
        plan(tmp_path / "proj", model=str(suite))
    message = str(err.value)
    assert f"model={suite}: " in message and "would both be named 'test_relu'" in message
    assert str(suite / "test_relu" / "model.onnx") in message
    assert str(suite / "zoo" / "test_relu.onnx") in message


def test_a_folder_without_a_model_is_an_error_naming_it(tmp_path):
    empty = tmp_path / "empty"
    write(empty / "readme.txt")
    with pytest.raises(ConfigError, match=f"model={re.escape(str(empty))}: no model in "
                                          f"{re.escape(str(empty))}"):
        plan(tmp_path / "proj", model=str(empty))


def test_a_matrix_suite_beside_its_models(tmp_path, suite):
    """`suite:` is relative to the config's directory; its cases join the matrix's models,
    can be selected by name, and one named like a selected model is an error."""
    root = tmp_path / "proj"
    config = CONFIG + f"  ops: {{models: [mlp], suite: ../{suite.name}, targets: [cpu]}}\n"
    assert set(models_of(plan(root, config=config, matrix="ops"))) == \
        {"mlp", "test_relu", "test_add", "net-v1.2", "my_net", "tf_model", "logs_"}
    assert set(models_of(plan(root, config=config, matrix="ops", model="test_add,mlp"))) == \
        {"test_add", "mlp"}
    assert set(models_of(plan(root, config=config))) == {"mlp"}   # the default matrix
    write(suite / "mlp.onnx")
    with pytest.raises(ConfigError, match="two selected models are named 'mlp'"):
        plan(root, config=config, matrix="ops")
    with pytest.raises(ConfigError, match=r"targets.yaml:5: matrices.ops.suite: .*/proj/empty "
                                          "is not a folder"):
        plan(root, config=CONFIG + "  ops: {suite: empty, targets: [cpu]}\n", matrix="ops")


# --- ONNX's own node test cases, in one doit run ----------------------------------------

NODE_CASES = {
    "test_abs": "a plain float op",
    "test_range_float_type_positive_delta": "0-d inputs whose imports IREE folds away",
    "test_clip_default_int8_max": "an int8 0-d input after an optional input left empty",
    "test_dropout_default_mask": "an input returned as it is (no hal.tensor.import)",
    "test_min_int16": "onnxruntime cannot run it (NOT_IMPLEMENTED)",
    "test_castlike_BFLOAT16_to_FLOAT": "onnxruntime cannot take its bfloat16 input",
    "test_mvn": "onnx's strict check fails on the body it defines for the op",
    # float64 at the entry: iree-compile's default f64->f32 demotion broke them at run
    # ("buffer view byte length 8 exceeds backing buffer byte length 4"); legalize keeps f64
    "test_castlike_FLOAT_to_DOUBLE": "an f64 output of an f32 input",
    "test_einsum_batch_matmul": "f64 inputs and output",
}
FEWER = "dropout_mask_not_expected"   # test_dropout_default_mask without its output_1.pb
# the cases onnxruntime cannot run: their output_*.pb alone are the reference
ALONE = {"test_min_int16": "NOT_IMPLEMENTED",
         "test_castlike_BFLOAT16_to_FLOAT": "Numpy_type 256 can't be converted to MLDataType"}


@pytest.fixture(scope="module")
def node_suite(tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx_node_cases import write_cases
    root = tmp_path_factory.mktemp("node_suite")
    folder = root / "onnx node cases"   # a space: the path must survive the command line
    write_cases(folder, list(NODE_CASES))
    fewer = folder / FEWER
    write_cases(root / "fewer", ["test_dropout_default_mask"])
    (root / "fewer" / "test_dropout_default_mask").rename(fewer)
    (fewer / "test_data_set_0" / "output_1.pb").unlink()
    project = Project(copy_project(root / "proj"))
    proc = project.doit("validate", f"model={folder}", "target=cpu", "timing=off", check=False)
    return {"proc": proc, "record": {t["task"]: t for t in project.record()},
            "build": project.root / "build", "project": project, "folder": folder}


def test_node_cases_validate_each_named_by_its_folder(node_suite):
    record = node_suite["record"]
    cases = {*NODE_CASES, FEWER}
    assert {t["model"] for t in record.values()} == cases
    assert node_suite["proc"].returncode == 0, node_suite["proc"].stdout[-3000:]
    for case in cases:
        validate = record[f"validate:{case}@cpu"]
        assert validate["status"] == "ran" and validate["result"]["passed"], (case, validate)


def test_each_case_is_compared_with_its_own_expected_outputs(node_suite):
    record = node_suite["record"]
    for case in set(NODE_CASES) - set(ALONE):
        result = record[f"validate:{case}@cpu"]["result"]
        assert result["checked"] == "against onnxruntime and test_data_set_0/output_*.pb"
        assert result["expected"]["passed"], (case, result)
        assert len(result["expected"]["outputs"]) == len(result["outputs"]), (case, result)
        # a case's own answer is its verdict, within atol/rtol: no float64 run of every case
        assert result["rule"] == "atol/rtol", (case, result)
        assert "brings its own expected outputs" in result["rule_why"], (case, result)
    # where onnxruntime cannot run the case, the expected outputs alone, and the record says so
    for case, refusal in ALONE.items():
        alone = record[f"validate:{case}@cpu"]["result"]
        assert alone["checked"] == "against test_data_set_0/output_*.pb alone", alone
        notes = json.loads((node_suite["build"] / case / "capture" / "capture.json")
                           .read_text())["notes"]
        assert any(n.startswith("onnxruntime cannot run the model (") and refusal in n
                   and n.endswith("the expected outputs in test_data_set_0/output_*.pb alone "
                                  "are the reference") for n in notes), notes
        assert "expected" not in alone and alone["notes"] == notes


def test_fewer_expected_outputs_compare_the_first_ones(node_suite):
    result = node_suite["record"][f"validate:{FEWER}@cpu"]["result"]
    assert len(result["outputs"]) == 2 and len(result["expected"]["outputs"]) == 1, result
    assert any("test_data_set_0/output_*.pb gives 1 of the model's 2 outputs" in n
               for n in result["notes"]), result["notes"]


def test_the_second_run_of_the_suite_runs_no_stage(node_suite):
    """Every case's outcome, bfloat16 input included, is settled: the run after is a no-op."""
    again = node_suite["project"].doit("validate", f"model={node_suite['folder']}",
                                       "target=cpu", "timing=off", check=False)
    statuses = node_suite["project"].statuses()
    assert again.returncode == 0 and set(statuses.values()) == {"up-to-date"}, statuses
