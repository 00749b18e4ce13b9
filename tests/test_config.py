from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config

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


@pytest.mark.parametrize("bad, line, words", [
    (GOOD.replace("atol: 1.0e-4", "atol: tight"), 5, ["targets.cpu.atol", "expected a number", "'tight'"]),
    (GOOD.replace("    arch: generic\n", "    arch: generic\n    colour: red\n"), 5, ["targets.cpu.colour", "unknown field", "valid: backend"]),
    (GOOD.replace("    backend: llvm-cpu\n", ""), 3, ["targets.cpu", "missing field 'backend'"]),
    (GOOD.replace("targets: [cpu]", "targets: [gpu]"), 9, ["matrices.default.targets", "unknown target gpu", "valid: cpu"]),
    (GOOD.replace("atol: 1.0e-4", "flags: --x"), 5, ["targets.cpu.flags", "a list"]),
])
def test_errors_name_file_line_and_field(tmp_path, bad, line, words):
    path = write(tmp_path, bad)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}:"), message
    for word in words:
        assert word in message


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
