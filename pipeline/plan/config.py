"""Project configuration: targets, matrices and user-declared models from targets.yaml.

The file is read with yaml.safe_load semantics but validated on the composed node tree, so
every error names the file, the line and the field, and says what would be valid.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..stage import ConfigError, Target


class _Yaml:
    """PyYAML, imported on first use: a no-op run served by the plan memo (pipeline.plan.memo)
    never reads targets.yaml, and importing yaml is a sixth of what such a run may cost."""

    def __getattr__(self, name):
        import yaml
        return getattr(yaml, name)


yaml = _Yaml()


@dataclass(frozen=True)
class ModelDecl:
    """A model declared in configuration (not a file in models/)."""
    name: str
    framework: str | None
    file: str | None
    factory: str | None
    shapes: dict
    atol: float | None
    rtol: float | None
    seed: int = 0
    inputs: str | dict | None = None
    params: str = "external"
    params_threshold: int | None = None
    framework_at: str = field(default="", compare=False)   # "targets.yaml:12", for errors


@dataclass(frozen=True)
class Matrix:
    name: str
    models: tuple[str, ...]
    targets: tuple[str, ...]
    variants: tuple[str, ...] | None = None   # the variants to try (None: every one)
    timing: bool = True                       # false: validate times nothing (a quick run)
    xfail: Path | None = None                 # its expected failures (pipeline.plan.xfail)
    suite: str | None = None   # a folder of models, relative to the config's directory
    suite_at: str = field(default="", compare=False)   # "targets.yaml:12", for errors
    releases: tuple[str, ...] | None = None   # `iree:`: each target built with each release


@dataclass
class Config:
    path: Path
    targets: dict[str, Target]
    matrices: dict[str, Matrix]
    models: dict[str, ModelDecl] = field(default_factory=dict)
    remote: dict = field(default_factory=dict)   # the shared cache: url, mode (env wins)
    reserved: frozenset[str] = frozenset()       # names the build tree uses (stages, logs)

    @property
    def root(self) -> Path:
        return self.path.parent


# field name -> (accepted python types, required, default, what is valid)
_NUMBER = (int, float)
TARGET_FIELDS = {
    "backend": ((str,), True, None, "a backend stages/backends.py declares"),
    "arch": ((str,), False, None, "the backend's target: a CPU name or 'host', a vulkan/cuda/rocm target"),
    "driver": ((str,), False, None, "an IREE runtime driver such as local-task, vulkan, cuda, hip"),
    "flags": ((list,), False, [], "a list of extra iree-compile flags"),
    "atol": (_NUMBER, False, 1e-4, "a number >= 0"),
    "rtol": (_NUMBER, False, 1e-4, "a number >= 0"),
    "params": ((str,), False, None, "'inline' (weights inside this target's module) or 'external'"),
    "variants": ((dict,), False, {}, "a mapping of variant name to a list of extra iree-compile "
                 "flags (or null to drop a built-in variant)"),
    "tune": ((bool, str), False, False, ("true (add a 'tuned' variant: the fastest validated "
             "variant's module with each dispatch's tiles searched), a variant's name (tune "
             "that one's flags) or false")),
    "tune_budget": (_NUMBER, False, None, "seconds a model's tuning may take (a number > 0)"),
    "iree": ((str,), False, None, ("an IREE release to build this target with, quoted where "
             "YAML would read a number, e.g. '3.12.0' or '3.12' (default: the release kiln is "
             "installed with)")),
}
MATRIX_FIELDS = {
    "models": ((list,), False, [], "a list of model names"),
    "suite": ((str,), False, None, ("a folder of models (model files, ONNX's test layout "
                                    "<case>/model.onnx), relative to the config file")),
    "targets": ((list,), True, None, "a list of target names"),
    "variants": ((list,), False, None, "a list of variant names to try, e.g. [default] for "
                 "quick runs (default: every variant of each target)"),
    "timing": ((bool,), False, True, ("true or false (false: validate checks the numbers and "
                                      "times neither the module nor the framework)")),
    "xfail": ((str,), False, None, ("a YAML file of expected failures, {target: {model: "
                                    "reason}}, relative to the config file")),
    "iree": ((list,), False, None, ("a list of IREE releases, e.g. ['3.12.0', '3.13.0']: "
                                    "each target built with each (an upgrade's answer)")),
}
MODEL_FIELDS = {
    "framework": ((str,), False, None, "a framework name (torch, jax, tf, tflite, onnx, mlir)"),
    "file": ((str,), False, None, "a path to a model file, relative to the config file"),
    "factory": ((str,), False, None, "a Python factory 'module:function' or 'path/to/file.py:function'"),
    "shapes": ((dict,), False, {}, "a mapping of input name to a list of dimensions"),
    "atol": (_NUMBER, False, None, "a number >= 0"),
    "rtol": (_NUMBER, False, None, "a number >= 0"),
    "seed": ((int,), False, 0, "an integer seed for the model's weights and inputs"),
    "inputs": ((str, dict), False, None, "a .npz/.npy file, or a mapping of input name or "
               "position to a .npy file, relative to the config file"),
    "params": ((str,), False, "external", "'external' (weights in an .irpa archive) or 'inline'"),
    "params_threshold": ((int,), False, None, "the fewest elements a constant needs to be "
                         "moved to the parameter archive"),
}
# the shared cache; its token and signing key are secrets: environment only, never a file
REMOTE_FIELDS = {
    "url": ((str,), True, None, "the cache server's URL, e.g. http://cache.example:8080 "
            "(bazel-remote, or nginx with DAV)"),
    "mode": ((str,), False, "read", "'read' (use the cache) or 'write' (also fill it)"),
}
# fields whose value is one of a fixed set
CHOICES = {"params": ("external", "inline"), "mode": ("read", "write")}
# fields that are tolerances: a negative, NaN or infinite one would make every comparison
# pass or fail regardless of the numbers
TOLERANCES = {"atol", "rtol"}
TOP_FIELDS = {"targets", "matrices", "models", "remote"}


# target, model and matrix names become directory and file names under the build tree, next
# to the per-stage directories and logs/: they must not escape it nor collide with those (the
# stage names come from stages/, through the plan)
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


# an IREE release as pip names it: 3.12.0, 3.13.0rc20260917 (it becomes part of a target's name)
_RELEASE = re.compile(r"[0-9][0-9A-Za-z.]*")


def check_release(release: str, what: str) -> str:
    if not _RELEASE.fullmatch(release):
        raise ConfigError(f"{what}: '{release}' is not a release: expected one such as 3.12.0 "
                          "(a version pip can install; in YAML, quote it: '3.12')")
    return release


def check_releases(releases: list[str], what: str) -> tuple[str, ...]:
    if not releases:
        raise ConfigError(f"{what}: an empty list: name at least one release, e.g. 3.12.0")
    if len(set(releases)) != len(releases):
        raise ConfigError(f"{what}: {', '.join(releases)}: a release named twice")
    return tuple(check_release(r, what) for r in releases)


def reserved_names(stage_names: Iterable[str]) -> frozenset[str]:
    return frozenset(stage_names) | {"logs"}


def check_name(name: str, what: str, reserved: frozenset[str]) -> None:
    """Raise ConfigError unless `name` is safe as a path component and not a name the build
    tree uses (`reserved`); `what` says where it comes from (e.g. "targets.yaml:3: target")."""
    if not _NAME.fullmatch(name) or name in reserved:
        raise ConfigError(f"{what} '{name}': invalid name: use only letters, digits, '_', '.' "
                          "and '-', not starting with '.', and not a stage name or 'logs' "
                          f"({', '.join(sorted(reserved))})")


def _where(path: Path, node: yaml.Node) -> str:
    return f"{path}:{node.start_mark.line + 1}"


def _mapping(path: Path, node: yaml.Node, what: str) -> list[tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{_where(path, node)}: {what}: expected a mapping")
    reject_duplicate_keys(path, node, what)
    return node.value


def reject_duplicate_keys(path: Path, node: yaml.MappingNode, what: str) -> None:
    """A ConfigError naming both lines of a key given twice in the mapping node (the xfail
    file is checked with it too): composing keeps every key, and loading would let the last
    one silently win."""
    first_lines = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        key = key_node.value
        if key in first_lines:
            raise ConfigError(f"{_where(path, key_node)}: {what}: duplicate key '{key}' "
                              f"(first at line {first_lines[key]})")
        first_lines[key] = key_node.start_mark.line + 1


def _check_nested_mappings(path: Path, node: yaml.Node, what: str) -> None:
    """Run the mapping checks on every mapping inside a field's value (shapes, inputs)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in _mapping(path, node, what):
            _check_nested_mappings(path, value_node, f"{what}.{key_node.value}")
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_nested_mappings(path, item, what)


def _check_tolerance(path: Path, node: yaml.Node, what: str, value) -> None:
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{_where(path, node)}: {what}: expected a number >= 0, got {value!r}")


def _named_entries(path: Path, node: yaml.Node, section: str, kind: str, reserved):
    """(name, entry node) of each entry of a section, its name checked."""
    for name_node, entry_node in _mapping(path, node, section):
        check_name(name_node.value, f"{_where(path, name_node)}: {section}: {kind}", reserved)
        yield name_node.value, entry_node


def _check_fields(path, node, what, schema) -> dict:
    """Validate one entry against its schema; return its values with defaults filled in."""
    values = {}
    for key_node, value_node in _mapping(path, node, what):
        key = key_node.value
        if key not in schema:
            raise ConfigError(f"{_where(path, key_node)}: {what}.{key}: unknown field "
                              f"(valid: {', '.join(schema)})")
        types, _, _, valid = schema[key]
        _check_nested_mappings(path, value_node, f"{what}.{key}")
        value = yaml.safe_load(yaml.serialize(value_node))
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise ConfigError(f"{_where(path, value_node)}: {what}.{key}: expected {valid}, "
                              f"got {value!r}")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{_where(path, value_node)}: {what}.{key}: expected {valid} "
                              f"(strings), got {value!r}")
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"{_where(path, value_node)}: {what}.{key}: expected {valid}, "
                              f"got {value!r}")
        if key in TOLERANCES:
            _check_tolerance(path, value_node, f"{what}.{key}", value)
        values[key] = value
    for key, (_, required, default, valid) in schema.items():
        if key not in values:
            if required:
                raise ConfigError(f"{_where(path, node)}: {what}: missing field '{key}' ({valid})")
            values[key] = default
    return values


def _variants(path: Path, node, what: str, declared: dict, reserved) -> tuple:
    """targets.<name>.variants: name -> list of flags, or null to drop a built-in variant."""
    variants = []
    for name, flags in declared.items():
        check_name(str(name), f"{_where(path, node)}: {what}: variant", reserved)
        if flags is not None and not (isinstance(flags, list)
                                      and all(isinstance(f, str) for f in flags)):
            raise ConfigError(f"{_where(path, node)}: {what}.{name}: expected a list of "
                              f"iree-compile flags (strings) or null, got {flags!r}")
        variants.append((str(name), None if flags is None else tuple(flags)))
    return tuple(variants)


def load_config(path: str | Path, stage_names: Iterable[str] = ()) -> Config:
    """targets.yaml, checked; target, model, matrix and variant names may not be one of
    stage_names (each is a directory beside the stages' own in build/)."""
    path = Path(path)
    reserved = reserved_names(stage_names)
    sections = _sections(path)
    targets = _targets(path, sections["targets"], reserved)
    models = _models(path, sections["models"], reserved) if "models" in sections else {}
    matrices = _matrices(path, sections["matrices"], targets, reserved)
    remote = _check_fields(path, sections["remote"], "remote", REMOTE_FIELDS) \
        if "remote" in sections else {}
    return Config(path.resolve(), targets, matrices, models, remote, reserved)


def _sections(path: Path) -> dict[str, yaml.Node]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such configuration file")
    try:
        root = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if root is None:
        raise ConfigError(f"{path}: empty; it needs 'targets' and 'matrices'")
    sections = {}
    for key_node, value_node in _mapping(path, root, "top level"):
        if key_node.value not in TOP_FIELDS:
            raise ConfigError(f"{_where(path, key_node)}: unknown section '{key_node.value}' "
                              f"(valid: {', '.join(sorted(TOP_FIELDS))})")
        sections[key_node.value] = value_node
    for required in ("targets", "matrices"):
        if required not in sections:
            raise ConfigError(f"{path}: missing section '{required}'")
    return sections


def _targets(path: Path, section: yaml.Node, reserved) -> dict[str, Target]:
    targets = {}
    for name, node in _named_entries(path, section, "targets", "target", reserved):
        v = _check_fields(path, node, f"targets.{name}", TARGET_FIELDS)
        targets[name] = Target(name, v["backend"], v["arch"], v["driver"], tuple(v["flags"]),
                               float(v["atol"]), float(v["rtol"]), _where(path, node), v["params"],
                               _variants(path, node, f"targets.{name}.variants", v["variants"],
                                         reserved),
                               tune=_tune(v["tune"]), tune_budget=_budget(path, node, name,
                                                                          v["tune_budget"]),
                               toolchain=v["iree"] and check_release(
                                   v["iree"], f"{_where(path, node)}: targets.{name}.iree"))
    return targets


def _tune(value: bool | str) -> str | None:
    """targets.<name>.tune: true -> "best" (start from the fastest validated variant); a name
    -> that variant's flags (checked by stages.targets); false -> None."""
    if isinstance(value, bool):
        return "best" if value else None
    return value


def _budget(path: Path, node, name: str, value) -> float | None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{_where(path, node)}: targets.{name}.tune_budget: expected the "
                          f"seconds a model's tuning may take (a number > 0), got {value!r}")
    return None if value is None else float(value)


def _models(path: Path, section: yaml.Node, reserved) -> dict[str, ModelDecl]:
    models = {}
    for name, node in _named_entries(path, section, "models", "model", reserved):
        what = f"models.{name}"
        v = _check_fields(path, node, what, MODEL_FIELDS)
        if (v["file"] is None) == (v["factory"] is None):
            raise ConfigError(f"{_where(path, node)}: {what}: give exactly one of 'file' or 'factory'")
        if v["factory"] and not v["framework"]:
            raise ConfigError(f"{_where(path, node)}: {what}: a factory model needs 'framework'")
        # errors about the framework point at its field, else at the entry
        framework_node = next((val for key, val in node.value if key.value == "framework"), node)
        models[name] = ModelDecl(name, **v, framework_at=_where(path, framework_node))
    return models


def _matrices(path: Path, section: yaml.Node, targets: dict, reserved) -> dict[str, Matrix]:
    matrices = {}
    for name, node in _named_entries(path, section, "matrices", "matrix", reserved):
        what = f"matrices.{name}"
        v = _check_fields(path, node, what, MATRIX_FIELDS)
        unknown = [t for t in v["targets"] if t not in targets]
        if unknown:
            targets_node = next(val for key, val in node.value if key.value == "targets")
            raise ConfigError(f"{_where(path, targets_node)}: {what}.targets: unknown target "
                              f"{', '.join(unknown)} (valid: {', '.join(targets)})")
        given = {key.value: val for key, val in node.value}
        if "models" not in given and "suite" not in given:
            raise ConfigError(f"{_where(path, node)}: {what}: missing field 'models' (a list "
                              "of model names) or 'suite' (a folder of models); or give both")
        suite_node = given.get("suite", node)
        releases = None if v["iree"] is None else check_releases(
            [str(r) for r in v["iree"]], f"{_where(path, node)}: {what}.iree")
        matrices[name] = Matrix(name, tuple(v["models"]), tuple(v["targets"]),
                                None if v["variants"] is None else tuple(v["variants"]),
                                v["timing"],
                                None if v["xfail"] is None else path.resolve().parent / v["xfail"],
                                v["suite"], _where(path, suite_node), releases)
    if "default" not in matrices:
        raise ConfigError(f"{path}: matrices: missing the 'default' matrix")
    return matrices
