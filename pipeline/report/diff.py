"""What changed between two builds: this run's record against a baseline's (an earlier run.json),
per model x target, for `doit diff baseline=PATH` and `doit validate baseline=PATH`.

Three things count as a change, each judged on table.rows (the summary table's rows, so a
case's outcome here is the one every report shows):
- its outcome: passed, failed at which stage, xfail, xpass, skipped, compiled;
- its error against the tolerance (max abs error / atol, the worst output), when it grew or
  shrank by more than `factor` (default 2) and the larger of the two is at least ERROR_FLOOR
  of the tolerance: errors far below it move by several times with any change in the order
  of a reduction, and saying so for every case of a suite would bury the ones that matter;
- its latency (the module's median, min and max), when the two min-max ranges do not overlap
  and the median moved by more than LATENCY_NOISE: the rule stages/pick.py keeps a variant by
  (its NOISE_FLOOR), so the diff never calls slower what the pick calls the same speed.

compare() is a pure function of two record dicts; its answer is a plain dict that the run
record keeps under "diff" and the console, report.md and report.html show (pipeline.report.
record, table, html). read_baseline() and parse_factor() check what the user gave.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..stage import ConfigError
from ..vocab import Kind
from . import table
from .units import duration

ERROR_FACTOR = 2.0     # an error against its tolerance that grew (or shrank) more than this
ERROR_FLOOR = 0.01     # ... and is at least this much of the tolerance, before or after
LATENCY_NOISE = 0.05   # stages/pick.py's NOISE_FLOOR: medians closer than this are one speed
VERDICTS = ("worse", "better", "changed")   # a case's change, in the order they are listed
# table.rows kinds that pass, that fail
GOOD, BAD = (Kind.PASSED, Kind.XPASS), (Kind.FAILED, Kind.XFAIL)


# --- what the user gave ---------------------------------------------------------------------

@dataclass(frozen=True)
class Baseline:
    """baseline= and factor=, checked: what a run's record is compared with."""
    path: Path      # the baseline's run.json
    record: dict    # as it was read
    factor: float
    name: str       # as the reports name it: relative to the project where it lies inside

    def compare(self, current: dict) -> dict:
        return compare(self.record, current, self.factor, self.name)


def load(given: str, factor: str | None, root: Path) -> Baseline:
    """baseline=given and factor=factor (None: not given) for the project at root;
    ConfigError saying what is wrong and what is valid."""
    checked = parse_factor(factor)
    path, record = read_baseline(given, root)
    path, root = path.resolve(), root.resolve()
    return Baseline(path, record, checked,
                    str(path.relative_to(root)) if path.is_relative_to(root) else str(path))


def read_baseline(given: str, root: Path) -> tuple[Path, dict]:
    """(the baseline's run.json, its record) for baseline=given: a run.json, or a build
    directory holding one (a project directory's build/ too), relative to root."""
    valid = "give an earlier run's run.json or its build directory"
    path = Path(given).expanduser()
    path = path if path.is_absolute() else root / path
    if path.is_dir():
        found = next((p for p in (path / "run.json", path / "build" / "run.json") if p.is_file()),
                     None)
        if found is None:
            raise ConfigError(f"baseline={given}: the directory holds no run.json (nor "
                              f"build/run.json); {valid}")
        path = found
    elif not path.exists():
        raise ConfigError(f"baseline={given}: no such file or directory; {valid}")
    try:
        return path, read_record(path)
    except ValueError as err:
        raise ConfigError(f"baseline={given}: {err}; {valid}") from None


def read_record(path: Path) -> dict:
    """A run record (run.json) as written; ValueError saying why where it is none: not
    JSON, no "tasks" list, a task row that is not what kiln writes (saying which, and what
    is wrong: the reports would stop on it with a traceback, after the whole run)."""
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a kiln run record ({err})") from None
    tasks = record.get("tasks") if isinstance(record, dict) else None
    if not isinstance(tasks, list):
        raise ValueError(f"{path} is not a kiln run record (no \"tasks\" list)")
    for number, task in enumerate(tasks, 1):
        problem = _task_problem(task)
        if problem:
            named = f" ({task['task']})" if isinstance(task, dict) and \
                isinstance(task.get("task"), str) else ""
            raise ValueError(f"{path} is not a kiln run record: task {number}{named}: {problem}")
    try:   # what the rows read deeper (a result's variants, latencies) as a diff reads it
        compare(record, record)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise ValueError(f"{path} is not a kiln run record: its tasks cannot be compared "
                         f"({type(err).__name__}: {err})") from None
    return record


# a run.json task row's fields the reports read: text always, text or null, object or null
ROW_TEXT = ("task", "stage", "model", "status")
ROW_TEXT_OR_NULL = ("target", "role", "error", "reason", "command", "log", "xfail")


def _task_problem(task) -> str | None:
    """What is wrong with a run.json task row, or None."""
    if not isinstance(task, dict):
        return f"expected an object with {', '.join(ROW_TEXT)} and target, got {_quoted(task)}"
    for name in ROW_TEXT:
        if not isinstance(task.get(name), str):
            return f'"{name}" must be text, got {_quoted(task.get(name))}' if name in task \
                else f'missing "{name}"'
    if "target" not in task:
        return 'missing "target" (null for a per-model stage)'
    for name in ROW_TEXT_OR_NULL:
        if task.get(name) is not None and not isinstance(task[name], str):
            return f'"{name}" must be text or null, got {_quoted(task[name])}'
    stands_for = task.get("stands_for", [])
    if not (isinstance(stands_for, list) and all(isinstance(s, str) for s in stands_for)):
        return f'"stands_for" must be a list of stage names, got {_quoted(stands_for)}'
    if task.get("result") is not None and not isinstance(task["result"], dict):
        return f'"result" must be an object or null, got {_quoted(task["result"])}'
    return None


def _quoted(value, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width] + "..."


def parse_factor(text: str | None) -> float:
    """factor=F: how many times an error against its tolerance must grow to be reported."""
    if text is None:
        return ERROR_FACTOR
    try:
        factor = float(text)
    except ValueError:
        factor = math.nan
    if not (math.isfinite(factor) and factor > 1):
        raise ConfigError(f"factor={text}: expected a number above 1, how many times an error "
                          f"against its tolerance must grow to count (default {ERROR_FACTOR:g})")
    return factor


# --- the comparison -------------------------------------------------------------------------

def compare(baseline: dict, current: dict, factor: float = ERROR_FACTOR,
            name: str = "baseline", current_name: str | None = None) -> dict:
    """What changed from baseline to current, per model x target in both: {"baseline": name,
    "factor", "compared": how many cases both hold, "changes": one dict per case that changed
    (worse first), "only_in_baseline" / "only_here": the cases one of them lacks, and
    "baseline_error" where the baseline run stopped before building anything; "current":
    current_name, where the two are builds of one run (pipeline.report.upgrade)}."""
    before = {(r["model"], r["target"]): r for r in table.rows(baseline.get("tasks", []))}
    after = {(r["model"], r["target"]): r for r in table.rows(current.get("tasks", []))}
    both = sorted(before.keys() & after.keys())
    changes = [c for c in (_case(before[k], after[k], factor) for k in both) if c]
    changes.sort(key=lambda c: VERDICTS.index(c["verdict"]))   # (stable: by case within)
    found = {"baseline": name, "factor": factor, "compared": len(both), "changes": changes,
             "only_in_baseline": [_name(k) for k in sorted(before.keys() - after.keys())],
             "only_here": [_name(k) for k in sorted(after.keys() - before.keys())]}
    if baseline.get("error"):
        found["baseline_error"] = baseline["error"]
    if current_name:
        found["current"] = current_name
    return found


def _name(key: tuple[str, str]) -> str:
    return f"{key[0]}@{key[1]}"


def _case(before: dict, after: dict, factor: float) -> dict | None:
    aspects = {"outcome": _outcome_change(before, after),
               "error": _error_change(before, after, factor),
               "latency": _latency_change(before, after)}
    verdicts = {a["verdict"] for a in aspects.values() if a}
    if not verdicts:
        return None
    verdict = next(v for v in VERDICTS if v in verdicts)
    return {"case": _name((after["model"], after["target"])), "model": after["model"],
            "target": after["target"], "verdict": verdict, **aspects}


def outcome(row: dict) -> str:
    """A row's outcome in a few words: passed, failed at <stage>, xfail (failed at <stage>),
    xpass, skipped, compiled. A failure taken from the cache is the same outcome."""
    kind, failed = row["kind"], row["failed"]
    if kind not in BAD:
        return kind
    where = f"failed at {failed['stage']}" if failed else Kind.FAILED
    return where if kind == Kind.FAILED else f"xfail ({where})"


def _outcome_change(before: dict, after: dict) -> dict | None:
    was, now = outcome(before), outcome(after)
    if was == now:
        return None
    if before["kind"] in GOOD and after["kind"] in BAD:
        verdict = "worse"
    elif before["kind"] in BAD and after["kind"] in GOOD:
        verdict = "better"
    else:   # failed at another stage, now listed as expected, skipped, compiled only
        verdict = "changed"
    why = _short((after["failed"] or {}).get("error") or "") if after["kind"] in BAD else ""
    return {"verdict": verdict, "before": was, "after": now, "error": why,
            "text": f"{was} → {now}" + (f" ({why})" if why else "")}


def _short(error: str, width: int = 160) -> str:
    line = error.strip().splitlines()[0] if error.strip() else ""
    return line if len(line) <= width else line[:width - 1] + "…"


def against_tolerance(result: dict) -> tuple[float, float, float] | None:
    """(max abs error / atol, that error, that atol) for the output furthest from its own
    tolerance (an output's own atol, e.g. a quantized one's, else the case's); None where
    nothing was compared or the tolerance is 0 (exact outputs)."""
    atol = _number(result.get("atol"))
    pairs = [(_number(o.get("max_abs_error")), _number(o.get("atol")) or atol)
             for o in result.get("outputs") or [] if isinstance(o, dict)]
    pairs = [p for p in pairs if p[0] is not None and p[1]] or \
        [(_number(result.get("max_abs_error")), atol)]
    worst = max(((err / tol, err, tol) for err, tol in pairs if err is not None and tol),
                default=None)
    return worst


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def _error_change(before: dict, after: dict, factor: float) -> dict | None:
    was, now = against_tolerance(before["result"]), against_tolerance(after["result"])
    if was is None or now is None or max(was[0], now[0]) < ERROR_FLOOR:
        return None
    low, high = sorted((was[0], now[0]))
    if high <= low * factor:
        return None
    verdict = "worse" if now[0] > was[0] else "better"
    growth = f"{_many(high / low)}× {'larger' if verdict == 'worse' else 'smaller'}" if low \
        else ("from exactly 0" if verdict == "worse" else "now exactly 0")
    return {"verdict": verdict, "before": was[0], "after": now[0],
            "before_abs": was[1], "after_abs": now[1], "atol": now[2],
            "text": f"error {growth} against the tolerance: max abs {now[1]:.3g} = "
                    f"{now[0]:.3g}× atol {now[2]:g}, was {was[1]:.3g} = {was[0]:.3g}×"
                    + (f" atol {was[2]:g}" if was[2] != now[2] else "")}


def _many(times: float) -> str:
    """A factor as a person reads it: 3.41, 250, 34000, 1.2e+09."""
    return f"{times:.3g}" if times < 100 else f"{times:.0f}" if times < 1e6 else f"{times:.2g}"


def _latency(row: dict) -> dict | None:
    """The median, min and max of the module's time per call (an older record's single
    figure counts as all three), or None where it was not timed."""
    latency = row["result"].get("latency") or {}
    median = _number(latency.get("median_ms"))
    if median is None:
        median = _number(row["result"].get("latency_ms"))
    if not median:
        return None
    low, high = _number(latency.get("min_ms")), _number(latency.get("max_ms"))
    return {"median_ms": median, "min_ms": median if low is None else low,
            "max_ms": median if high is None else high}


def _latency_change(before: dict, after: dict) -> dict | None:
    was, now = _latency(before), _latency(after)
    if was is None or now is None:
        return None
    apart = now["min_ms"] > was["max_ms"] or now["max_ms"] < was["min_ms"]
    ratio = now["median_ms"] / was["median_ms"]
    if not apart or abs(ratio - 1) <= LATENCY_NOISE:
        return None
    verdict = "worse" if ratio > 1 else "better"
    speed = f"{ratio:.3g}× slower" if ratio > 1 else f"{1 / ratio:.3g}× faster"
    return {"verdict": verdict, "before": was, "after": now, "ratio": ratio,
            "text": f"{speed}: {_spread(now)}, was {_spread(was)}"}


def _spread(latency: dict) -> str:
    text = duration(latency["median_ms"])
    if latency["min_ms"] != latency["max_ms"]:
        text += f" ({duration(latency['min_ms'])} – {duration(latency['max_ms'])})"
    return text


# --- how it reads ---------------------------------------------------------------------------

ASPECTS = ("outcome", "error", "latency")


def title(found: dict) -> str:
    """The section's title in report.md and report.html."""
    return f"Changes from {found['baseline']} to {found['current']}" if found.get("current") \
        else "Changes since the baseline"


def headline(found: dict) -> str:
    """One line: what was compared with what, and how many cases changed how."""
    changes = found["changes"]
    counts = ", ".join(f"{n} {v}" for v in VERDICTS
                       if (n := sum(c["verdict"] == v for c in changes)))
    since = f"from {found['baseline']} to {found['current']}" if found.get("current") \
        else f"since the baseline {found['baseline']}"
    return (f"{since}: {len(changes)} of {found['compared']} cases changed"
            + (f" ({counts})" if counts else ""))


def notes(found: dict) -> list[str]:
    """The cases only one side holds, and a baseline that built nothing."""
    said = []
    if found.get("baseline_error"):
        said.append(f"the baseline run stopped before building anything: "
                    f"{_short(found['baseline_error'])}")
    if found.get("current"):   # (two builds of one run: a case only one of them holds)
        before, after = f"only with {found['baseline']}", f"only with {found['current']}"
    else:
        before, after = "only in the baseline (not in this run)", "new since the baseline"
    if found["only_in_baseline"]:
        said.append(f"{before}: {_listed(found['only_in_baseline'])}")
    if found["only_here"]:
        said.append(f"{after}: {_listed(found['only_here'])}")
    return said


def _listed(cases: list[str], most: int = 20) -> str:
    more = f" and {len(cases) - most} more" if len(cases) > most else ""
    return ", ".join(cases[:most]) + more


def rule(found: dict) -> str:
    """What counts as a change, in a sentence (the reports' footnote)."""
    return (f"A change: the outcome; the error against the tolerance (max abs error / atol) "
            f"grown or shrunk more than {found['factor']:g}× (factor=) and at least "
            f"{ERROR_FLOOR:.0%} of the tolerance; the time per call when the two builds' min–max "
            f"ranges do not overlap and the median moved more than {LATENCY_NOISE:.0%}.")


def lines(found: dict) -> list[str]:
    """The console's: the headline, one line per changed case (worse first), the notes."""
    width = max((len(c["case"]) for c in found["changes"]), default=0)
    out = [headline(found)]
    out += [f"  {c['verdict']:<8}{c['case']:<{width}}  "
            + "; ".join(c[a]["text"] for a in ASPECTS if c[a]) for c in found["changes"]]
    return out + [f"  {note}" for note in notes(found)]


def markdown(found: dict) -> list[str]:
    """report.md's section: a table of the changed cases."""
    out = [f"## {title(found)}", "", headline(found) + ".", ""]
    if found["changes"]:
        out += ["| case | change | outcome | error against tolerance | time per call |",
                "|---|---|---|---|---|"]
        out += [f"| {c['case']} | **{c['verdict']}** | "
                + " | ".join(_cell(c[a]) for a in ASPECTS) + " |" for c in found["changes"]]
        out.append("")
    out += [f"- {note}" for note in notes(found)]
    return out + ["", rule(found), ""]


def _cell(aspect: dict | None) -> str:
    return "" if aspect is None else aspect["text"].replace("|", "\\|")
