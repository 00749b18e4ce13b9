"""The words the engine, the stages and the report share, as StrEnums: a typo is an
AttributeError, not a silently different string. A member is a str: run.json, entry files,
doit's values and the plan memo hold its plain string, which compares equal to the member,
so what kiln writes is the same as when these were bare strings. This module imports nothing
of kiln (every run imports it, and pipeline.stage re-exports Role for stages/).
"""
from __future__ import annotations

import enum
from typing import Required, TypedDict


class Status(enum.StrEnum):
    """What a run did to a stage task. A StrEnum: run.json, entry files and doit's values
    hold the plain string, which compares equal to the member (and reads back as one)."""
    RAN = "ran"
    CACHED = "cached"                     # its outputs came from the cache
    SKIPPED = "skipped"
    FAILED = "failed"
    # failed with this same key before: the failure came from the cache, the stage did not run
    CACHED_FAILURE = "failed (cached)"
    UP_TO_DATE = "up-to-date"             # doit found it up to date: kiln was not asked
    # the run was stopped (Ctrl-C, SIGTERM: pipeline.process) while it ran, or before it
    # started: neither is a verdict, neither is remembered, the next run does them
    INTERRUPTED = "interrupted"
    NOT_STARTED = "not started"


class Role(enum.StrEnum):
    """What the report reads a stage's entries as (Stage.role). A StrEnum: run.json and the
    plan carry it as its plain string, which compares equal to the member."""
    MODULE = "module"          # it builds the deployable module: codegen
    VERDICT = "verdict"        # it says whether a model x target passed: validate
    CHOICE = "choice"          # it picks among a target's variants, whose verdict it is: pick
    DIAGNOSIS = "diagnosis"    # it explains another stage's failure (never a row's outcome)
    EMITTED = "emitted"        # it publishes the MLIR every target's lowering starts from: emit


class Kind(enum.StrEnum):
    """A report row's kind: how a model x target case ended, in the order the summaries
    count them (pipeline.report.table.rows decides it; pick writes it of each variant)."""
    PASSED = "passed"
    FAILED = "failed"
    XFAIL = "xfail"          # listed as expected to fail (pipeline.plan.xfail), and failed
    XPASS = "xpass"          # listed, and passed
    SKIPPED = "skipped"
    COMPILED = "compiled"    # compiled only (doit compile): no verdict asked
    # a stopped run's unfinished cases: a stage of theirs interrupted, or not started (the
    # status of that stage is the row's kind)
    INTERRUPTED = "interrupted"
    NOT_STARTED = "not started"


class TaskInfo(TypedDict, total=False):
    """What the plan tells doit, and the report, of one stage task: its `meta["kiln"]`
    (pipeline.plan.tasks makes it; the session, the reporter and the record read it). A
    TypedDict: it travels as a plain dict through doit's database and the plan memo."""
    stage: Required[str]
    model: Required[str]
    target: Required[str | None]
    entry: Required[str]          # its record entry file (build/.kiln/tasks/<task>.json)
    out_dir: Required[str]        # its outputs' directory in build/
    watched: Required[str]        # digest of its key's params, tools and code (the memo's check)
    role: str                     # its Role (as plain text: the memo marshals it), if any
    soft_deps: list[str]          # files it reads where they exist (a failed variant's do not)
    soft: bool                    # a variant's own stage: its failure fails no case
    followed: bool                # another stage diagnoses its failure (bisect follows validate)
    xfail: str                    # the reason its case is expected to fail
    stands_for: list[str]         # per-model stages it stands for in its row (Stage.stands_for)
