"""The tuning result of one dispatch, kept by content in kiln's store (and so in the remote
cache behind it): a shape that repeats within a model or across models is searched once,
and once per team.

The key hashes what decides the search's answer and nothing else: the dispatch's source
before configuration (iree-compile's `--iree-hal-dump-executable-sources-to`, its executable
name made neutral, so the same shape at another position or in another model has the same
key; it holds the target CPU and its features), the compiler's version, the CPU, the thread
count the dispatch is measured with, the search's own version, and the start flags. The
value is the store's result metadata (no output files): the winning edits or none, and what
was tried. Only a search that ran to its end is kept: one the budget cut short is not an
answer.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from pipeline.cache.digest import canonical, digest_bytes
from stages import tune_knobs

# a change to the candidates or to the rule that decides a winner: every dispatch again
SEARCH_VERSION = 3
NAMESPACE = "kiln-tune-dispatch"


@dataclass
class Outcome:
    """One dispatch's search: the compiler's configuration, the winner's edits (none: the
    compiler's choice stood), and the evidence."""
    default: str                                  # the root op's lowering_config, as dumped
    winner: str | None = None                     # its label, e.g. "distribution [64, 16, 0]"
    edits: list[list[str]] = field(default_factory=list)   # [[old, new], ...]
    default_ms: float | None = None               # the dispatch's median time, compiler's config
    alone_ms: float | None = None                 # its first time alone: its share (kept as is)
    winner_ms: float | None = None
    searched: bool = False                        # False: only its time was taken (its share)
    tried: int = 0                                # candidates compiled
    failed: int = 0                               # of those, how many did not compile
    measured: list[dict] = field(default_factory=list)   # label, median ms, ratio to default
    seconds: float = 0.0                          # what the search cost

    def as_dict(self) -> dict:
        return asdict(self)


def neutral_source(source: str, executable: str) -> str:
    """The dispatch's source with its executable's name (`main$async_dispatch_12`) replaced,
    so that the same dispatch elsewhere reads the same."""
    return re.sub(re.escape(executable) + r"(?![0-9])", "EXECUTABLE", source)


def dispatch_key(source: str, executable: str, compiler: str, cpu: str, threads: int,
                 flags: list[str]) -> str:
    fields = {"namespace": NAMESPACE, "search": SEARCH_VERSION, "compiler": compiler,
              "cpu": cpu, "threads": threads, "flags": flags,
              "source": digest_bytes(neutral_source(source, executable).encode())}
    return digest_bytes(canonical(fields).encode())


def recall(store, key: str) -> tuple[Outcome, str] | None:
    """(the search kept under key, "local" or "remote"), or None (a miss, no store, or an
    entry not of this shape)."""
    found = recalled(store, key, "tune")
    try:
        return (Outcome(**found[0]), found[1]) if found else None
    except TypeError:
        return None


def keep(store, key: str, outcome: Outcome) -> None:
    """Store the finished search under key (locally, and remotely in write mode)."""
    remember(store, key, "tune", outcome.as_dict())


def whole_key(flow_digest: str, answers: list[tuple[str, list]], compiler: str, threads: int,
              flags: list[str]) -> str:
    """The key of a whole-module check: the module's flow, the dispatches' answers applied
    (their keys and edits), and what the measurement depends on."""
    fields = {"namespace": NAMESPACE + "-whole", "search": SEARCH_VERSION, "flow": flow_digest,
              "answers": sorted(answers), "compiler": compiler, "threads": threads,
              "flags": flags}
    return digest_bytes(canonical(fields).encode())


def knobs_key(model_digest: str, compiler: str, cpu: str, threads: int, flags: list[str],
              limit: int, rivals: list[list[str]]) -> str:
    """The key of a model's whole-model race (the start's rival variants, then the knobs of
    stages/tune_knobs.py): the model before any target's flags, the start's flags and its
    rivals', the knobs tried, and what the measurement depends on."""
    fields = {"namespace": NAMESPACE + "-knobs", "version": tune_knobs.KNOBS_VERSION,
              "model": model_digest, "compiler": compiler, "cpu": cpu, "threads": threads,
              "flags": flags, "rivals": rivals, "knobs": [list(k.flags) for k, _ in
                                        tune_knobs.candidates(flags, limit)]}
    return digest_bytes(canonical(fields).encode())


def recalled(store, key: str, kind: str) -> tuple[dict, str] | None:
    """(the value kept under key as kind, where it was found), or None."""
    found = store.find(key, ()) if store is not None else None
    if found is None or found.failed or found.entry["outputs"]:
        return None
    meta = store.restore(key, found.entry, store.root)   # no outputs: its verified metadata
    value = (meta or {}).get(kind)
    return (value, found.where) if isinstance(value, dict) else None


def remember(store, key: str, kind: str, value: dict) -> None:
    if store is not None:
        store.save(key, store.root, {}, {kind: value})
