import re
from pathlib import Path

import pytest

import stages
from pipeline.plan import models
from pipeline.plan.config import check_name, load_config, reserved_names
from pipeline.stage import ConfigError

STAGE_NAMES = [s.name for s in stages.pipeline()]   # names the build tree uses
RESERVED = reserved_names(STAGE_NAMES)

GOOD = """\
targets:
  cpu:
    backend: llvm-cpu
    arch: generic
    atol: 1.0e-4
matrices:
  default:
    models: [mlp]
    targets: [cpu]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "targets.yaml"
    path.write_text(text)
    return path


def test_loads_targets_matrices_and_defaults(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    cpu = config.targets["cpu"]
    assert (cpu.backend, cpu.arch, cpu.atol, cpu.rtol, cpu.flags) == ("llvm-cpu", "generic", 1e-4, 1e-4, ())
    assert config.matrices["default"].models == ("mlp",)


def test_a_matrix_turns_timing_off_and_names_its_expected_failures(tmp_path):
    config = load_config(write(tmp_path, GOOD + "    timing: false\n    xfail: known/xfail.yaml\n"))
    matrix = config.matrices["default"]
    assert matrix.timing is False and matrix.xfail == tmp_path.resolve() / "known" / "xfail.yaml"
    assert load_config(write(tmp_path, GOOD)).matrices["default"].timing is True


def assert_config_error(tmp_path, text, line, words):
    """Loading text fails with a message that starts at file:line and holds every word."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, STAGE_NAMES)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}:"), message
    for word in words:
        assert word in message


@pytest.mark.parametrize("bad, line, words", [
    (GOOD.replace("atol: 1.0e-4", "atol: tight"), 5, ["targets.cpu.atol", "expected a number", "'tight'"]),
    (GOOD.replace("    arch: generic\n", "    arch: generic\n    colour: red\n"), 5, ["targets.cpu.colour", "unknown field", "valid: backend"]),
    (GOOD.replace("    backend: llvm-cpu\n", ""), 3, ["targets.cpu", "missing field 'backend'"]),
    (GOOD.replace("targets: [cpu]", "targets: [gpu]"), 9, ["matrices.default.targets", "unknown target gpu", "valid: cpu"]),
    (GOOD.replace("atol: 1.0e-4", "flags: --x"), 5, ["targets.cpu.flags", "a list"]),
    (GOOD + "    timing: maybe\n", 10, ["matrices.default.timing", "expected true or false", "'maybe'"]),
    (GOOD + "    timing: 0\n", 10, ["matrices.default.timing", "expected true or false", "0"]),
    (GOOD + "    xfail: [a]\n", 10, ["matrices.default.xfail", "YAML file of expected failures"]),
])
def test_errors_name_file_line_and_field(tmp_path, bad, line, words):
    assert_config_error(tmp_path, bad, line, words)


def test_default_matrix_is_required(tmp_path):
    with pytest.raises(ConfigError, match="missing the 'default' matrix"):
        load_config(write(tmp_path, GOOD.replace("default:", "other:")))


def test_model_entry_needs_file_or_factory(tmp_path):
    text = GOOD + "models:\n  mine:\n    framework: torch\n"
    with pytest.raises(ConfigError, match="models.mine: give exactly one of 'file' or 'factory'"):
        load_config(write(tmp_path, text))


def test_repo_targets_yaml_is_valid():
    config = load_config(Path(__file__).parent.parent / "targets.yaml")
    assert {"cpu", "vulkan"} <= set(config.targets)
    assert set(config.matrices["default"].targets) == {"cpu", "vulkan"}


@pytest.mark.parametrize("bad, line, words", [
    (GOOD.replace("matrices:", "  cpu:\n    backend: vmvx\nmatrices:"), 6,
     ["targets", "duplicate key 'cpu'", "first at line 2"]),
    (GOOD.replace("    arch: generic\n", "    arch: generic\n    backend: vmvx\n"), 5,
     ["targets.cpu", "duplicate key 'backend'", "first at line 3"]),
    (GOOD + "  default:\n    models: [a]\n    targets: [cpu]\n", 10,
     ["matrices", "duplicate key 'default'", "first at line 7"]),
    (GOOD + "models:\n  m:\n    factory: a:b\n    framework: torch\n"
     "    shapes: {x: [1], x: [2]}\n", 14, ["duplicate key 'x'", "first at line 14"]),
    (GOOD + "targets:\n  gpu:\n    backend: vmvx\n", 10,
     ["top level", "duplicate key 'targets'", "first at line 1"]),
])
def test_duplicate_keys_are_rejected(tmp_path, bad, line, words):
    assert_config_error(tmp_path, bad, line, words)


@pytest.mark.parametrize("value", ["-1.0e-4", ".nan", ".inf", "-.inf"])
@pytest.mark.parametrize("field", ["atol", "rtol"])
def test_tolerances_must_be_finite_and_not_negative(tmp_path, field, value):
    path = write(tmp_path, GOOD.replace("atol: 1.0e-4", f"{field}: {value}"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}:5: targets.cpu.{field}: expected a number >= 0"), message


@pytest.mark.parametrize("field", ["atol", "rtol"])
def test_model_tolerances_must_be_finite_and_not_negative(tmp_path, field):
    text = GOOD + f"models:\n  m:\n    factory: a:b\n    framework: torch\n    {field}: -1\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}:14: models.m.{field}: expected a number >= 0")


def test_zero_tolerance_is_valid(tmp_path):
    assert load_config(write(tmp_path, GOOD.replace("1.0e-4", "0"))).targets["cpu"].atol == 0


@pytest.mark.parametrize("name", ["../../x", "a/b", ".hidden", "''", "lower", "logs", "a b"])
@pytest.mark.parametrize("old, line", [("  cpu:", 2), ("  default:", 7), ("  m:", 11)])
def test_config_names_that_become_paths_are_checked(tmp_path, old, line, name):
    text = GOOD + "models:\n  m:\n    factory: a:b\n    framework: torch\n"
    path = write(tmp_path, text.replace(old, f"  {name}:"))
    with pytest.raises(ConfigError) as err:
        load_config(path, STAGE_NAMES)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}:"), message
    assert "letters, digits" in message and "stage name" in message


def test_models_dir_file_with_a_bad_stem_is_an_error(tmp_path):
    (tmp_path / "lower.py").write_text("FRAMEWORK = 'torch'\ndef build(): pass\n")
    (tmp_path / "helper.py").write_text("X = 1\n")  # not a model: its name is not used
    with pytest.raises(ConfigError, match=f"{re.escape(str(tmp_path / 'lower.py'))}: model 'lower'"):
        models.discover([tmp_path], reserved=RESERVED)


@pytest.mark.parametrize("file_name", [".hidden.onnx", "validate"])
def test_model_path_with_a_bad_name_is_an_error(tmp_path, file_name):
    path = tmp_path / file_name
    with pytest.raises(ConfigError, match=f"model={re.escape(str(path))}: model '"):
        models.from_path(path, lambda _: "onnx", {}, reserved=RESERVED)


def test_model_path_name_is_still_sanitised(tmp_path):
    assert models.from_path(tmp_path / "my model.onnx", lambda _: "onnx", {}).name == "my_model.onnx"


@pytest.mark.parametrize("name", ["cpu-2", "mlp_v1.2", "A9"])
def test_check_name_accepts_plain_names(name):
    assert check_name(name, "target", RESERVED) is None


@pytest.mark.parametrize("name", ["", "../x", ".x", "a/b", "codegen", "logs", "ä"])
def test_check_name_rejects_path_like_and_reserved_names(name):
    with pytest.raises(ConfigError, match=f"target '{re.escape(name)}'"):
        check_name(name, "target", RESERVED)


# --- what make_plan says about models that cannot be used -------------------------------

def plan(tmp_path, text=GOOD, **variables):
    """make_plan for a project in tmp_path (its models in tmp_path/models), no compiler run."""
    import stages
    from pipeline.plan.options import Options
    from pipeline.plan.tasks import make_plan
    write(tmp_path, text)
    models_dir = tmp_path / "models"
    models_dir.mkdir(exist_ok=True)
    (models_dir / "mlp.py").write_text("FRAMEWORK = 'torch'\n\ndef build():\n    pass\n")
    return make_plan(Options.parse(variables), stages.pipeline(), stages.detect, stages.resolve_target,
                     [models_dir], root=tmp_path, companions=stages.companions)


def write_broken(tmp_path) -> Path:
    (tmp_path / "models").mkdir(exist_ok=True)
    path = tmp_path / "models" / "broken.py"
    path.write_text("FRAMEWORK = 'torch'\n\n\ndef build(:\n    pass\n")
    return path


@pytest.mark.parametrize("text, variables, where", [
    (GOOD, {"model": "broken"}, "model=broken"),
    (GOOD.replace("models: [mlp]", "models: [mlp, broken]"), {}, "matrices.default"),
])
def test_models_file_with_a_syntax_error_is_named_when_selected(tmp_path, text, variables, where):
    broken = write_broken(tmp_path)
    with pytest.raises(ConfigError) as err:
        plan(tmp_path, text, **variables)
    message = str(err.value)
    assert where in message and f"{broken}:4: syntax error" in message, message
    assert "def build(:" in message and "unknown model" not in message, message


def test_models_file_with_a_syntax_error_only_warns_when_not_selected(tmp_path):
    broken = write_broken(tmp_path)
    made = plan(tmp_path, model="mlp")
    assert made.graph.nodes   # mlp is planned
    # printed by pipeline.driver.session on every run, from the plan memo too (tests/test_memo.py)
    assert len(made.notices) == 1
    assert f"kiln: warning: model broken left out: {broken}:4: syntax error" in made.notices[0]


FACTORY_MODEL = GOOD + "models:\n  mine:\n    framework: pytoch\n    factory: models/mlp.py:build\n"


def test_misspelt_framework_names_the_field_and_the_valid_names(tmp_path):
    with pytest.raises(ConfigError) as err:
        plan(tmp_path, FACTORY_MODEL, model="mine")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'targets.yaml'}:12: models.mine.framework:"), message
    assert "'pytoch'" in message and "torch" in message and "onnx" in message, message
    assert plan(tmp_path, FACTORY_MODEL, model="mlp")   # unselected, it stops nothing


def test_misspelt_framework_in_a_models_file_names_the_file(tmp_path):
    plan(tmp_path)
    (tmp_path / "models" / "typo.py").write_text("FRAMEWORK = 'pytoch'\n\ndef build():\n    pass\n")
    with pytest.raises(ConfigError) as err:
        plan(tmp_path, model="typo")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'models' / 'typo.py'}:1: FRAMEWORK:"), message
    assert "'pytoch'" in message and "torch" in message, message


# --- a selection that builds nothing ------------------------------------------------------

@pytest.mark.parametrize("text, variables, words", [
    (GOOD.replace("targets: [cpu]", "targets: []"), {},
     ["targets.yaml: matrices.default selects no target: nothing to build", "valid targets: cpu"]),
    (GOOD.replace("models: [mlp]", "models: []"), {},
     ["targets.yaml: matrices.default selects no model: nothing to build"]),
    (GOOD, {"model": ""}, ["model=: selects no model: nothing to build", "'all'"]),
    (GOOD, {"target": ","}, ["target=,: selects no target: nothing to build"]),
])
def test_a_selection_of_nothing_is_refused_naming_what_is_empty(tmp_path, text, variables, words):
    with pytest.raises(ConfigError) as err:
        plan(tmp_path, text, **variables)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_an_empty_shard_says_so_but_is_no_error(tmp_path):
    """CI jobs 1/N ... N/N share out the cases, however few: the last may get none."""
    made = plan(tmp_path, shard="2/2")
    assert not made.graph.nodes
    assert made.notices == ["kiln: shard=2/2: this shard holds none of the 1 model x target "
                            "cases selected: nothing to build"]
