"""Users' real ONNX files, end to end on llvm-cpu: external data, symbolic dimensions, and the
ONNX test-data convention (test_data_set_0/input_*.pb, output_*.pb).

To stay fast, one module-scoped project runs ONE `doit validate` over every file (some are
meant to fail at capture), then a second run after changing only the external weights; the
tests read those runs' records. Checks that need no compiler call the adapter in-process."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from conftest import Project, copy_project

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pipeline.plan.layout import Layout  # noqa: E402
from pipeline.stage import (  # noqa: E402
    ConfigError,  # noqa: E402
    ModelSpec,
    Node,
    StageError,
)
from stages.frameworks import onnx_fw  # noqa: E402
from stages.frameworks.onnx_fw import ADAPTER  # noqa: E402

# --- the model files ---------------------------------------------------------------------

def mlp_model(batch, features: int, seed: int):
    """features -> tanh -> 4 scores, opset 13 (import upgrades it); (model, w1, b1)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((features, 8)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    w2 = rng.standard_normal((8, 4)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
             helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("MatMul", ["t", "w2"], ["y"])]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
        initializer=[numpy_helper.from_array(a, n)
                     for a, n in [(w1, "w1"), (b1, "b1"), (w2, "w2")]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model, (w1, b1, w2)


def _mlp_answer(x, weights):
    w1, b1, w2 = weights
    return (np.tanh(x @ w1 + b1) @ w2).astype(np.float32)


def _sequence_model():
    """x [B, L, 8] and mask [B, L]: two inputs sharing two symbolic dimensions."""
    w = np.random.default_rng(3).standard_normal((8, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Unsqueeze", ["mask", "axes"], ["m"]),
             helper.make_node("Mul", ["h", "m"], ["y"])]
    graph = helper.make_graph(
        nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "L", 8]),
                       helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["B", "L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "L", 4])],
        initializer=[numpy_helper.from_array(w, "w"),
                     numpy_helper.from_array(np.array([2], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def _unique_model():
    """Tanh then Unique: IREE takes Tanh; on Unique its ONNX conversion crashes (3.13) or
    fails, with no diagnostic that names the op."""
    nodes = [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Unique", ["t"], ["y"])]
    graph = helper.make_graph(
        nodes, "uniq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def write_external(model, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)


def _write_test_set(directory: Path, inputs: dict, outputs: list, named: bool = True) -> None:
    directory.mkdir(parents=True)
    for i, (name, array) in enumerate(inputs.items()):
        tensor = numpy_helper.from_array(array, name if named else "")
        (directory / f"input_{i}.pb").write_bytes(tensor.SerializeToString())
    for i, array in enumerate(outputs):
        tensor = numpy_helper.from_array(array)
        (directory / f"output_{i}.pb").write_bytes(tensor.SerializeToString())


def _write_files(files: Path) -> SimpleNamespace:
    paths = SimpleNamespace(external=files / "external" / "ext_mlp.onnx",
                            test_data=files / "testdata" / "td_mlp.onnx",
                            wrong_data=files / "wrongdata" / "td_wrong.onnx",
                            sequence=files / "seq" / "seq.onnx",
                            plain=files / "plain" / "plain.onnx",
                            unsupported=files / "unsupported" / "uniq.onnx")
    write_external(mlp_model("N", 16, seed=1)[0], paths.external)

    model, weights = mlp_model("N", 6, seed=2)
    x = np.random.default_rng(5).standard_normal((3, 6)).astype(np.float32)
    for path, shift in ((paths.test_data, 0.0), (paths.wrong_data, 0.5)):
        path.parent.mkdir(parents=True)
        onnx.save(model, str(path))
        _write_test_set(path.parent / "test_data_set_0", {"x": x},
                        [_mlp_answer(x, weights) + np.float32(shift)], named=shift == 0.0)
    # a second set, never read (only the first is used): a different batch size
    _write_test_set(paths.test_data.parent / "test_data_set_1", {"x": x[:1]},
                    [_mlp_answer(x[:1], weights)])

    paths.sequence.parent.mkdir(parents=True)
    onnx.save(_sequence_model(), str(paths.sequence))
    paths.plain.parent.mkdir(parents=True)
    onnx.save(mlp_model(2, 16, seed=4)[0], str(paths.plain))
    paths.unsupported.parent.mkdir(parents=True)
    onnx.save(_unique_model(), str(paths.unsupported))
    return paths


# --- one project, one build of every file, then a weights-only change ----------------------

def _capture_dir(project: Project, model: str) -> Path:
    return project.root / "build" / model / "capture"


def _key_sources(project: Project, model: str) -> set[str]:
    """The files capture's key was computed from (its task entry keeps the key's parts)."""
    root = project.root
    entry = Layout(root, root / "build", root / "cache").entry_file(Node("capture", model, None))
    return set(json.loads(entry.read_text())["fingerprint"]["inputs"])


def _snapshot(project: Project, models: list[str]) -> dict:
    """What later runs overwrite: each model's capture.json, inputs, reference, model.onnx
    bytes, and the sources in its capture key."""
    taken = {}
    for model in models:
        capture = _capture_dir(project, model)
        if (capture / "capture.json").is_file():
            with np.load(capture / "inputs.npz") as inputs, \
                    np.load(capture / "reference.npz") as reference:
                taken[model] = {"info": json.loads((capture / "capture.json").read_text()),
                                "inputs": [inputs[k] for k in sorted(inputs.files)],
                                "reference": [reference[k] for k in sorted(reference.files)],
                                "model.onnx": (capture / "model.onnx").read_bytes(),
                                "key sources": _key_sources(project, model)}
    return taken


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx_files")
    project = Project(copy_project(root / "proj"))
    paths = _write_files(root / "user models")  # a space: paths must survive the command line
    # the same sequence file once more, sized from the config (a `file:` model)
    config = yaml.safe_load((project.root / "targets.yaml").read_text())
    config.setdefault("models", {})["seq_sized"] = {"file": str(paths.sequence),
                                                    "shapes": {"x": [2, 5, 8]}}
    (project.root / "targets.yaml").write_text(yaml.safe_dump(config))
    files = [paths.external, paths.test_data, paths.wrong_data, paths.sequence, paths.plain,
             paths.unsupported]
    proc = project.doit("validate", f"model={','.join(map(str, files))},seq_sized",
                        "target=cpu", check=False)
    first = {t["task"]: t for t in project.record()}
    snapshot = _snapshot(project, [p.name for p in files] + ["seq_sized"])

    # only the values in the external weights file change: same size, same graph
    weights = paths.external.parent / "weights.bin"
    values = np.frombuffer(weights.read_bytes(), np.float32)
    weights.write_bytes((values * np.float32(-0.5)).tobytes())
    project.doit("validate", f"model={paths.external}", "target=cpu")
    second = {t["task"]: t for t in project.record()}
    return SimpleNamespace(project=project, paths=paths, proc=proc, first=first, second=second,
                           snapshot=snapshot, after=_snapshot(project, [paths.external.name]))


def _passed(record: dict, model: str) -> None:
    for stage in ("capture", "serialize", "import", "legalize", "emit"):
        entry = record.get(f"{stage}:{model}")
        assert entry and entry["status"] in ("ran", "cached", "up-to-date"), (model, stage, entry)
    validate = record[f"validate:{model}@cpu"]
    assert validate["status"] in ("ran", "cached"), validate
    assert validate["result"]["passed"], validate["result"]


# --- 1. external data ------------------------------------------------------------------

def test_external_data_model_validates_from_a_self_contained_capture(built):
    model = built.paths.external.name
    _passed(built.first, model)
    sources = built.snapshot[model]["key sources"]
    assert "source:data:weights.bin" in sources, sources
    # capture's model.onnx is all later stages see: the weights inlined, the batch static,
    # written deterministically
    captured = onnx.load_model_from_string(built.snapshot[model]["model.onnx"])
    assert all(t.data_location == TensorProto.DEFAULT and not t.external_data
               for t in captured.graph.initializer)
    assert {t.name for t in captured.graph.initializer} == {"w1", "b1", "w2"}
    dims = [d.dim_value for d in captured.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 16]
    assert captured.SerializeToString(deterministic=True) == built.snapshot[model]["model.onnx"]


def test_changing_only_the_external_weights_reruns_capture(built):
    model = built.paths.external.name
    capture = built.second[f"capture:{model}"]
    assert capture["status"] == "ran", capture
    assert "source:data:weights.bin" in capture["why"], capture["why"]
    assert capture["key"] != built.first[f"capture:{model}"]["key"]
    _passed(built.second, model)
    before, after = built.snapshot[model]["reference"][0], built.after[model]["reference"][0]
    assert not np.allclose(before, after), "the new weights must change the answer"


# --- 2. symbolic dimensions --------------------------------------------------------------

def test_symbolic_batch_dimension_defaults_to_one_with_a_note(built):
    taken = built.snapshot[built.paths.external.name]
    assert taken["inputs"][0].shape == (1, 16)
    notes = taken["info"]["notes"]
    assert any("input 'x': symbolic batch dimension 'N' set to 1" in n and "shapes=x:8x16" in n
               for n in notes), notes


def test_other_symbolic_dimensions_fail_naming_each_with_the_shapes_line(built):
    capture = built.first[f"capture:{built.paths.sequence.name}"]
    assert capture["status"] == "failed", capture
    error = capture["error"]
    assert "input 'x' dimension 1 'L'" in error and "input 'mask' dimension 1 'L'" in error, error
    assert 'shapes="x:1xLx8;mask:1xL"' in error, error
    assert f"validate:{built.paths.sequence.name}@cpu" not in built.first or \
        built.first[f"validate:{built.paths.sequence.name}@cpu"]["status"] != "ran"


def test_shapes_size_every_input_sharing_a_symbolic_name(built):
    _passed(built.first, "seq_sized")
    taken = built.snapshot["seq_sized"]
    assert [a.shape for a in taken["inputs"]] == [(2, 5, 8), (2, 5)]
    assert any("input 'mask'" in n and "'L' set to 5" in n for n in taken["info"]["notes"])
    # import sees static shapes: the inputs fixed, the output inferred from them
    captured = onnx.load_model_from_string(taken["model.onnx"])
    shapes = [[d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*captured.graph.input, *captured.graph.output)]
    assert shapes == [[2, 5, 8], [2, 5], [2, 5, 4]]


# --- 3. the ONNX test-data convention ----------------------------------------------------

def test_test_data_set_gives_the_inputs_and_checks_onnxruntime(built):
    model = built.paths.test_data.name
    _passed(built.first, model)
    taken = built.snapshot[model]
    given = numpy_helper.to_array(onnx.load_tensor(
        str(built.paths.test_data.parent / "test_data_set_0" / "input_0.pb")))
    np.testing.assert_array_equal(taken["inputs"][0], given)
    notes = taken["info"]["notes"]
    assert any(n.startswith("checked onnxruntime against test_data_set_0/output_*.pb (max abs err")
               for n in notes), notes
    assert any("only test_data_set_0 is used" in n for n in notes), notes
    assert not any("batch" in n for n in notes), notes  # the test data sized it
    sources = built.snapshot[model]["key sources"]
    assert {"source:test_data:test_data_set_0/input_0.pb",
            "source:test_data:test_data_set_0/output_0.pb"} <= set(sources), sources
    assert not any("test_data_set_1" in s for s in sources), sources


def test_test_data_outputs_are_compared_with_too(built):
    result = built.first[f"validate:{built.paths.test_data.name}@cpu"]["result"]
    assert result["checked"] == "against onnxruntime and test_data_set_0/output_*.pb", result
    assert result["expected"]["from"] == "test_data_set_0/output_*.pb", result
    assert result["expected"]["passed"] and len(result["expected"]["outputs"]) == 1, result


def test_test_data_output_that_onnxruntime_disagrees_with_is_the_reference_alone(built):
    """The model's own expected outputs are what every target is compared with: where
    onnxruntime disagrees with them, with them alone (a note says so), so a model whose test
    data belongs to another version of it fails at validate, naming the test data."""
    name = built.paths.wrong_data.name
    assert built.first[f"capture:{name}"]["status"] == "ran", built.first[f"capture:{name}"]
    notes = built.snapshot[name]["info"]["notes"]
    assert any(n.startswith("onnxruntime disagrees with test_data_set_0/output_0.pb: max abs "
                            "err 0.5") for n in notes), notes
    validate = built.first[f"validate:{name}@cpu"]
    assert validate["status"] == "failed", validate
    assert validate["result"]["checked"] == "against test_data_set_0/output_*.pb alone"
    assert validate["result"]["max_abs_error"] > 0.4, validate["result"]


def test_user_inputs_win_over_the_test_data(built, tmp_path):
    x = np.full((2, 6), 0.25, np.float32)
    np.savez(tmp_path / "mine.npz", x=x)
    spec = ModelSpec("td", "onnx", {"model": built.paths.test_data,
                                    "inputs": tmp_path / "mine.npz"})
    info = ADAPTER.capture(spec, tmp_path)
    with np.load(tmp_path / "inputs.npz") as inputs:
        np.testing.assert_array_equal(inputs["arg0"], x)
    assert info["notes"] == []


# --- 4. plain files keep working --------------------------------------------------------

def test_plain_static_file_validates_without_notes(built):
    model = built.paths.plain.name
    _passed(built.first, model)
    assert built.snapshot[model]["info"]["notes"] == []
    assert built.snapshot[model]["key sources"] == {"source:model"}


# --- 5. an op IREE cannot take ---------------------------------------------------------

def test_an_op_iree_cannot_legalize_is_named(built):
    legalize = built.first[f"legalize:{built.paths.unsupported.name}"]
    assert legalize["status"] == "failed", legalize
    error = legalize["error"]
    assert "ops IREE cannot legalize: onnx.Unique" in error, error
    assert "onnx.Tanh" not in error, error


# --- companions: what enters the key, what is refused ------------------------------------

def _with_location(directory: Path, location: str) -> Path:
    """A model whose one weight claims to live at `location`."""
    model, _ = mlp_model(1, 4, seed=6)
    for tensor in model.graph.initializer:
        if tensor.name == "w1":
            onnx.external_data_helper.set_external_data(tensor, location)
            tensor.ClearField("raw_data")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "net.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_companions_name_external_data_and_the_first_test_data_set(built):
    assert ADAPTER.companions(built.paths.external) == {
        "data:weights.bin": built.paths.external.parent / "weights.bin"}
    data_dir = built.paths.test_data.parent
    assert ADAPTER.companions(built.paths.test_data) == {
        "test_data:test_data_set_0/input_0.pb": data_dir / "test_data_set_0" / "input_0.pb",
        "test_data:test_data_set_0/output_0.pb": data_dir / "test_data_set_0" / "output_0.pb"}


@pytest.mark.parametrize("location", ["../weights.bin", "sub/../../weights.bin",
                                      "/etc/passwd"])
def test_locations_outside_the_model_directory_are_refused(tmp_path, location):
    path = _with_location(tmp_path / "model", location)
    with pytest.raises(ConfigError, match="not a file beside the model"):
        ADAPTER.companions(path)
    with pytest.raises(StageError, match="not a file beside the model"):  # and at capture
        ADAPTER.capture(ModelSpec("net", "onnx", {"model": path}), tmp_path)


def test_only_a_file_that_may_keep_data_outside_is_parsed_for_it(tmp_path):
    """Planning a suite reads no model's protobuf (nor imports onnx) where none of its bytes
    can say that a tensor lives in another file."""
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(mlp_model(1, 4, seed=6)[0].SerializeToString())
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert not onnx_fw._may_keep_data_outside(plain)
    assert onnx_fw._may_keep_data_outside(_with_location(tmp_path / "model", "weights.bin"))
    assert onnx_fw._may_keep_data_outside(tmp_path / "empty.onnx")   # (capture names it)


def test_a_missing_data_file_is_a_clear_error(tmp_path):
    path = _with_location(tmp_path / "model", "weights.bin")
    with pytest.raises(ConfigError, match="keeps its data in 'weights.bin', which is not in"):
        ADAPTER.companions(path)


def test_doit_stops_at_a_refused_location_with_the_reason(built, tmp_path):
    path = _with_location(tmp_path / "escaping", "../weights.bin")
    proc = built.project.doit("validate", f"model={path}", "target=cpu", check=False)
    assert proc.returncode != 0
    assert "kiln: model" in proc.stderr and "not a file beside the model" in proc.stderr, \
        proc.stderr[-2000:]


def test_a_float64_answer_where_onnxruntime_lacks_a_kernel_and_gather_elements_is_narrower():
    """BERT-base's and RoBERTa's ONNX exports fell back to atol/rtol: onnxruntime has no
    float64 Erf, and onnx's reference evaluator then failed on GatherElements whose indices
    are narrower than its data (position ids: data 1x64, indices 1x16), which ONNX allows;
    its Erf rounds to float32 (the answer must be float64's to 1e-12)."""
    from stages.frameworks.base import Traced
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])
    table = numpy_helper.from_array(np.linspace(-2, 2, 64, dtype=np.float32).reshape(1, 64), "table")
    ids = numpy_helper.from_array(np.arange(2, 18, dtype=np.int64).reshape(1, 16), "ids")
    graph = helper.make_graph(
        [helper.make_node("GatherElements", ["table", "ids"], ["picked"], axis=1),
         helper.make_node("Add", ["x", "picked"], ["summed"]),
         helper.make_node("Erf", ["summed"], ["y"])],
        "narrow", [x], [y], [table, ids])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    inputs = [np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)]
    traced = Traced(artifact=model.SerializeToString(), inputs=inputs, reference=[])
    (answer,) = ADAPTER.reference64(ModelSpec("narrow", "onnx", {}), traced)
    from math import erf
    table64 = np.linspace(-2, 2, 64, dtype=np.float32).astype(np.float64).reshape(1, 64)
    expected = [erf(v) for v in (inputs[0].astype(np.float64) + table64[:, 2:18]).ravel()]
    assert answer.dtype == np.float64
    np.testing.assert_allclose(answer.ravel(), expected, rtol=1e-12, atol=1e-14)


def test_an_empty_file_is_a_verdict_naming_it(project, tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(StageError, match=f"{empty} is not an ONNX model: the file is empty"):
        ADAPTER.capture(ModelSpec("empty", "onnx", {"model": empty}), tmp_path)
    proc = project.doit("validate", f"model={empty}", "target=cpu", check=False)
    assert proc.returncode != 0
    capture = next(t for t in project.record() if t["stage"] == "capture")
    assert capture["status"] == "failed" and capture["error"].startswith(f"{empty} is not an")
    project.doit("validate", f"model={empty}", "target=cpu", check=False)
    again = next(t for t in project.record() if t["stage"] == "capture")
    assert again["status"] == "failed (cached)", again   # remembered: a verdict on the file
