"""The summary table: one row per model x target, saying how it ended, where it stopped and
how fast the module runs against the framework itself (median times, stages/timing.py).
A row's outcome rests on the entries' roles (pipeline.stage.Stage.role), not stage names."""
from __future__ import annotations

from typing import TypedDict

from tabulate import tabulate

from ..names import DEFAULT_VARIANT, base_target, variant_of
from ..run.entry import FAILURES, UNFINISHED
from ..vocab import Kind, Role, Status
from . import timesplit
from .units import duration, times

# the statuses of a stage whose outputs exist
BUILT = (Status.RAN, Status.CACHED, Status.UP_TO_DATE)
# a stopped run's unfinished cases
UNFINISHED_KINDS = (Kind.INTERRUPTED, Kind.NOT_STARTED)


class CaseRow(TypedDict):
    """One model x target case, as rows() makes it (a dict: the console, junit, html and
    diff read it by key, and the HTML page's data carries parts of it as JSON)."""
    model: str
    target: str
    outcome: str                 # the words the table shows
    kind: Kind
    expected: str | None         # why it is listed as expected to fail (pipeline.plan.xfail)
    chain: list[dict]            # its stage entries, the model's front end first
    failed: dict | None          # the entry it failed at
    verdict: dict | None         # the entry its verdict is (a Role.VERDICT or Role.CHOICE one)
    result: dict                 # what the verdict measured
    max_abs: float | None
    max_rel: float | None
    ms: float | None             # IREE's median time per run
    framework_ms: float | None
    ratio: float | None          # IREE / framework
    variant: str | None          # the variant a choice picked
    variants: list[dict]
    diagnosis: dict | None       # what a Role.DIAGNOSIS stage said of it
    said: list[str]              # the lines its stages asked the reports to show (REPORT_LINE)
    stages: str                  # how many of its stages ended how: "3 ran 1 cached"


# a stage result's line for the reports, shown under its case (a tuning's cost and gain)
REPORT_LINE = "report_line"


def _fmt(value, spec=".1e"):
    return "" if value is None else format(value, spec)


# a record written before stages declared their roles (its entries have no "role" field)
# is read by the names its stages had then: the one place the report reads a stage's name
ROLES_BEFORE_ROLES = {"codegen": Role.MODULE, "validate": Role.VERDICT, "pick": Role.CHOICE}


def role(entry: dict) -> str | None:
    """What the entry's stage is to the report (pipeline.stage.Stage.role, a Role), or None
    for a step on the way."""
    if "role" in entry:
        return entry["role"]
    return ROLES_BEFORE_ROLES.get(entry["stage"])


def rows(entries: list[dict]) -> list[CaseRow]:
    """Fold the run's stage entries into one row per model x target (its variants' stages
    included), with what the row's verdict rests on: the choice among the target's variants
    where there is one, else the target's own verdict."""
    per_model = [e for e in entries if e["target"] is None]
    table = {}
    for e in entries:
        if e["target"] is not None:
            table.setdefault((e["model"], base_target(e["target"])), []).append(e)
    return [_row(model, target, _folded(model, per_model, stage_entries), stage_entries)
            for (model, target), stage_entries in sorted(table.items())]


def _folded(model: str, per_model: list[dict], stage_entries: list[dict]) -> list[dict]:
    """The model's own entries a row holds: all but those of stages that one of the row's
    stands for (Stage.stands_for: relegalize, for a target built with another release)."""
    replaced = {s for e in stage_entries for s in e.get("stands_for", ())}
    return [e for e in per_model if e["model"] == model and e["stage"] not in replaced]


def _ending(target: str, per_model: list[dict], stage_entries: list[dict]):
    """(the entry the row failed at or None, the entry its verdict is or None)."""
    chain = per_model + stage_entries
    choice = next((e for e in stage_entries if role(e) == Role.CHOICE), None)
    several = len({e["target"] for e in stage_entries}) > 1   # variants tried
    if choice is not None and choice["status"] != Status.SKIPPED:
        # a variant may fail alone: what counts is the front end and the choice among them
        return next((e for e in [*per_model, choice] if e["status"] in FAILURES), None), choice
    if choice is None and several and not any(role(e) == Role.VERDICT for e in stage_entries):
        # compiled only (doit compile): the target compiled when one of its variants did
        compiled = any(role(e) == Role.MODULE and e["status"] in BUILT
                       for e in stage_entries)
        return next((e for e in (per_model if compiled else chain)
                     if e["status"] in FAILURES), None), None
    return (next((e for e in chain if e["status"] in FAILURES), None),
            next((e for e in stage_entries if role(e) == Role.VERDICT and e["target"] == target),
                 None))


# a listed expected failure (its tasks' "xfail": pipeline.plan.xfail) that failed, or passed
EXPECTED = {Kind.FAILED: Kind.XFAIL, Kind.PASSED: Kind.XPASS}


def _row(model: str, target: str, per_model: list[dict],
         stage_entries: list[dict]) -> CaseRow:
    diagnoses = [e for e in stage_entries if role(e) == Role.DIAGNOSIS]
    stage_entries = [e for e in stage_entries if role(e) != Role.DIAGNOSIS]
    # (a diagnosis that had nothing to explain is no part of the row)
    chain = per_model + stage_entries + [e for e in diagnoses if e["status"] != Status.SKIPPED]
    failed, verdict = _ending(target, per_model, stage_entries)
    variant_failed = _variant_failures(stage_entries)
    every_variant = failed is not None and failed is verdict and role(failed) == Role.CHOICE
    if every_variant:   # the choice failed for want of a variant that passed: say why they failed
        failed = variant_failed.get(DEFAULT_VARIANT) or next(iter(variant_failed.values()), failed)
    result = (verdict or {}).get("result") or (failed or {}).get("result") or {}
    if verdict is not None and role(verdict) == Role.CHOICE:
        result = _with_default_figures(result, verdict, target, stage_entries)
    variants = _variant_outcomes(result.get("variants") or [], variant_failed)
    unfinished = _unfinished(per_model + stage_entries)
    kind, outcome = _outcome(failed, verdict, result) if failed or not unfinished else \
        _unfinished_outcome(unfinished)
    tried = len(result.get("variants") or variant_failed)
    if every_variant and tried > 1 and failed in variant_failed.values():
        # the default's words (each variant's own are in the variants' list: report.md)
        variant = variant_of(failed["target"])
        outcome = (f"FAILED in all {tried} variants; {variant} at {failed['stage']}"
                   f"{_cached(failed)}: {short_error(failed.get('error'))}")
    expected = next((e["xfail"] for e in stage_entries if e.get("xfail")), None)
    if expected and kind in EXPECTED:
        kind = EXPECTED[kind]
        outcome = f"{kind}: {outcome}" + \
            (" (listed as expected to fail)" if kind == Kind.XPASS else "")
    counts = {}
    for e in chain:
        counts[e["status"]] = counts.get(e["status"], 0) + 1
    return {"model": model, "target": target, "outcome": outcome, "kind": kind,
            "expected": expected, "chain": chain, "failed": failed, "verdict": verdict, "result": result,
            "max_abs": result.get("max_abs_error"), "max_rel": result.get("max_rel_error"),
            "ms": result.get("latency_ms"),   # the median (older records: one figure)
            "framework_ms": (result.get("framework_latency") or {}).get("median_ms"),
            "ratio": result.get("speed_ratio"), "variant": result.get("variant"),
            "variants": variants, "diagnosis": diagnosis(diagnoses, target),
            "said": [f"{e['stage']} ({variant_of(e['target'])}): {e['result'][REPORT_LINE]}"
                     for e in stage_entries if (e.get("result") or {}).get(REPORT_LINE)],
            "stages": " ".join(f"{n} {s}" for s, n in sorted(counts.items()))}


def _unfinished(chain: list[dict]) -> dict | None:
    """The stage a stopped run left the row unfinished at: the one it was stopped in, else
    the first it never started; None where every stage ended."""
    for status in UNFINISHED:
        found = next((e for e in chain if e["status"] == status), None)
        if found is not None:
            return found
    return None


def _unfinished_outcome(entry: dict) -> tuple[Kind, str]:
    """(kind, words) of a row a stopped run left unfinished at entry: 'interrupted at
    codegen: the run was stopped (SIGINT) while it ran'."""
    said = entry.get("error") if entry["status"] == Status.INTERRUPTED else entry.get("reason")
    return Kind(entry["status"]), f"{entry['status']} at {entry['stage']}: {short_error(said)}"


def diagnosis(entries: list[dict], target: str) -> dict | None:
    """What a stage that explains a failure said of the row (its target's own, else a
    variant's): its summary, table, files and plot (as any diagnosis result has them: a
    plot is {"title", "x_label", "y_label", "x", "series": {name: values}, "mark"?: {"x",
    "label"}, "lines"?: {name: y}}, drawn by report.html), or why it failed; None where
    none ran."""
    said = [e for e in entries if e["status"] != Status.SKIPPED and e["status"] not in UNFINISHED]
    entry = next((e for e in said if e["target"] == target), None) or next(iter(said), None)
    if entry is None:
        return None
    result = entry.get("result") or {}
    summary = result.get("summary") if entry["status"] not in FAILURES else \
        f"{entry['stage']} failed: {short_error(entry.get('error'))}"
    return {"stage": entry["stage"], "target": entry["target"], "status": entry["status"],
            "summary": summary or "", "rows": result.get("rows") or [],
            "files": result.get("files") or [], "log": entry.get("log"),
            "plot": result.get("plot") if entry["status"] not in FAILURES else None}


def _variant_failures(stage_entries: list[dict]) -> dict[str, dict]:
    """variant -> the first of its own stages that failed (its compile or its validation),
    default first: what a choice among variants cannot say of a variant that left nothing."""
    found: dict[str, dict] = {}
    for e in stage_entries:
        if role(e) != Role.CHOICE and e["status"] in FAILURES:
            found.setdefault(variant_of(e["target"]), e)
    return dict(sorted(found.items(), key=lambda item: item[0] != DEFAULT_VARIANT))


def _with_default_figures(result: dict, choice: dict, target: str,
                          stage_entries: list[dict]) -> dict:
    """The choice's result with what the target's default variant measured where the choice
    has none. Every variant failed: the default's own figures (its errors, its time, the
    framework's), with the variants. Another variant passed but the default failed its
    validation: the framework's time, which only the default variant takes (the framework's
    speed does not depend on IREE's flags), is in that failed validation's result."""
    default = next((e for e in stage_entries
                    if role(e) == Role.VERDICT and e["target"] == target), None)
    measured = (default or {}).get("result") or {}
    if choice["status"] in FAILURES:
        return {**measured, "variants": result.get("variants") or [], "why": "no variant passed"}
    framework = measured.get("framework_latency")
    if result.get("framework_latency") or not framework or not framework.get("median_ms"):
        return result
    median = (result.get("latency") or {}).get("median_ms")
    return {**result, "framework_latency": framework,
            "speed_ratio": result.get("speed_ratio") or
            (median / framework["median_ms"] if median else None)}


def _variant_outcomes(variants: list[dict], failures: dict[str, dict]) -> list[dict]:
    """The choice's word on each variant, where one failed in its own stages by what it
    failed at and why (the choice saw only that it left no result)."""
    return [{**v, "outcome": f"failed at {e['stage']}{_cached(e)}: {short_error(e.get('error'))}"}
            if v.get("outcome") != Kind.PASSED and (e := failures.get(v.get("variant"))) else v
            for v in variants]


def _outcome(failed: dict | None, verdict: dict | None, result: dict) -> tuple[Kind, str]:
    """(the row's kind: passed, failed, skipped or compiled; the words the table shows)."""
    if failed:
        return Kind.FAILED, (f"FAILED at {failed['stage']}{_cached(failed)}: "
                          f"{short_error(failed.get('error'))}")
    if verdict is None:
        return Kind.COMPILED, Kind.COMPILED.value
    if verdict["status"] == Status.SKIPPED:
        return Kind.SKIPPED, verdict.get("reason") or Kind.SKIPPED.value
    if not result.get("passed"):
        return Kind.FAILED, "FAILED"
    outcome = Kind.PASSED.value
    if result.get("variant") and len(result.get("variants") or ()) > 1:
        outcome += f" (variant {result['variant']} of {len(result['variants'])})"
    if result.get("checked"):
        outcome += f" ({result['checked']})"
    if result.get("rule") in ("f64-noise", "spread") and result.get("factor") is not None:
        # judged against the framework's own noise (stages/compare.py): its f32 error vs
        # float64, or the spread between its own two implementations
        noise = "f64 noise" if result["rule"] == "f64-noise" else "kernel spread"
        outcome += f" ({noise} {result['factor']:.2g}x of {result['factor_allowed']:g}x)"
    if result.get("matched"):
        outcome += f" ({result['matched']})"
    return Kind.PASSED, outcome


def short_error(text: str | None) -> str:
    """An error in one line, for a table cell or a console line: a Python traceback's last
    line (the exception), else the first line. The whole text stays in the record."""
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
        return lines[-1]
    return lines[0]


def _cached(failed: dict) -> str:
    """' (cached)' for a failure remembered from an earlier run with the same key."""
    return " (cached)" if failed["status"] == Status.CACHED_FAILURE else ""


def table(entries: list[dict], tablefmt: str = "simple", width: int | None = 90,
          table_rows: list[dict] | None = None) -> str:
    """The table of the entries' rows (table_rows: those rows, where already made)."""
    body = [[r["model"], r["target"], r["outcome"][:width], _fmt(r["max_abs"]), _fmt(r["max_rel"]),
             duration(r["ms"]) or _untimed(r), duration(r["framework_ms"]), times(r["ratio"]),
             r["stages"]]
            for r in (rows(entries) if table_rows is None else table_rows)]
    return tabulate(body, tablefmt=tablefmt,
                    headers=["model", "target", "outcome", "max abs err", "max rel err",
                             "IREE time/run", "framework time/run", "IREE/framework", "stages"])


def _untimed(row: dict) -> str:
    """The time cell of a row with no figure: why, where timing was off."""
    return "timing off" if row["result"].get("timing") == "off" else ""


TIMES_NOTE = ("Times per run are medians of several repetitions after a warm-up, on this "
              "machine, the framework with as many threads as IREE; IREE/framework above 1× "
              "means IREE is slower. How each was measured: `latency.how` and "
              "`framework_latency.how` in build/run.json.")


def markdown(record: dict, after_table: list[str] = ()) -> str:
    """The same table for a CI summary or a pull request, with the failures spelled out.
    after_table: lines of a section to put right below it (what changed since a baseline)."""
    if record.get("error"):
        return f"# kiln run\n\n**The run stopped before building anything:** {record['error']}\n"
    entries = record["tasks"]
    table_rows = rows(entries)
    lines = ["# kiln run", "", *_interrupted_md(record, table_rows),
             table(entries, "github", width=None), ""]
    if any(r["ms"] is not None for r in table_rows):
        lines += [TIMES_NOTE, ""]
    lines += [*after_table, *_variants_md(table_rows), *_diagnoses_md(table_rows)]
    failed = [e for e in entries if e["status"] in FAILURES]
    expected = _expected_failures(table_rows)
    if failed:
        lines += ["## Failures", ""]
        for e in failed:
            lines.append(f"- `{e['task']}` at **{e['stage']}**{_cached(e)}: {e.get('error', '')}"
                         + (f"  \n  command: `{e['command']}`" if e.get("command") else "")
                         + f"  \n  log: `{e.get('log', '')}`"
                         + (f"  \n  expected (xfail): {expected[e['task']]}"
                            if e["task"] in expected else ""))
        if any(e["status"] == Status.CACHED_FAILURE for e in failed):
            lines += ["", ("(cached): failed with the same key in an earlier run, so not run "
                           "again (`retry=failed` runs them); the log is that run's.")]
    xpass = [r for r in table_rows if r["kind"] == Kind.XPASS]
    if xpass:
        lines += ["", "## Unexpected passes (xpass)", ""]
        lines += [f"- **{r['model']} @ {r['target']}** passed; it is listed as expected to fail: "
                  f"{r['expected']}" for r in xpass]
    spent = timesplit.markdown(timesplit.of_record(record))
    lines += ["", *spent] if spent else []
    return "\n".join(lines) + "\n"


def _interrupted_md(record: dict, table_rows: list[dict]) -> list[str]:
    """A stopped run's first words: by which signal, and how many cases it left unfinished."""
    if not record.get("interrupted"):
        return []
    unfinished = sum(r["kind"] in UNFINISHED_KINDS for r in table_rows)
    return [f"**The run was interrupted ({record['interrupted']})**: {unfinished} of "
            f"{len(table_rows)} cases did not finish (interrupted, or not started). Run the "
            "same command again to finish them; what finished is kept.", ""]


def _expected_failures(table_rows: list[dict]) -> dict[str, str]:
    """task -> why it was expected to fail, for the tasks of expected failures (xfail rows)
    that no other row holds."""
    others = {e["task"] for r in table_rows if r["kind"] != Kind.XFAIL for e in r["chain"]}
    return {e["task"]: r["expected"] for r in table_rows if r["kind"] == Kind.XFAIL
            for e in r["chain"] if e["task"] not in others}


def _diagnoses_md(table_rows: list[dict]) -> list[str]:
    """What the diagnosing stages said of each failing row (bisect: its first bad dispatch),
    with their table and files."""
    said = [r for r in table_rows if r["diagnosis"]]
    if not said:
        return []
    lines = ["## Diagnoses", ""]
    for r in said:
        found = r["diagnosis"]
        lines += [f"- **{r['model']} @ {found['target']}**, {found['stage']}: {found['summary']}"]
        lines += [f"  - `{path}`" for path in found["files"]]
        lines += [f"  - log: `{found['log']}`"] if found.get("log") else []
        if found["rows"]:
            body = [[_cell(v) for v in row.values()] for row in found["rows"]]
            lines += ["", *("  " + line for line in tabulate(
                body, headers=list(found["rows"][0]), tablefmt="github").splitlines()), ""]
    return lines + [""]


def _cell(value) -> str:
    return format(value, ".3g") if isinstance(value, float) else str(value)


def _variants_md(table: list[dict]) -> list[str]:
    """Each target's variants, their outcome and time, and why the winner won."""
    picked = [r for r in table if len(r["variants"]) > 1]
    if not picked:
        return []
    lines = ["## Variants", ""]
    for r in picked:
        lines.append(f"- **{r['model']} @ {r['target']}**: {r['result'].get('why', '')}")
        for v in r["variants"]:
            ms = (v.get("latency") or {}).get("median_ms")
            lines.append(f"  - {v['variant']}: {v['outcome']}" + (f", {duration(ms)}" if ms else "")
                         + (f" ({times(v['speed_ratio'])} the framework)"
                            if v.get("speed_ratio") else ""))
        lines += [f"  - {line}" for line in r["said"]]
    return lines + [""]
