"""A stage task's record entry: what one run did to one stage node, typed.

The runner fills one in; it is written to build/.kiln/tasks/<task>.json (with the key's
parts, for the next run's "why", each output's stat, for the intact check, and what a settled
outcome was a verdict on, for pipeline.run.uptodate.settled), saved by doit as the task's
values (without the key's parts and the verdict's makings), sent back by a Dask worker, and
becomes one row of build/run.json (without any of them). to_dict is the one serializer for
all of them; from_dict reads any of them back, entries older kilns wrote included.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..vocab import Status
from .intact import is_output_stats

if TYPE_CHECKING:   # (only its attributes are read: pipeline.stage's dataclasses are a third
    from ..stage import Node  # of what a no-op run would import of kiln, and it needs none)

FAILURES = (Status.FAILED, Status.CACHED_FAILURE)   # the statuses of a stage that failed
# why a stage is Status.CACHED_FAILURE (cache: "the cache" or "the remote cache")
REMEMBERED_WHY = ("failed with this same key before: its failure is remembered in {cache} "
                  "(retry=failed runs it again)")
UNFINISHED = (Status.INTERRUPTED, Status.NOT_STARTED)
# written even when None: a per-model stage has no target; a skipped one no key
ALWAYS = ("target", "key")
RESULT_TEXT = "result_json"   # the result as JSON text, in doit's values (to_dict)


def remembered_lines(why: str, log: str) -> list[str]:
    """The log lines of a Status.CACHED_FAILURE: why, then the log of the run that failed."""
    return [f"{Status.CACHED_FAILURE}: {why}; the log of that run:", *([log] if log else [])]


@dataclass
class StageEntry:
    """What one run did to one stage task; unset parts are None (or no warnings)."""
    task: str
    stage: str
    model: str
    target: str | None
    role: str | None = None          # what the report reads it as (Stage.role), from the plan
    key: str | None = None
    status: Status | None = None     # once the run decided
    why: str | None = None           # why it ran: which part of its key changed
    reason: str | None = None        # why it was skipped
    error: str | None = None         # why it failed (failed (cached): why it failed then)
    command: str | None = None       # the command that failed, if one did
    result: dict | None = None       # what the stage returned (validate's numbers)
    remote: str | None = None        # the remote cache: hit, miss, error or stored
    worker: str | None = None        # the Dask worker it ran on
    warnings: list[str] = field(default_factory=list)
    seconds: float | None = None
    # of seconds, how long the processes it started ran (a compiler, a runtime; parallel
    # ones add up): the rest is kiln's and the framework's own Python (pipeline.process)
    tool_seconds: float | None = None
    log: str | None = None           # its log, relative to the project
    fingerprint: dict | None = None  # the key's parts (the entry file only)
    outputs: dict[str, list] | None = None   # rel -> [digest, size, mtime_ns] (not run.json)
    # a settled outcome's makings, {"watched", "inputs", "cache"}: while they hold, the next
    # run reports it again without a plan (pipeline.run.uptodate.settled; the entry file only)
    verdict_on: dict | None = None

    @property
    def failed(self) -> bool:
        """It failed: in this run, or before with the same key (Status.CACHED_FAILURE)."""
        return self.status in FAILURES

    @property
    def unfinished(self) -> bool:
        """The run was stopped while it ran, or before it started (UNFINISHED)."""
        return self.status in UNFINISHED

    @classmethod
    def of(cls, node: Node) -> StageEntry:
        """A node's entry before anything happened to it."""
        return cls(node.task_name, node.stage, node.model, node.target)

    def to_dict(self, fingerprint: bool = True, outputs: bool = True,
                result_text: bool = False) -> dict:
        """The entry as JSON-ready data, leaving out what is unset: the entry file keeps
        everything; doit's values leave the fingerprint (and verdict_on: both are what the
        key was made of) out; run.json's row the outputs too.
        result_text: the result as JSON text (RESULT_TEXT), as doit's values keep it: doit
        decodes every task's row on every run, the up-to-date check needs none of the
        result, and a validate result's nested fields were a third of a no-op's decoding."""
        data = {name: value for name, value in vars(self).items()
                if value is not None and value != [] or name in ALWAYS}
        if not fingerprint:
            data.pop("fingerprint", None)
            data.pop("verdict_on", None)
        if not outputs:
            data.pop("outputs", None)
        if result_text and "result" in data:
            data[RESULT_TEXT] = json.dumps(data.pop("result"), separators=(",", ":"))
        return data

    def to_record(self) -> dict:
        """run.json's row: what happened, without the key's parts and the outputs' stats;
        its role even when None (the stage declares none)."""
        return {**self.to_dict(fingerprint=False, outputs=False), "role": self.role}

    @classmethod
    def from_dict(cls, data, node: Node | None = None) -> StageEntry | None:
        """An entry as any kiln left it (an entry file, doit's saved values, a worker's
        report, a run.json row), node's identity filling in what it lacks; None when it is
        no entry at all. Unknown keys are dropped; a part that is not what this kiln writes
        (outputs as bare digests, from before they carried a stat) is left unset, which
        every reader takes as "not known"."""
        data = data if isinstance(data, dict) else {}
        if isinstance(data.get(RESULT_TEXT), str):   # doit's values (to_dict(result_text=True))
            data = {**data, "result": _json_or_none(data[RESULT_TEXT])}
        if node is not None:
            data = {"task": node.task_name, "stage": node.stage, "model": node.model,
                    "target": node.target, **data}
        if not all(isinstance(data.get(k), str) for k in ("task", "stage", "model")):
            return None
        known = {name: value for name, value in data.items()
                 if name in _FIELDS and value is not None}
        for name in known.keys() & _VALID.keys():
            if not _VALID[name](known[name]):
                del known[name]
        if "status" in known:   # (JSON holds the plain string)
            known["status"] = Status(known["status"])
        return cls(**{"target": None, **known})

    @classmethod
    def load(cls, path: Path, node: Node | None = None) -> StageEntry | None:
        """The entry file at path, as from_dict reads it (an absent or unreadable file: no
        data, so node's bare identity, or None without a node)."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = None
        return cls.from_dict(data, node)

    def to_json(self) -> bytes:
        """The entry file's bytes."""
        return json.dumps(self.to_dict(), indent=1).encode()

    def log_text(self, lines: list[str]) -> bytes:
        """Its log file: what happened (task, status, key, error, command), then lines."""
        head = [f"task: {self.task}", f"status: {self.status}", f"key: {self.key}"]
        if self.error:
            head.append(f"error: {self.error}")
        if self.command:
            head.append(f"command: {self.command}")
        return ("\n".join(head + [""] + lines) + "\n").encode()

    def failure_message(self) -> str:
        """What doit's TaskFailed says of a failed stage: its error, command and log."""
        detail = f"\n  command: {self.command}" if self.command else ""
        again = "\n  (its failure with this same key, from the cache: retry=failed runs it " \
            "again)" if self.status == Status.CACHED_FAILURE else ""
        return f"{self.task} {self.status} at {self.stage}: {self.error}{detail}\n  log: " \
            f"{self.log}{again}"


def _json_or_none(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None   # (a damaged row: the result is left unset, as from_dict does)


_FIELDS = frozenset(f.name for f in dataclasses.fields(StageEntry))
_STATUSES = frozenset(Status)


# what each part must look like to be believed (anything else: an older or damaged entry)
_VALID = {
    "status": lambda v: isinstance(v, str) and v in _STATUSES,
    "fingerprint": lambda v: isinstance(v, dict),
    "verdict_on": lambda v: isinstance(v, dict),
    "outputs": is_output_stats,
    "warnings": lambda v: isinstance(v, list),
    "result": lambda v: isinstance(v, dict),
    "seconds": lambda v: isinstance(v, (int, float)),
    "tool_seconds": lambda v: isinstance(v, (int, float)),
}
