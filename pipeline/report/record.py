"""The run record: build/run.json, report.md and report.html, written at the end of every run.

The runner leaves one entry per executed stage under build/.kiln/tasks/; this reporter adds
what only doit knows (which tasks it skipped as up-to-date, which never ran because an
upstream task failed) and where the time went (pipeline.report.timesplit), writes the record
atomically and prints the summary table.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..cache.files import atomic_write, describe_os_error, read_only, stat_of
from .console import DEFAULT_CASES

if TYPE_CHECKING:   # (loaded by entry_of: a no-op run after a no-op run builds no record)
    from ..run.entry import StageEntry


@dataclass
class RunLog:
    """What this doit invocation learns as it goes, for the reporter."""
    entries: dict[str, StageEntry] = field(default_factory=dict)   # this run's, by task
    warnings: list[str] = field(default_factory=list)        # run-level (a .doit.db moved aside)
    previous: dict[str, dict] = field(default_factory=dict)  # up-to-date tasks' last entries,
    # as doit saved them (StageEntry.to_dict)
    settled: set[str] = field(default_factory=set)   # tasks reported as their settled outcome
    # (pipeline.run.uptodate.settled): their entries are their entry files'


def entry_of(task, fresh: dict[str, StageEntry], previous: dict[str, dict]) -> dict | None:
    """The task's record row (StageEntry.to_record): its entry from this run (in memory),
    else its last run's: as doit saved it (read by the up-to-date check), else as the runner
    wrote it. The key's parts and the outputs' stats stay in build/.kiln."""
    info = (task.meta or {}).get("kiln")
    if info is None:
        return None
    from ..run.entry import StageEntry  # (here: a no-op run after a no-op run builds no
    from ..stage import Node  # record, and defining them is a tenth of its imports)
    entry = fresh.get(task.name)
    if entry is None:
        node = Node(info["stage"], info["model"], info["target"])
        if task.name in previous:
            entry = StageEntry.from_dict(previous[task.name], node)
        else:
            entry = StageEntry.load(Path(info["entry"]), node)
    entry.role = info.get("role")   # the plan's word (an entry older than roles has none)
    row = entry.to_record()
    if info.get("xfail"):   # the plan's too: why this model x target is expected to fail
        row["xfail"] = info["xfail"]
    if info.get("stands_for"):   # the model's stages it stands for in its row
        row["stands_for"] = info["stands_for"]
    return row


class Summary(NamedTuple):
    """What a run ends with: the text to print and the exit code its verdict calls for
    (pipeline.report.verdict)."""
    text: str
    exit_code: int


def _summary(record: dict, limit: int, report_file: str) -> tuple[str, str, int]:
    """What the console shows at the end of a run (pipeline.report.console): the table, or
    past `limit` cases where it is, the unexpected failures and passes, each warning once,
    the remote, where the time went; the summary line; and the exit code."""
    # (tabulate, which console uses: not needed when the summary is the last run's)
    from . import console, timesplit, verdict
    tasks = record["tasks"]
    found = verdict.verdict(record)
    lines, summary_line = console.lines(record, found, limit, report_file)
    if record.get("diff"):   # baseline=: what changed since that run (pipeline.report.diff)
        from . import diff
        lines += diff.lines(record["diff"])
    if record.get("upgrade"):   # iree=A,B: what changed from one release to the other
        from . import upgrade
        lines += upgrade.lines(record["upgrade"])
    for warning, names in _warnings(tasks).items():
        more = f" (and {len(names) - 1} more tasks)" if len(names) > 1 else ""
        lines.append(f"warning: {names[0]}{more}: {warning}")
    lines += [f"warning: {warning}" for warning in record.get("warnings", [])]
    if any("remote" in t for t in tasks):
        lines.append(_remote_line(tasks))
    lines += timesplit.console_lines(record.get(timesplit.FIELD))
    return "\n".join(lines) + "\n", summary_line + "\n", found.exit_code


def publish(run_file: Path, record: dict, stamp: dict | None = None,
            limit: int = DEFAULT_CASES) -> Summary:
    """Write the record and its reports; return the summary to print. A record identical
    to the last one (a no-op run) whose files are still as written, and shown with the same
    limit of cases to a table, reuses them. stamp: what an all-up-to-date record was made
    from, kept for the next run's reuse()."""
    memo_file = _memo_file(run_file)
    record = _with_stage_times(record)
    # compact JSON for the comparison: the C encoder, several times faster than indent=1's
    digest = hashlib.sha256(json.dumps([record, limit], separators=(",", ":")).encode()).hexdigest()
    memo = _intact_memo(memo_file)
    if memo is not None and memo["record"] == digest:
        if memo.get("stamp") != stamp:
            _save_memo(memo_file, {**memo, "stamp": stamp})
        return Summary(memo["text"], memo["exit"])
    text, summary_line, exit_code = _summary(record, limit, str(run_file.with_name("report.md")))
    line, written = _write_record(run_file, record)
    text += line + "\n" + summary_line
    if written:
        _save_memo(memo_file, {"record": digest, "text": text, "stamp": stamp,
                               "exit": exit_code, "files": {str(f): stat_of(f) for f in written}})
    return Summary(text, exit_code)


def _with_stage_times(record: dict) -> dict:
    """The record with where its time went (pipeline.report.timesplit), when this run did
    anything: a no-op run's record stays as it was, and so does its digest."""
    from . import timesplit  # (here: a no-op run after a no-op run reads only this module)
    spent = timesplit.split(record["tasks"])
    return {**record, timesplit.FIELD: spent} if spent else record


def reuse(run_file: Path, stamp: dict) -> Summary | None:
    """The last run's summary when its record was made from what stamp names (the same
    task list and warnings over the same doit database: the same record) and its files are
    as written, else None. A no-op run after a no-op run neither builds nor hashes its
    record: with the results of a few hundred tasks that is a tenth of the run."""
    memo = _intact_memo(_memo_file(run_file))
    return Summary(memo["text"], memo["exit"]) \
        if memo is not None and memo.get("stamp") == stamp else None


def _memo_file(run_file: Path) -> Path:
    return run_file.parent / ".kiln" / "summary.json"


def _intact_memo(memo_file: Path) -> dict | None:
    """The summary memo when the files it names are still as written, else None."""
    try:
        memo = json.loads(memo_file.read_bytes())
        if all(stat_of(f) == st for f, st in memo["files"].items()):
            memo["record"], memo["text"], memo["exit"]   # noqa: B018 (all present)
            return memo
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def _save_memo(memo_file: Path, memo: dict) -> None:
    with contextlib.suppress(OSError):
        atomic_write(memo_file, json.dumps(memo).encode())




def _warnings(tasks: list[dict]) -> dict[str, list[str]]:
    """Each distinct warning once, with the tasks that gave it (a read-only cache warns in
    every stage; the console says it once)."""
    seen: dict[str, list[str]] = {}
    for task in tasks:
        for warning in task.get("warnings", []):
            seen.setdefault(warning, []).append(task["task"])
    return seen


def _remote_line(tasks: list[dict]) -> str:
    """One line for the shared cache: what this run took from it, missed and gave it."""
    counts = {o: sum(t.get("remote") == o for t in tasks) for o in ("hit", "miss", "error", "stored")}
    return (f"remote cache: {counts['hit']} hits, {counts['miss']} misses, {counts['error']} "
            f"errors, {counts['stored']} stored")


def _write_record(run_file: Path, record: dict) -> tuple[str, list[Path]]:
    """Write run.json, report.md, report.html and junit.xml: (the line to print about it,
    the files written)."""
    from . import diff, html, junit, table, upgrade  # (tabulate; matplotlib where a chart is drawn)
    written = [run_file, run_file.with_name("report.md"), run_file.with_name("report.html"),
               run_file.with_name("junit.xml")]
    changes = [*(diff.markdown(record["diff"]) if record.get("diff") else []),
               *(upgrade.markdown(record["upgrade"]) if record.get("upgrade") else [])]
    try:
        atomic_write(run_file, json.dumps(record, indent=1).encode())
        atomic_write(written[1], table.markdown(record, after_table=changes).encode())
        # charts whose data did not change come from the memo: a no-op run draws nothing
        page = html.page(record, memo=run_file.parent / ".kiln" / "charts",
                         draw_charts=html.charts_wanted())
        atomic_write(written[2], page.encode())
        atomic_write(written[3], junit.xml(record))
    except OSError as err:
        return f"kiln: the run record was not written: {describe_os_error(err)}", []
    return f"run record: {run_file}", written


def rewrite(run_file: Path, record: dict) -> str:
    """Write a record and its reports again, as they are (`doit diff` adds to the last run's
    what changed since a baseline): the line saying where, or why they were not written. The
    summary memo then no longer matches its files: the next run writes them again."""
    return _write_record(run_file, record)[0]


def write_failed_run(run_file: Path, error: str) -> None:
    """A run stopped before any stage (a config or command-line error) still leaves a
    record, so CI never publishes the previous run's results as this one's. Not in
    read-only mode (`doit explain`: the error still stops it; it runs nothing)."""
    if read_only():
        return
    _write_record(run_file, {"tasks": [], "error": error})
