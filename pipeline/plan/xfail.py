"""Expected failures: the file `xfail=FILE` (or a matrix's `xfail: FILE`) names, read and checked.

    cpu:                       # a target of targets.yaml, or '*' for every target
      bessel: "torch.special.bessel_j0: no IREE lowering"
    '*':
      boom: "its factory raises"

A model x target listed here that fails is `xfail` in every report, one that passes `xpass`;
the run's exit code follows only the unexpected (pipeline.report.verdict). The plan puts each
listed model x target's reason into its tasks' meta, so a run served by the plan memo knows
them without reading this file (the memo watches it: pipeline.plan.tasks.plan_inputs).
"""
from __future__ import annotations

from pathlib import Path

from ..stage import ConfigError

ANY_TARGET = "*"
FORMAT = "a YAML mapping {target: {model: reason}} ('*' as target: every target)"


def load(path: Path, what: str, targets) -> dict[str, dict[str, str]]:
    """The expected failures in path, {target: {model: reason}}; a ConfigError naming `what`
    (e.g. "xfail=known.yaml"), the file and what is valid for a missing or malformed one.
    targets: the configured target names ('*' is valid besides)."""
    import yaml
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{what}: cannot read {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{what}: {path}: not valid YAML ({FORMAT}): {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {path}: expected {FORMAT}, got {type(data).__name__}")
    expected = {}
    for target, cases in data.items():
        if target != ANY_TARGET and target not in targets:
            raise ConfigError(f"{what}: {path}: unknown target {target!r} (valid: "
                              f"{', '.join(sorted(targets))}, or '{ANY_TARGET}')")
        if not isinstance(cases, dict) or not all(
                isinstance(case, str) and isinstance(reason, str) and reason.strip()
                for case, reason in cases.items()):
            raise ConfigError(f"{what}: {path}: {target}: expected a mapping of model name to "
                              f"the reason it is expected to fail (text), got {cases!r}")
        expected[target] = {case: reason.strip() for case, reason in cases.items()}
    return expected


def reason(expected: dict[str, dict[str, str]], model: str, target: str) -> str | None:
    """Why model on target is expected to fail, or None: it is expected to pass. The
    target's own entry wins over '*'."""
    return expected.get(target, {}).get(model) or expected.get(ANY_TARGET, {}).get(model)
