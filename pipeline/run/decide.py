"""What happens to one stage node, decided in one place.

    skip     the stage cannot run on this machine (Stage.unavailable: no device for its
             driver), or an upstream output it reads is absent (that stage failed or was
             skipped), unless the stage runs with the inputs that exist (partial_inputs),
             or it diagnoses an upstream's failure (Stage.follows) and that upstream's
             outcome, as its record entry says, is none it diagnoses (Stage.needed)
    fail     its key cannot be computed (a tool that will not say its version, a model
             file gone): it fails without running; or it failed with this very key before
             and the cache remembers that failure (a "failed (cached)" stage: the failure,
             not the tool, is what the run reports), unless retry=failed runs it again
    restore  key = hash(stage, code, params, input digests, tool versions) is in the cache
    run      otherwise; why: which part of its key differs from its last build here

Which failures are remembered is decided here too (not_a_verdict): only those that are a
verdict on the stage's inputs, never a lost device, a timeout, a killed process, or a machine
out of memory or disk.

The runner (pipeline.run.runner) acts on the Decision. `doit explain` asks for the same
Decision, with a lookup that reads only and the input digests it predicts for stages that
have not run yet, and never acts: the two cannot disagree on what a stage will do.
"""
from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

from .. import process
from ..cache.digest import digest_file, digest_source, stage_key
from ..cache.probes import tool_version
from ..cache.store import Found
from ..plan.layout import Layout
from ..stage import ModelSpec, Node, Stage, StageError, Target, read_files
from .entry import REMEMBERED_WHY, StageEntry

if TYPE_CHECKING:
    from ..plan.tasks import Job

Action = Literal["restore", "run", "skip", "fail"]
ABSENT = "absent"   # an input's digest in the key where a failed variant left no file
# key -> the whole cache entry and where it is, or None (Store.find)
Lookup = Callable[[str, tuple[str, ...]], Found | None]
# an upstream output -> the sha256 it holds (will hold) when the stage reads it; None: absent
DigestOf = Callable[[Path], str | None]


@dataclass(frozen=True)
class Decision:
    """What happens to one node and why, in the record's words."""
    action: Action
    why: str                     # why it runs / is skipped / fails; where a restore comes from
    key: str | None = None
    parts: dict | None = None    # the key's parts: the record's fingerprint, for the next why
    found: Found | None = None   # the cache entry a restore reads
    previous: StageEntry | None = None   # the node's last entry here
    detail: str = ""             # for a fail: the traceback, for the log
    absent: str | None = None    # for a skip: the input ('<upstream>/<rel>') an upstream left
    # absent (a skip that, like a remembered failure, holds while the inputs do)
    unneeded: bool = False       # for a skip: the upstream it follows did not fail in a way it
    # diagnoses (a skip that holds while that upstream's entry and the inputs do)

    @property
    def settles(self) -> bool:
        """A skip that holds while what it was decided from does (pipeline.run.uptodate)."""
        return self.action == "skip" and (self.absent is not None or self.unneeded)

    @property
    def remembered(self) -> bool:
        """It fails as it failed before with this key: found is the cache's failure entry."""
        return self.action == "fail" and self.found is not None

    def why_it_runs(self) -> str:
        """Why it would run: which part of its key differs from its last build here (also
        for a restore, whose blobs may turn out damaged, and for `doit explain`)."""
        return why_run(self.previous, self.parts or {})

    def fails_again(self) -> bool:
        """It runs with the very key its last run here failed with: a failure the cache does
        not remember (no verdict, or not stored), or one retry=failed runs again. A stage is
        a function of its key: `doit explain` expects the same failure."""
        return self.action == "run" and self.previous is not None and \
            self.previous.failed and self.previous.key == self.key


def on_disk(path: Path) -> str | None:
    """The digest of an upstream output as build/ holds it now; None when it is absent."""
    return digest_file(path) if path.is_file() else None


def decide(job: Job, layout: Layout, lookup: Lookup, digest_of: DigestOf = on_disk) -> Decision:
    """What the run does to job's node (see the module's docstring). Reads only: build/ as
    it is (or as digest_of predicts it), the node's last entry and lookup's answer."""
    previous = StageEntry.load(layout.entry_file(job.node))
    stage, model, target = job.stage, job.model, job.target
    unavailable = stage.unavailable(model, target)
    if unavailable:
        return Decision("skip", unavailable, previous=previous)
    if stage.follows:
        why_not = _not_needed(job, layout)
        if why_not:
            return Decision("skip", why_not, previous=previous, unneeded=True)
    try:
        inputs = input_digests(stage, model, target, job.upstream, job.first, digest_of)
        absent = [name for name, digest in inputs.items() if digest == ABSENT]
        if absent and not stage.partial_inputs:
            upstream, _, rel = absent[0].partition("/")
            return Decision("skip", f"skipped: {upstream} has no {rel} (it failed or was "
                            "skipped)", previous=previous, absent=absent[0])
        parts = key_parts(stage, model, target, inputs)
    except (OSError, ValueError, StageError) as err:   # (not a bug's TypeError: the runner's)
        return Decision("fail", f"cannot compute its key: {type(err).__name__}: {err}",
                        previous=previous, detail=traceback.format_exc())
    key = stage_key(stage.name, **parts)
    found = lookup(key, stage.outputs(model))
    cache = "the cache" if found is None or found.where == "local" else "the remote cache"
    if found is not None and found.failed:
        if job.retry_failed:
            return Decision("run", f"retry=failed: it failed with this same key before (its "
                            f"failure is remembered in {cache})", key, parts, None, previous)
        return Decision("fail", REMEMBERED_WHY.format(cache=cache), key, parts, found, previous)
    if found is not None:
        return Decision("restore", f"key in {cache}", key, parts, found, previous)
    return Decision("run", why_run(previous, parts), key, parts, None, previous)


# how the reason of a skip for an outcome a stage need not diagnose begins
NOT_NEEDED = "not needed: "


def _not_needed(job: Job, layout: Layout) -> str | None:
    """Why a stage that diagnoses an upstream's failure has nothing to do: that upstream's
    last outcome here (its record entry, written before this node runs) is no failure it
    diagnoses; None when it is one."""
    followed = Node(job.stage.follows, job.node.model, job.node.target)
    entry = StageEntry.load(layout.entry_file(followed))
    why = f"{followed.task_name} has no outcome here" if entry is None else \
        job.stage.needed(entry.status, entry.result)
    return None if why is None else NOT_NEEDED + why


# what a tool or the system says when the machine, not the input, failed a stage
MACHINE_TROUBLE = re.compile(r"out of memory|cannot allocate memory|bad_alloc|no space left on "
                             r"device|disk quota exceeded|read-only file system|device[ _]?lost",
                             re.IGNORECASE)


# the signals a program raises on itself when it crashes on its input (LLVM's assertion
# aborts, a segfault): deterministic, a verdict like a diagnostic (SIGBUS is left out: a
# file truncated under a mapping raises it too)
CRASHES = ("SIGABRT", "SIGSEGV", "SIGILL", "SIGFPE")


def not_a_verdict(error: BaseException, log: str = "") -> str | None:
    """Why a stage's failure says nothing about its inputs, so that it is never remembered
    (the next run tries again), or None when it is a verdict on them: the runner remembers
    it under the stage's key. Only a positive signal makes a verdict; the unknown is not one:

    - a StageError is a verdict (the stage said why: a wrong answer, an input it refuses, a
      tool that exited with a normal status and said why), unless
      - the stage marks it transient (StageError.transient: validate's lost device);
      - the tool did not exit normally (StageError.exit_code): killed by a signal (below
        0), or 128 and above (a shell's 128+N; a launcher's 256-N for its child's -N:
        iree-compile's Python launcher exits 247 when the OOM killer's SIGKILL hits it),
        but for a crash of its own (CRASHES: an abort, a segfault on this input, which the
        same input repeats; a kill, a hang-up or a stop comes from outside);
      - its message or log says the machine failed it (MACHINE_TROUBLE: out of memory, no
        space left, a read-only file system, a lost device);
    - nothing else is: a timeout (subprocess.TimeoutExpired), MemoryError, an OSError (a full
      disk, a read-only file system), KeyboardInterrupt or SIGTERM, a bug's exception. (A
      stage that runs other code in-process, a library that refuses its input, words that
      code's own refusal as a StageError: the stage, not the engine, knows whose code it is.)

    (A key that cannot be computed, and a skip, never get here: neither runs the stage.)"""
    if not isinstance(error, StageError):
        return f"{type(error).__name__} is no verdict on the stage's inputs"
    if error.transient:
        return error.transient
    if error.exit_code is not None and not 0 < error.exit_code < 128 and \
            getattr(process.signal_of(error.exit_code), "name", None) not in CRASHES:
        return f"the tool was killed (exit status {error.exit_code})"
    trouble = MACHINE_TROUBLE.search(f"{error}\n{log}")
    if trouble:
        return f"the machine failed it ({trouble.group(0)})"
    return None


def code_fingerprint(files) -> dict[str, str]:
    # keyed by 'dir/name', not the absolute path: a clone elsewhere must get the same key
    return {f"{Path(f).parent.name}/{Path(f).name}": digest_file(f) for f in files}


def input_digests(stage: Stage, model: ModelSpec, target: Target | None,
                  upstream: dict[str, tuple[Stage, Path]], first: bool,
                  digest_of: DigestOf = on_disk) -> dict[str, str]:
    """'<upstream>/<rel>' -> the digest of each upstream output stage reads (ABSENT where
    there is none), and, for the stage a model enters at, 'source:<role>' -> its files'."""
    digests = {}
    for name, (up_stage, up_dir) in sorted(upstream.items()):
        for rel in read_files(stage, model, target, name, up_stage):
            digests[f"{name}/{rel}"] = digest_of(up_dir / rel) or ABSENT
    if first:  # the stage a model enters at reads the model's own files
        for role, path in sorted(model.sources.items()):
            digests[f"source:{role}"] = digest_source(path)
    return digests


def key_parts(stage: Stage, model: ModelSpec, target: Target | None,
              inputs: dict[str, str]) -> dict:
    """The parts of the key (the record's fingerprint), given the input digests."""
    return {
        "code": code_fingerprint(stage.code_files(model)),
        "params": stage.key_params(model, target),
        "inputs": inputs,
        "tools": {t: tool_version(t, target and target.toolchain) for t in stage.tools(model)},
    }


def compute_key(stage: Stage, model: ModelSpec, target: Target | None,
                upstream: dict[str, tuple[Stage, Path]], first: bool,
                digest_of: DigestOf = on_disk) -> tuple[str, dict]:
    """(key, its parts) of a stage reading upstream's outputs."""
    parts = key_parts(stage, model, target,
                      input_digests(stage, model, target, upstream, first, digest_of))
    return stage_key(stage.name, **parts), parts


def why_run(previous: StageEntry | None, now: dict) -> str:
    """Why a stage has to run: which part of its key (now: its parts) differs from its last
    build here (previous: that run's entry)."""
    before = previous.fingerprint if previous is not None else None
    if not before:
        return "no earlier build of this stage here and none in the cache"
    changes = []
    for part in ("code", "params", "inputs", "tools"):
        old, new = before.get(part) or {}, now[part]
        names = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
        if names:
            changes.append(f"{part}: {', '.join(names)}")
    if changes:
        return "changed " + "; ".join(changes)
    if previous.failed:
        return ("its last run failed with this same key, and the cache remembers no failure "
                "for it (a timeout, a lost device, no memory or disk: no verdict on its inputs)")
    return "key unchanged but not in the cache (cleared, or another store)"
