"""An upgrade's answer: what changed, per model x target, from one release of the tools to
another within one run (iree=3.12.0,3.13.0 builds each target once per release, named
'cpu+3.12.0', 'cpu+3.13.0': pipeline.names).

The two releases' builds are compared as two runs are (pipeline.report.diff: the outcome,
the error against the tolerance beyond factor=, the time per call beyond both builds'
spread), the oldest release against the newest (releases ordered by their numbers). The
answer lives in the run record under "upgrade" (the console, report.md and report.html show
it) with counts a CI job reads in one line; with it, the run's exit code is that of the new
failures only (pipeline.report.verdict): a case failing with both releases is no news, as a
listed expected failure is none (xfail).
"""
from __future__ import annotations

import re

from ..names import release_of, release_target, without_release
from . import diff

# the summary's counts: (name, the aspect of a change, its verdict there)
COUNTS = (("newly failing", "outcome", "worse"), ("newly passing", "outcome", "better"),
          ("error grown", "error", "worse"), ("error shrunk", "error", "better"),
          ("slower", "latency", "worse"), ("faster", "latency", "better"))


def releases(record: dict) -> list[str]:
    """The releases the record's targets were built with, oldest first."""
    found = {release_of(t["target"]) for t in record.get("tasks", []) if t.get("target")}
    return sorted((r for r in found if r), key=version_key)


def version_key(release: str) -> tuple:
    """'3.12.0' < '3.13.0rc20260917' < '3.13.0' (a release candidate before its release)."""
    parts = re.findall(r"\d+|[A-Za-z]+", release)
    numbers = [int(p) for p in parts if p.isdigit()][:3]
    final = not any(p.isalpha() for p in parts)
    return (*numbers, final, release)


def compare(record: dict, factor: float = diff.ERROR_FACTOR) -> dict | None:
    """What changed from the oldest release in the record to the newest (None where it holds
    fewer than two): diff.compare's answer, with "from", "to", "releases" and "counts"."""
    built = releases(record)
    if len(built) < 2:
        return None
    old, new = built[0], built[-1]
    found = diff.compare(_builds(record, old), _builds(record, new), factor,
                         f"release {old}", f"release {new}")
    found.update({"from": old, "to": new, "releases": built,
                  "counts": {name: sum((c[aspect] or {}).get("verdict") == verdict
                                       for c in found["changes"])
                             for name, aspect, verdict in COUNTS}})
    return found


def _builds(record: dict, release: str) -> dict:
    """The record as if the run had built only with this release: its targets' tasks under
    their names without it ('cpu+3.12.0' -> 'cpu'), and the models' own tasks."""
    tasks = [t if t.get("target") is None else {**t, "target": without_release(t["target"])}
             for t in record.get("tasks", [])
             if t.get("target") is None or release_of(t["target"]) == release]
    return {"tasks": tasks}


def newly_failing(found: dict, named: bool = False) -> list[str]:
    """The cases that passed with the old release and fail with the new: 'model@cpu', or
    named as the run names them, 'model@cpu+3.13.0'."""
    return [f"{c['model']}@{release_target(c['target'], found['to'])}" if named else c["case"]
            for c in found["changes"] if (c["outcome"] or {}).get("verdict") == "worse"]


def summary_line(found: dict) -> str:
    """The line a CI job reads: the counts, of how many cases."""
    counts = ", ".join(f"{n} {name}" for name, n in found["counts"].items())
    return (f"upgrade from release {found['from']} to {found['to']}: {counts} "
            f"(of {found['compared']} cases)")


def lines(found: dict) -> list[str]:
    """The console's: the summary line, then each changed case (diff.lines)."""
    return [summary_line(found), *diff.lines(found)]


def markdown(found: dict) -> list[str]:
    section = diff.markdown(found)
    return [*section[:2], summary_line(found) + ".", "", *section[2:]]
