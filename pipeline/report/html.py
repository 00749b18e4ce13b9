"""build/report.html: the run record as one self-contained page, for a person to read.

A view of the record dict that build/run.json holds ({"tasks": [...], "warnings"?, "error"?,
"interrupted"?: a stopped run, said first, its unfinished cases coloured as such}):
the model x target matrix coloured by outcome (a failure's stage, error and log one click
away), time per stage (and how much of it the tools took: pipeline.report.timesplit), the
compiled module's latency against the framework's own, the numerical error against the
tolerance, and what this run ran and what it reused, and why.
It names no stage: what a cell's outcome rests on comes from the roles stages declare
(table.rows), the stages' order from the record's.

The page's markup is templates/report.html.j2 (Jinja2, autoescaped); this module computes
what it shows (plain dicts and lists: the view model) and renders it. Jinja2 is imported
only when a page is written: a no-op run reuses the last page (pipeline/report/record.py).

Charts are matplotlib SVG inlined in the page (no script, no network, nothing to fetch). They
are byte-stable (fixed id salt, no date), so a chart whose data did not change is taken from
a memo instead of drawn again: a no-op run never imports matplotlib, which costs about half a
second.
"""
from __future__ import annotations

import functools
import graphlib
import hashlib
import io
import itertools
import json
import math
import os
import posixpath
import re
import warnings
from pathlib import Path
from urllib.parse import quote

from ..run.entry import FAILURES
from ..vocab import Kind, Status
from . import diff, table, timesplit, upgrade
from .table import UNFINISHED_KINDS
from .units import duration

# the order they are listed
STATUSES = (Status.FAILED, Status.CACHED_FAILURE, Status.INTERRUPTED, Status.NOT_STARTED,
            Status.RAN, Status.CACHED, Status.UP_TO_DATE, Status.SKIPPED)
KINDS = tuple(Kind)   # a matrix cell's outcome
PASSED = (Kind.PASSED, Kind.XPASS)                                     # the kinds that passed
# "off" leaves the charts out (matplotlib costs a second or two a page): for runs whose page
# nobody looks at, such as the test suite's hundreds of small builds
CHARTS_ENV = "KILN_REPORT_CHARTS"


def charts_wanted(environ=None) -> bool:
    return (os.environ if environ is None else environ).get(CHARTS_ENV, "on").lower() \
        not in ("off", "0", "no", "false")


TEMPLATE = Path(__file__).with_name("templates") / "report.html.j2"
ERROR_FIELDS = ("max_abs_error", "atol", "max_rel_error", "rtol")    # a result's numbers


def page(record: dict, memo: Path | None = None, page_dir: str = "build",
         draw_charts: bool = True) -> str:
    """The whole page. memo: a directory for drawn charts (None: always draw). page_dir: where
    the page lies relative to the project root, which the record's log paths are relative to.
    draw_charts False (KILN_REPORT_CHARTS=off): the page says where each chart would be."""
    if record.get("error"):
        return _render(stopped=record["error"])
    entries = record.get("tasks", [])
    cells = _cells(entries)
    charts = _Charts(memo, draw_charts)
    view = {"summary": _summary(cells, entries), "warnings": _warnings(record, entries),
            "interrupted": _interrupted(record, cells),
            "changes": [c for c in (_changes(record.get("diff")),
                                    _changes(record.get("upgrade"))) if c],
            "matrix": _matrix(cells, page_dir), "diagnoses": _diagnoses(cells, page_dir, charts),
            "times": _times(cells, charts),
            "stage_times": timesplit.html_rows(timesplit.of_record(record)),
            "stage_times_note": timesplit.NOTE,
            "latency": _latency(cells, charts), "variants": _variants(cells),
            "errors": _errors(cells, charts), "tasks": _tasks(entries, page_dir)}
    charts.forget_unused()
    return _render(stopped=None, **view)


def _render(**view) -> str:
    return _environment().get_template(TEMPLATE.name).render(view)


@functools.cache   # compiling the template takes about 40 ms: once per process
def _environment():
    import jinja2  # here, not at the top: only a page written needs it (about 50 ms)
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent), autoescape=True,
        undefined=jinja2.StrictUndefined,   # a name the view lacks is an error, not ""
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


# --- the record, one cell per model x target ------------------------------------------------

def _cells(entries: list[dict]) -> list[dict]:
    """table.rows (the table's outcome and what it rests on) with the page's labels and
    the timings."""
    return [{**row, "label": f"{row['model']} @ {row['target']}",
             **_timing(row["result"])} for row in table.rows(entries)]


def _timing(result: dict) -> dict:
    """The timing schema's fields, from a record of any age: the one place older records are
    read (those before the timing schema have only latency_ms and timing, and no ratio)."""
    latency = result.get("latency") or {}
    framework = result.get("framework_latency") or {}
    ms = _number(latency.get("median_ms"))
    if ms is None:
        ms = _number(result.get("latency_ms"))
    fw_ms = _number(framework.get("median_ms"))
    ratio = _number(result.get("speed_ratio"))
    if ratio is None and ms and fw_ms:
        ratio = ms / fw_ms
    return {"iree_ms": ms, "iree_min": _number(latency.get("min_ms")),
            "iree_max": _number(latency.get("max_ms")), "iree_how": latency.get("how") or
            result.get("timing"), "fw_ms": fw_ms, "fw_min": _number(framework.get("min_ms")),
            "fw_max": _number(framework.get("max_ms")), "fw_how": framework.get("how"),
            "fw_why": result.get("framework_latency_why"), "ratio": ratio}


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def _href(entry: dict | None, page_dir: str) -> str | None:
    """The link to an entry's log, relative to the page (None: it has none)."""
    if not entry or not entry.get("log"):
        return None
    return quote(posixpath.relpath(Path(entry["log"]).as_posix(), page_dir))


# --- the sections' data, in the page's order -----------------------------------------------

def _summary(cells: list[dict], entries: list[dict]) -> dict:
    """How many model x target ended how, and how many stages did what: (name, count) pairs."""
    kinds = _count(c["kind"] for c in cells)
    statuses = _count(e["status"] for e in entries)
    return {"cells": len(cells),
            "kinds": [(k, css_class(k), kinds[k]) for k in KINDS if k in kinds],
            "stages": len(entries),
            "statuses": [(s, css_class(s), statuses[s]) for s in STATUSES if s in statuses]}


def _interrupted(record: dict, cells: list[dict]) -> dict | None:
    """A stopped run's banner: by which signal, how many of its cases did not finish."""
    if not record.get("interrupted"):
        return None
    return {"signal": record["interrupted"], "cells": len(cells),
            "unfinished": sum(c["kind"] in UNFINISHED_KINDS for c in cells)}


def _count(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def _warnings(record: dict, entries: list[dict]) -> list[str]:
    """The run's warnings, then each stage warning once, with the first task that gave it."""
    lines = list(record.get("warnings") or [])
    seen: dict[str, list[str]] = {}
    for e in entries:
        for warning in e.get("warnings") or []:
            seen.setdefault(warning, []).append(e["task"])
    return lines + [f"{tasks[0]}{f' (and {len(tasks) - 1} more)' if len(tasks) > 1 else ''}: {w}"
                    for w, tasks in seen.items()]


def _changes(found: dict | None) -> dict | None:
    """What changed since the baseline (pipeline.report.diff): the headline, a row per changed
    case (its verdict, and what changed in its outcome, error and time), the notes, the rule
    (None: no baseline was given)."""
    if not found:
        return None
    rows = [{"case": c["case"], "model": c["model"], "target": c["target"],
             "verdict": c["verdict"],
             **{aspect: (c[aspect] or {}).get("text", "") for aspect in diff.ASPECTS},
             **{f"{aspect}_verdict": (c[aspect] or {}).get("verdict", "")
                for aspect in diff.ASPECTS}}
            for c in found["changes"]]
    return {"title": diff.title(found), "headline": diff.headline(found), "rows": rows,
            "notes": diff.notes(found), "rule": diff.rule(found),
            "id": "upgrade" if found.get("current") else "changes",
            "summary": upgrade.summary_line(found) if found.get("counts") else None}


def _matrix(cells: list[dict], page_dir: str) -> dict:
    """targets: the columns; rows: (model, its cell per target, None where not in this run)."""
    targets = sorted({c["target"] for c in cells})
    by_pair = {(c["model"], c["target"]): _matrix_cell(c, page_dir) for c in cells}
    return {"targets": targets,
            "rows": [(model, [by_pair.get((model, t)) for t in targets])
                     for model in sorted({c["model"] for c in cells})]}


def _matrix_cell(cell: dict, page_dir: str) -> dict:
    """One model x target: its outcome, and either where it failed (stage, error, command,
    that stage's log) or what it measured and its last log."""
    view = {key: cell[key] for key in ("model", "target", "kind", "outcome", "expected")}
    view["css"] = css_class(cell["kind"])
    found = cell["diagnosis"]
    view["diagnosis"] = found and {"stage": found["stage"], "summary": found["summary"],
                                   "anchor": _anchor(cell)}
    failed = cell["failed"]
    if failed:
        return {**view, "log": _href(failed, page_dir), "failed": {
            "stage": failed["stage"], "error": failed.get("error") or "no error recorded",
            "command": failed.get("command"), "cached": failed["status"] == Status.CACHED_FAILURE}}
    measured = []
    if cell["max_abs"] is not None:
        measured.append(f"abs err {cell['max_abs']:.1e}")
    if cell["iree_ms"] is not None:
        measured.append(duration(cell["iree_ms"]))
    verdict = cell["verdict"]
    last = verdict if verdict and verdict.get("log") else \
        next((e for e in reversed(cell["chain"]) if e.get("log")), None)
    return {**view, "failed": None, "log": _href(last, page_dir), "sub": " · ".join(measured),
            "text": cell["outcome"] if cell["kind"] in (Kind.SKIPPED, *UNFINISHED_KINDS)
            else cell["kind"]}


def _anchor(cell: dict) -> str:
    return f"diagnosis-{cell['model']}-{cell['target']}"


def _diagnoses(cells: list[dict], page_dir: str, charts: _Charts) -> list[dict]:
    """What the stages that explain failures said, per failing cell (its matrix cell links
    here): the summary, their table (as the stage's result gives it), files and plot."""
    shown = []
    for cell in cells:
        found = cell["diagnosis"]
        if not found:
            continue
        columns = list(found["rows"][0]) if found["rows"] else []
        plot = found.get("plot")
        shown.append({"anchor": _anchor(cell), "label": f"{cell['model']} @ {found['target']}",
                      "stage": found["stage"], "summary": found["summary"], "columns": columns,
                      "rows": [[_sci(v) if isinstance(v, float) else v for v in row.values()]
                               for row in found["rows"]],
                      "files": [(_file_href(path, page_dir), path) for path in found["files"]],
                      "log": _href(found, page_dir),
                      "plot": plot and {"title": plot.get("title", ""), "chart": charts.svg(
                          _anchor(cell), plot, _draw_curve)}})
    return shown


def _file_href(path: str, page_dir: str) -> str:
    return quote(posixpath.relpath(Path(path).as_posix(), page_dir))


def _times(cells: list[dict], charts: _Charts) -> dict | None:
    """The stacked chart of seconds per stage, a target's variants summed, and the stages that
    run once per model, as "first … last" (None: nothing ran or was restored)."""
    stages = _stage_order(cells)
    seconds = [[sum(e.get("seconds") or 0.0 for e in c["chain"] if e["stage"] == stage)
                for stage in stages] for c in cells]
    if not any(map(any, seconds)):
        return None
    per_model = [s for s in stages if any(e["stage"] == s and e["target"] is None
                                          for c in cells for e in c["chain"])]
    data = {"labels": [c["label"] for c in cells], "stages": stages, "seconds": seconds}
    return {"chart": charts.svg("times", data, _draw_times),
            "per_model": " … ".join(dict.fromkeys(per_model[:1] + per_model[-1:]))}


def _stage_order(cells: list[dict]) -> list[str]:
    """The record's stages in the order they run. Each row's chain lists its entries in plan
    order (a topological one), so each chain's stages, as they first appear, are in order;
    the record as a whole need not be (a model that enters the pipeline further on lists that
    stage beside the others' first). Stages whose order differs between rows (neither reads
    the other) keep the order they first appear in."""
    chains = [list(dict.fromkeys(e["stage"] for e in c["chain"])) for c in cells]
    order = graphlib.TopologicalSorter()
    for stages in chains:
        order.add(stages[0])
        for earlier, later in itertools.pairwise(stages):
            order.add(later, earlier)
    try:
        return list(order.static_order())
    except graphlib.CycleError:
        return list(dict.fromkeys(stage for stages in chains for stage in stages))


def _latency(cells: list[dict], charts: _Charts) -> dict | None:
    """The chart and a row per cell that was timed or passed (None: nothing was timed). How
    each time was measured, and why the framework was not, are the cells' titles."""
    timed = [c for c in cells if c["iree_ms"] is not None]
    if not timed:
        return None
    data = [[c["label"], c["iree_ms"], c["iree_min"], c["iree_max"], c["fw_ms"], c["fw_min"],
             c["fw_max"], c["ratio"]] for c in timed]
    rows = [{"label": c["label"], "iree": _spread(c, "iree"), "iree_how": c["iree_how"],
             "framework": _spread(c, "fw"),
             "framework_how": c["fw_how"] if c["fw_ms"] is not None else c["fw_why"],
             "ratio": _ratio(c["ratio"])}
            for c in cells if c["iree_ms"] is not None or c["kind"] in PASSED]
    return {"chart": charts.svg("latency", data, _draw_latency), "rows": rows}


def _variants(cells: list[dict]) -> list[dict]:
    """Per target that tried several flag variants: why the pick won, and each variant's
    outcome, median time, ratio and flags."""
    return [{"label": c["label"], "why": c["result"].get("why", ""), "said": c["said"],
             "rows": [_variant_row(v, picked=v["variant"] == c["variant"])
                      for v in c["variants"]]}
            for c in cells if len(c["variants"]) > 1]


def _variant_row(variant: dict, picked: bool) -> dict:
    ms = _number((variant.get("latency") or {}).get("median_ms"))
    return {"name": variant["variant"], "picked": picked, "outcome": variant["outcome"],
            "median": duration(ms) if ms else "—",
            "ratio": _ratio(_number(variant.get("speed_ratio"))),
            "flags": " ".join(variant.get("flags") or [])}


def _ratio(ratio: float | None) -> str:
    return "not timed" if ratio is None else f"{ratio:.3g}×"


def _spread(cell: dict, who: str) -> str:
    median, low, high = cell[f"{who}_ms"], cell[f"{who}_min"], cell[f"{who}_max"]
    if median is None:
        return "not timed"
    text = duration(median)
    if low is not None and high is not None:
        text += f" ({duration(low)} – {duration(high)})"
    return text


def _errors(cells: list[dict], charts: _Charts) -> dict | None:
    """The chart and a row per cell compared with the framework (None: none was)."""
    checked = [c for c in cells if _number(c["result"].get("max_abs_error")) is not None
               or _number(c["result"].get("max_rel_error")) is not None]
    if not checked:
        return None
    data = [[c["label"], c["kind"] in PASSED] + [_number(c["result"].get(k)) for k in
            ERROR_FIELDS] for c in checked]
    rows = [{"label": c["label"], "outcome": c["kind"], "rule": _rule(c["result"]),
             **{k: _sci(c["result"].get(k)) for k in ERROR_FIELDS}} for c in checked]
    return {"chart": charts.svg("errors", data, _draw_errors), "rows": rows}


def _rule(result: dict) -> str:
    """What judged the outputs: the float64 noise rule (the target's error vs float64, the
    framework's own f32 error, the factor measured and allowed) or atol/rtol, and why."""
    matched = f"; {result['matched']}" if result.get("matched") else ""
    if result.get("rule") not in ("f64-noise", "spread"):
        why = result.get("rule_why")
        return "atol/rtol" + (f" ({why})" if why else "") + matched
    factor = result.get("factor")
    measured = "unbounded" if factor is None else f"{factor:.2g}×"
    if result["rule"] == "spread":
        return f"the framework's kernel spread: {measured} of {result['factor_allowed']:g}× " \
            f"allowed (error {_sci(result.get('target_error'))}, the spread between its own " \
            f"kernels {_sci(result.get('framework_error'))}){matched}"
    return f"float64 noise: {measured} of {result['factor_allowed']:g}× allowed (error vs " \
        f"float64 {_sci(result.get('target_error'))}, framework's f32 " \
        f"{_sci(result.get('framework_error'))}){matched}"


def _sci(value) -> str:
    if value is None:
        return ""
    return f"{value:.2e}" if isinstance(value, (int, float)) else str(value)


def _tasks(entries: list[dict], page_dir: str) -> list[dict]:
    """Every stage entry, failures first: what it did, in how long, why, where, its log."""
    order = {s: i for i, s in enumerate(STATUSES)}
    return [{"name": e["task"], "status": e["status"], "css": css_class(e["status"]),
             "seconds": f"{e.get('seconds') or 0:.2f}",
             "why": _why(e), "log": _href(e, page_dir),
             "where": ", ".join(f"{k} {e[k]}" for k in ("remote", "worker") if e.get(k))}
            for e in sorted(entries, key=lambda e: (order.get(e["status"], len(order)), e["task"]))]


def _why(entry: dict) -> str:
    """Why the stage ran (its key changed), was reused, was skipped, or failed (its error)."""
    why = entry.get("why") or entry.get("reason") or ""
    if entry["status"] == Status.CACHED:
        return why or "restored from the cache"
    if entry["status"] == Status.UP_TO_DATE:
        return why or "nothing it reads changed"
    if entry["status"] in (*FAILURES, Status.INTERRUPTED):
        return (why + ": " if why else "") + (entry.get("error") or "")
    return why


def css_class(status: str) -> str:
    """The page's class for a status or a cell's kind: a failure taken from the cache is a
    failure; 'not started' is 'not-started' (a class name holds no space)."""
    return Kind.FAILED.value if status in FAILURES else status.replace(" ", "-")


# --- charts --------------------------------------------------------------------------------

class _Charts:
    """Draws each chart as inline SVG, or takes it from the memo when its data are the same
    (the key holds this module's source too, so an edit to a chart draws it again)."""

    def __init__(self, memo: Path | None, draw: bool = True):
        self.memo = memo
        self.draw = draw
        self.used: set[str] = set()

    def svg(self, name: str, data, draw):
        """The chart as markup the template inserts as it is (markupsafe.Markup): matplotlib's
        SVG, whose writer escapes the labels it draws from the record."""
        from markupsafe import Markup  # Jinja2's own; a page is being written
        if not self.draw:
            return Markup(f"<p class='chart-off'>chart not drawn ({CHARTS_ENV}=off)</p>")
        return Markup(self._text(name, data, draw))

    def _text(self, name: str, data, draw) -> str:
        source = Path(__file__).read_bytes()
        key = hashlib.sha256(source + json.dumps([name, data]).encode()).hexdigest()[:32]
        path = self.memo / f"{name}-{key}.svg" if self.memo else None
        if path:
            self.used.add(path.name)
            try:
                return path.read_text()
            except OSError:
                pass
        svg = _draw_svg(name, data, draw)
        if path:
            from ..cache.files import atomic_write
            try:
                atomic_write(path, svg.encode())
            except OSError:
                pass   # the memo only saves time; the page is whole without it
        return svg

    def forget_unused(self) -> None:
        """Keep only the charts this page shows, so the memo never grows."""
        if not self.memo or not self.memo.is_dir():
            return
        for path in self.memo.glob("*.svg"):
            if path.name not in self.used:
                path.unlink(missing_ok=True)


def _draw_svg(name: str, data, draw) -> str:
    try:
        import matplotlib
        from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    except ImportError:
        return "<p>(charts need matplotlib: pip install matplotlib)</p>"
    # a salt per chart keeps the ids of clip paths unique across the SVGs of one page, and
    # fixed, keeps the bytes the same from run to run
    with matplotlib.rc_context({"svg.hashsalt": f"kiln-{name}", "svg.fonttype": "none",
                                "font.size": 9}), warnings.catch_warnings():
        # a chart too small for its labels draws without constrained layout (savefig's
        # tight bounding box still fits it): nothing for the console (after the stages:
        # no thread races this filter)
        warnings.filterwarnings("ignore", message="constrained_layout not applied")
        fig = draw(Figure, data)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    return _inline(buf.getvalue())


def _inline(svg: str) -> str:
    """matplotlib's SVG made fit to sit in a page beside others: no XML prolog, metadata or
    comments, and none of its ids that nothing references (figure_1, axes_1, … would repeat
    in every chart of the page); the ids it references are salted hashes, unique per chart."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*|<!--.*?-->\s*", "", svg, flags=re.S)
    svg = re.sub(r' id="[A-Za-z][A-Za-z0-9_.]*_\d+"', "", svg)
    return re.sub(r"\n\s*", "\n", svg)


def _mark(name: str, artists) -> None:
    """Name the data's marks in the SVG (ids <chart>-mark-…, unique in the page), so that a
    reader or a test can find what was drawn."""
    for k, artist in enumerate(artists):
        artist.set_gid(f"{name}-{k}")


def _fewer_ticks(ax) -> None:
    """No minor ticks on a log axis spanning a decade or more (8 unlabelled ticks a decade
    are most of an SVG's bytes); a narrower one keeps them, as it may have no major tick."""
    low, high = ax.get_xlim()
    if high / low >= 10:
        ax.minorticks_off()


def _rows_figure(Figure, n: int, width: float = 8.0, **kw):
    fig = Figure(figsize=(width, 0.9 + 0.28 * n), layout="constrained")
    return fig, fig.subplots(**kw)


def _draw_times(Figure, data):
    labels, stages, seconds = data["labels"], data["stages"], data["seconds"]
    fig, ax = _rows_figure(Figure, len(labels))
    y = range(len(labels))
    left = [0.0] * len(labels)
    colours = _colours(len(stages))
    for i, stage in enumerate(stages):
        widths = [row[i] for row in seconds]
        if any(widths):
            _mark(f"times-mark-{stage}", ax.barh(y, widths, left=left, color=colours[i], label=stage,
                                   height=0.7))
            left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return fig


def _colours(n: int) -> list:
    from matplotlib import colormaps
    return [colormaps["tab10"](i % 10) for i in range(n)]


def _draw_latency(Figure, data):
    """A dot per median (a bar's length means nothing on a log scale), min–max whiskers."""
    fig, ax = _rows_figure(Figure, len(data))
    series = (("IREE module", 1, "o", "#1f77b4", -0.12), ("framework", 4, "D", "#ff7f0e", 0.12))
    for name, at, marker, colour, offset in series:
        rows = [(i, row[at:at + 3]) for i, row in enumerate(data) if row[at] is not None]
        if not rows:
            continue
        whiskers = [[m - lo if lo is not None else 0 for _, (m, lo, _hi) in rows],
                    [hi - m if hi is not None else 0 for _, (m, _lo, hi) in rows]]
        drawn = ax.errorbar([m for _, (m, _, _) in rows], [i + offset for i, _ in rows],
                            xerr=whiskers, fmt=marker, color=colour, label=name, markersize=5,
                            elinewidth=0.8, capsize=2)
        _mark(f"latency-mark-{at}", drawn.lines[:1])
    for i, row in enumerate(data):
        note = _ratio(row[7]) if row[7] is not None else "framework: not timed"
        right = max(v for v in row[1:7] if v is not None)
        ax.annotate(note, (right, i), xytext=(6, 0), textcoords="offset points", va="center",
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(data)), [row[0] for row in data])
    ax.set_ylim(len(data) - 0.5, -0.5)
    ax.set_xlabel("ms per call (median)")
    ax.margins(x=0.25)
    _fewer_ticks(ax)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return fig


def _draw_errors(Figure, data):
    fig, axes = _rows_figure(Figure, len(data), width=9.0, ncols=2, sharey=True)
    positive = [v for row in data for v in row[2:] if v]
    floor = min(positive) / 30 if positive else 1e-12   # where an error of exactly 0 sits
    for ax, (err_i, tol_i, title) in zip(axes, ((2, 3, "max abs error vs atol"),
                                               (4, 5, "max rel error vs rtol"))):
        tols = [(row[tol_i], i) for i, row in enumerate(data) if row[tol_i]]
        if tols:
            _mark(f"errors-mark-{err_i}-tol", [ax.scatter(*zip(*tols), marker="|", s=200, linewidths=2,
                                        color="#555", label="tolerance")])
        for passed, colour, label in ((True, "#2ca02c", Kind.PASSED.value),
                                      (False, "#d62728", Kind.FAILED.value)):
            points = [(max(row[err_i], floor), i) for i, row in enumerate(data)
                      if row[err_i] is not None and row[1] == passed]
            if points:
                _mark(f"errors-mark-{err_i}-{label}", [ax.scatter(*zip(*points), color=colour, s=30, label=label,
                                            zorder=3)])
        ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.set_ylim(len(data) - 0.5, -0.5)
    axes[0].set_yticks(range(len(data)), [row[0] for row in data])
    for ax in axes:
        _fewer_ticks(ax)
    axes[1].legend(fontsize=8, loc="lower left", bbox_to_anchor=(1, 0), frameon=False)
    return fig


def _draw_curve(Figure, plot):
    """A diagnosis's plot: each series against x on a log scale (a None or 0 is no point),
    its mark a dashed line, its lines dotted."""
    fig = Figure(figsize=(8.0, 3.2), layout="constrained")
    ax = fig.subplots()
    for k, (name, values) in enumerate(plot["series"].items()):
        points = [(x, y) for x, y in zip(plot["x"], values) if y]
        if points:
            _mark(f"curve-mark-{k}", ax.plot(*zip(*points), marker=".", markersize=3,
                                             linewidth=1, label=name))
    for name, y in (plot.get("lines") or {}).items():
        if y:
            ax.axhline(y, color="#555", linestyle=":", linewidth=1, label=name)
    mark = plot.get("mark")
    if mark:
        ax.axvline(mark["x"], color="#d62728", linestyle="--", linewidth=1, label=mark["label"])
    if ax.has_data():
        ax.set_yscale("log")
    ax.set_xlabel(plot.get("x_label", ""))
    ax.set_ylabel(plot.get("y_label", ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1), frameon=False)
    return fig
