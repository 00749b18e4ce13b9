"""The run's verdict: which model x target cases failed or passed against what was expected
(pipeline.plan.xfail), and the exit code that follows from it.

A pure function of the run record, so the console, the exit code and the tests agree: doit
exits non-zero exactly when some case failed unexpectedly (in a run comparing two releases,
iree=A,B: a case the newer release fails that the older passed: pipeline.report.upgrade),
or, with strict=1 (the record's "strict"), passed unexpectedly, or when the run was stopped (the record's "interrupted",
whose unfinished cases are named). A listed case that failed is `xfail`, one that passed
`xpass` (pipeline.report.table.rows decides each row's kind).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..run.entry import FAILURES
from ..vocab import Kind
from . import table
from .table import UNFINISHED_KINDS


@dataclass(frozen=True)
class Verdict:
    failed: tuple[str, ...]           # cases that failed unexpectedly ('model@target')
    xfail: tuple[str, ...]            # listed cases that failed, as expected
    xpass: tuple[tuple[str, str], ...]   # listed cases that passed: (case, why it was listed)
    strict: bool = False              # an unexpected pass fails the run too
    unfinished: tuple[str, ...] = ()  # cases a stopped run left unfinished
    interrupted: str | None = None    # the signal that stopped the run (SIGINT, SIGTERM)
    # a run comparing two releases: the failed cases that are no new failure of the newer
    known: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        """Non-zero for a stopped run even where every case it finished passed: CI must not
        take what did not run for a pass."""
        return 1 if self.failed or self.interrupted or (self.strict and self.xpass) else 0


def verdict(record: dict) -> Verdict:
    """The record's verdict. A failed task that no case holds (a model's front end where
    no target was selected) is an unexpected failure under its task's name; so is a run
    stopped before any stage (the record's "error")."""
    tasks = record.get("tasks", [])
    rows = table.rows(tasks)
    named = {kind: tuple(f"{r['model']}@{r['target']}" for r in rows if r["kind"] == kind)
             for kind in (Kind.FAILED, Kind.XFAIL)}
    in_cases = {r["model"] for r in rows}
    stray = tuple(t["task"] for t in tasks
                  if t["status"] in FAILURES and t["model"] not in in_cases)
    stopped = ("the run (stopped before any stage)",) if record.get("error") else ()
    xpass = tuple((f"{r['model']}@{r['target']}", r["expected"]) for r in rows
                  if r["kind"] == Kind.XPASS)
    unfinished = tuple(f"{r['model']}@{r['target']}" for r in rows if r["kind"] in UNFINISHED_KINDS)
    failed, known = named[Kind.FAILED], ()
    if record.get("upgrade"):   # two releases compared: only what the newer one broke
        from .upgrade import newly_failing
        failed = tuple(newly_failing(record["upgrade"], named=True))
        known = tuple(case for case in named[Kind.FAILED] if case not in failed)
    return Verdict(failed + stray + stopped, named[Kind.XFAIL], xpass,
                   bool(record.get("strict")), unfinished, record.get("interrupted"), known)


def lines(found: Verdict) -> list[str]:
    """What the console says of the expectations beside the counts (the summary line:
    pipeline.report.console): each unexpected pass by name."""
    return [f"xpass: {case} passed, but is listed as expected to fail ({why})"
            + (" - strict=1: this fails the run" if found.strict else "")
            for case, why in found.xpass]
