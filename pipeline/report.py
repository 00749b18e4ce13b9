"""The summary table: one row per model x target, saying how it ended, where it stopped and
how fast the module runs against the framework itself (median times, stages/timing.py)."""
from __future__ import annotations

from tabulate import tabulate


def _fmt(value, spec=".1e"):
    return "" if value is None else format(value, spec)


def duration(ms: float | None) -> str:
    """A time with its unit and about three significant digits: '81.5 s', '132 ms', '0.05 ms'."""
    if ms is None:
        return ""
    if ms >= 1000:
        return f"{ms / 1000:.3g} s" if ms < 100_000 else f"{ms / 1000:.0f} s"
    return f"{ms:.3g} ms" if ms >= 0.01 else f"{ms * 1000:.3g} µs"


def times(ratio: float | None) -> str:
    """IREE's time over the framework's: '1.23×' (above 1, IREE is slower)."""
    return "" if ratio is None else f"{ratio:.3g}×"


def rows(entries: list[dict]) -> list[dict]:
    """Fold the run's stage entries into one row per model x target."""
    per_model = [e for e in entries if e["target"] is None]
    table = {}
    for e in entries:
        if e["target"] is not None:
            table.setdefault((e["model"], e["target"]), []).append(e)
    out = []
    for (model, target), stage_entries in sorted(table.items()):
        chain = [e for e in per_model if e["model"] == model] + stage_entries
        failed = next((e for e in chain if e["status"] == "failed"), None)
        validate = next((e for e in stage_entries if e["stage"] == "validate"), None)
        result = (validate or {}).get("result") or (failed or {}).get("result") or {}
        if failed:
            outcome = f"FAILED at {failed['stage']}: {failed.get('error', '')}"
        elif validate is None:
            outcome = "compiled"
        elif validate["status"] == "skipped":
            outcome = validate.get("reason") or "skipped"
        else:
            outcome = "passed" if result.get("passed") else "FAILED"
            if result.get("checked"):
                outcome += f" ({result['checked']})"
        counts = {}
        for e in chain:
            counts[e["status"]] = counts.get(e["status"], 0) + 1
        out.append({"model": model, "target": target, "outcome": outcome,
                    "max_abs": result.get("max_abs_error"), "max_rel": result.get("max_rel_error"),
                    "ms": result.get("latency_ms"),   # the median (older records: one figure)
                    "framework_ms": (result.get("framework_latency") or {}).get("median_ms"),
                    "ratio": result.get("speed_ratio"),
                    "stages": " ".join(f"{n} {s}" for s, n in sorted(counts.items()))})
    return out


def table(entries: list[dict], tablefmt: str = "simple", width: int | None = 90) -> str:
    body = [[r["model"], r["target"], r["outcome"][:width], _fmt(r["max_abs"]), _fmt(r["max_rel"]),
             duration(r["ms"]), duration(r["framework_ms"]), times(r["ratio"]), r["stages"]]
            for r in rows(entries)]
    return tabulate(body, tablefmt=tablefmt,
                    headers=["model", "target", "outcome", "max abs err", "max rel err",
                             "IREE time/run", "framework time/run", "IREE/framework", "stages"])


TIMES_NOTE = ("Times per run are medians of several repetitions after a warm-up, on this "
              "machine, the framework with as many threads as IREE; IREE/framework above 1× "
              "means IREE is slower. How each was measured: `latency.how` and "
              "`framework_latency.how` in build/run.json.")


def markdown(record: dict) -> str:
    """The same table for a CI summary or a pull request, with the failures spelled out."""
    if record.get("error"):
        return f"# kiln run\n\n**The run stopped before building anything:** {record['error']}\n"
    entries = record["tasks"]
    lines = ["# kiln run", "", table(entries, "github", width=None), ""]
    if any(r["ms"] is not None for r in rows(entries)):
        lines += [TIMES_NOTE, ""]
    failed = [e for e in entries if e["status"] == "failed"]
    if failed:
        lines += ["## Failures", ""]
        for e in failed:
            lines.append(f"- `{e['task']}` at **{e['stage']}**: {e.get('error', '')}"
                         + (f"  \n  command: `{e['command']}`" if e.get("command") else "")
                         + f"  \n  log: `{e.get('log', '')}`")
    return "\n".join(lines) + "\n"
