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
from typing import NamedTuple

from ..names import without_release
from ..stage import ConfigError

ANY_TARGET = "*"
FORMAT = "a YAML mapping {target: {model: reason}} ('*' as target: every target)"
STR_TAG = "tag:yaml.org,2002:str"
SHOWN = 80   # how much of a wrong value an error quotes (not a 300-entry mapping)
MOST_NAMED = 10   # stray entries named one by one; the rest are counted


class Listed(NamedTuple):
    """The expected failures of a file, {target: {model: reason}}, and the line each
    target's model was listed at, {(target, model): line}: for the notice of an entry that
    names no selected model (pipeline.plan.tasks)."""
    reasons: dict[str, dict[str, str]]
    lines: dict[tuple[str, str], int]


def load(path: Path, what: str, targets) -> dict[str, dict[str, str]]:
    """The expected failures in path, {target: {model: reason}} (read's reasons)."""
    return read(path, what, targets).reasons


def read(path: Path, what: str, targets) -> Listed:
    """The expected failures in path, with their lines; a ConfigError naming `what` (e.g.
    "xfail=known.yaml"), the file, the line and what is valid for a missing or malformed one:
    a key given twice (the last would silently win), a reason that is no text.
    targets: the configured target names ('*' is valid besides)."""
    import yaml

    from .config import reject_duplicate_keys
    try:
        root = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
    except OSError as err:
        raise ConfigError(f"{what}: cannot read {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{what}: {path}: not valid YAML ({FORMAT}): {err}") from None
    if root is None:
        return Listed({}, {})
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{what}: {path}: expected {FORMAT}, "
                          f"got {type(_loaded(root)).__name__}")
    listed = Listed({}, {})
    try:
        reject_duplicate_keys(path, root, "top level")
        for target_node, cases_node in root.value:
            target = _target(path, target_node, cases_node, targets)
            reject_duplicate_keys(path, cases_node, target)
            listed.reasons[target] = {}
            for case_node, reason_node in cases_node.value:
                case = _case(path, target, case_node)
                listed.reasons[target][case] = _reason(path, target, case, reason_node)
                listed.lines[target, case] = case_node.start_mark.line + 1
    except ConfigError as err:
        raise ConfigError(f"{what}: {err}") from None
    return listed


def unmatched(listed: Listed, path: Path, selected: set[str], known: set[str]) -> list[str]:
    """Warnings (not errors: a selection may be narrower than the file) for the entries
    naming a model that is neither selected nor among the models kiln knows here (models/,
    targets.yaml's, the matrix's suite): a misspelt or stale entry, which would otherwise
    never apply and never say so. An entry naming a known model the selection leaves out
    says nothing: a run of one model is no reason to warn of the other 299 entries."""
    import difflib
    stray = [(target, case) for target, case in listed.lines
             if case not in selected and case not in known]
    names = sorted(selected | known)
    warnings = []
    for target, case in stray[:MOST_NAMED]:
        nearest = difflib.get_close_matches(case, names, n=1)
        hint = f" (did you mean {nearest[0]}?)" if nearest else ""
        warnings.append(f"kiln: warning: {path}:{listed.lines[target, case]}: xfail entry "
                        f"{target}: {case} names no model kiln knows here{hint}; it applies "
                        "to nothing")
    if len(stray) > MOST_NAMED:
        warnings.append(f"kiln: warning: {path}: {len(stray) - MOST_NAMED} more xfail entries "
                        "name no model kiln knows here")
    return warnings


def _target(path: Path, node, cases_node, targets) -> str:
    """A top-level key, checked: a configured target or '*', holding a mapping."""
    import yaml
    target = node.value if isinstance(node, yaml.ScalarNode) else _loaded(node)
    if target != ANY_TARGET and target not in targets:
        raise ConfigError(f"{_at(path, node)}: unknown target {target!r} (valid: "
                          f"{', '.join(sorted(targets))}, or '{ANY_TARGET}')")
    if not isinstance(cases_node, yaml.MappingNode):
        raise ConfigError(f"{_at(path, cases_node)}: {target}: expected a mapping of model name "
                          f"to the reason it is expected to fail (text), got {_shown(cases_node)}")
    return target


def _case(path: Path, target: str, node) -> str:
    """A model's name as listed: text (a bare 0001 is a number to YAML: quote it)."""
    if node.tag != STR_TAG:
        raise ConfigError(f"{_at(path, node)}: {target}: expected a model name (text; quote a "
                          f"name YAML reads as something else), got {_shown(node)}")
    return node.value


def _reason(path: Path, target: str, case: str, node) -> str:
    """Why the model is expected to fail: text that is not blank."""
    if node.tag != STR_TAG or not node.value.strip():
        raise ConfigError(f"{_at(path, node)}: {target}.{case}: expected the reason it is "
                          f"expected to fail (text), got {_shown(node)}")
    return node.value.strip()


def _at(path: Path, node) -> str:
    return f"{path}:{node.start_mark.line + 1}"


def _loaded(node):
    """A node's value as yaml.safe_load gives it."""
    import yaml
    return yaml.constructor.SafeConstructor().construct_document(node)


def _shown(node) -> str:
    """A wrong value as an error quotes it: its start only."""
    text = repr(_loaded(node))
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


def reason(expected: dict[str, dict[str, str]], model: str, target: str) -> str | None:
    """Why model on target is expected to fail, or None: it is expected to pass. The
    target's own entry wins over '*'; a target built with another release (iree=: 'cpu+3.12.0')
    is listed under its own name ('cpu')."""
    return expected.get(target, {}).get(model) \
        or expected.get(without_release(target), {}).get(model) \
        or expected.get(ANY_TARGET, {}).get(model)
