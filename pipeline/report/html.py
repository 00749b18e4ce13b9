"""build/report.html: the run record as one self-contained page, for a person to read.

A view of the record dict that build/run.json holds ({"tasks": [...], "warnings"?, "error"?}):
the model x target matrix coloured by outcome (a failure's stage, error and log one click
away), time per stage, the compiled module's latency against the framework's own, the
numerical error against the tolerance, and what this run ran and what it reused, and why.

Charts are matplotlib SVG inlined in the page (no script, no network, nothing to fetch). They
are byte-stable (fixed id salt, no date), so a chart whose data did not change is taken from
a memo instead of drawn again: a no-op run never imports matplotlib, which costs about half a
second.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import posixpath
import re
from html import escape
from pathlib import Path
from urllib.parse import quote

from . import table
from .units import duration


FRONT_END = ("capture", "serialize", "import", "legalize", "emit")   # once per model
STAGES = FRONT_END + ("lower", "codegen", "validate", "pick")   # a target's variants summed
STATUSES = ("failed", "ran", "cached", "up-to-date", "skipped")      # the order they are listed
KINDS = ("passed", "failed", "skipped", "compiled")                  # a matrix cell's outcome

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:70em;padding:0 1em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0} th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.passed{background:#d9f2d9} .failed{background:#f8d3d3} .skipped{background:#eee;color:#555}
.compiled{background:#dde8f6} .ran{background:#fff3cd} .cached,.up-to-date{background:#e8f4e8}
td.cell{min-width:9em} td.none{background:#fafafa;color:#bbb}
.kind{font-weight:600} .sub{font-size:.85em;color:#444} summary{cursor:pointer;font-weight:600}
pre,code{font:12px/1.3 ui-monospace,monospace;white-space:pre-wrap;word-break:break-word}
pre{background:#f7f7f7;padding:.4em;margin:.3em 0;max-width:60em}
.counts span{display:inline-block;margin-right:.4em;padding:.1em .5em;border-radius:.3em}
figure{margin:.5em 0} figure svg{max-width:100%;height:auto} figcaption{color:#555;font-size:.9em}
.warning{background:#fff3cd;padding:.3em .6em;margin:.2em 0} .stopped{background:#f8d3d3;padding:.6em}
"""


def page(record: dict, memo: Path | None = None, page_dir: str = "build") -> str:
    """The whole page. memo: a directory for drawn charts (None: always draw). page_dir: where
    the page lies relative to the project root, which the record's log paths are relative to."""
    if record.get("error"):
        return _document(
            "<p class='stopped'><b>The run stopped before building anything.</b> "
            "This page replaces the last run's report.</p>\n"
            f"<pre class='error'>{escape(record['error'])}</pre>")
    entries = record.get("tasks", [])
    cells = _cells(entries)
    charts = _Charts(memo)
    body = [_summary(cells, entries), _warnings(record, entries),
            "<h2>Outcome per model × target</h2>", _matrix(cells, page_dir),
            "<h2>Time per stage in this run</h2>", _times(cells, charts),
            "<h2>Latency: compiled module against the framework</h2>", _latency(cells, charts),
            _variants(cells),
            "<h2>Numerical error against the tolerance</h2>", _errors(cells, charts),
            "<h2>What this run ran and what it reused</h2>", _tasks(entries, page_dir)]
    charts.forget_unused()
    return _document("\n".join(part for part in body if part))


def _document(body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>\n"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>\n"
            f"<title>kiln run</title><style>{CSS}</style></head>\n"
            f"<body>\n<h1>kiln run</h1>\n{body}\n</body></html>\n")


# --- the record, one cell per model x target ------------------------------------------------

def _cells(entries: list[dict]) -> list[dict]:
    """report.rows (the table's outcome and what it rests on) with the page's labels and
    the timings."""
    return [{**row, "label": f"{row['model']} @ {row['target']}", "validate": row["verdict"],
             **_timing(row["result"])} for row in table.rows(entries)]


def _timing(result: dict) -> dict:
    """The timing schema's fields (records older than it have only latency_ms)."""
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


def _log_link(entry: dict | None, page_dir: str, text: str = "log") -> str:
    if not entry or not entry.get("log"):
        return ""
    href = quote(posixpath.relpath(Path(entry["log"]).as_posix(), page_dir))
    return f"<a class='log' href='{escape(href)}'>{escape(text)}</a>"


# --- sections ----------------------------------------------------------------------------

def _summary(cells: list[dict], entries: list[dict]) -> str:
    kinds = _count(c["kind"] for c in cells)
    statuses = _count(e["status"] for e in entries)
    return (f"<p class='counts'>{len(cells)} model × target: "
            + "".join(f"<span class='{k}'>{kinds[k]} {k}</span>" for k in KINDS if k in kinds)
            + f"<br>{len(entries)} stages: "
            + "".join(f"<span class='{s}'>{statuses[s]} {s}</span>" for s in STATUSES if s in statuses)
            + "</p>")


def _count(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def _warnings(record: dict, entries: list[dict]) -> str:
    lines = list(record.get("warnings") or [])
    seen: dict[str, list[str]] = {}
    for e in entries:
        for warning in e.get("warnings") or []:
            seen.setdefault(warning, []).append(e["task"])
    lines += [f"{tasks[0]}{f' (and {len(tasks) - 1} more)' if len(tasks) > 1 else ''}: {w}"
              for w, tasks in seen.items()]
    return "".join(f"<p class='warning'>warning: {escape(line)}</p>" for line in lines)


def _matrix(cells: list[dict], page_dir: str) -> str:
    if not cells:
        return "<p>No model × target in this run.</p>"
    models = sorted({c["model"] for c in cells})
    targets = sorted({c["target"] for c in cells})
    by_pair = {(c["model"], c["target"]): c for c in cells}
    head = "".join(f"<th>{escape(t)}</th>" for t in targets)
    rows = []
    for model in models:
        tds = "".join(_cell(by_pair[(model, t)], page_dir) if (model, t) in by_pair
                      else "<td class='none'>not in this run</td>" for t in targets)
        rows.append(f"<tr><th>{escape(model)}</th>{tds}</tr>")
    return (f"<table class='matrix'><tr><th>model \\ target</th>{head}</tr>\n"
            + "\n".join(rows) + "</table>")


def _cell(cell: dict, page_dir: str) -> str:
    kind, failed = cell["kind"], cell["failed"]
    attrs = (f"class='cell {kind}' data-model='{escape(cell['model'])}' "
             f"data-target='{escape(cell['target'])}' title='{escape(cell['outcome'])}'")
    if failed:
        command = (f"<p>command:</p><pre>{escape(failed['command'])}</pre>"
                   if failed.get("command") else "")
        return (f"<td {attrs}><details><summary class='kind'>failed at {escape(failed['stage'])}"
                f"</summary><pre class='error'>{escape(failed.get('error') or 'no error recorded')}"
                f"</pre>{command}{_log_link(failed, page_dir, failed['stage'] + ' log')}</details></td>")
    sub = []
    if cell["max_abs"] is not None:
        sub.append(f"abs err {cell['max_abs']:.1e}")
    if cell["iree_ms"] is not None:
        sub.append(duration(cell["iree_ms"]))
    text = kind if kind != "skipped" else cell["outcome"]
    last = cell["validate"] if cell["validate"] and cell["validate"].get("log") else \
        next((e for e in reversed(cell["chain"]) if e.get("log")), None)
    return (f"<td {attrs}><span class='kind'>{escape(text)}</span>"
            f"<div class='sub'>{escape(' · '.join(sub))} {_log_link(last, page_dir)}</div></td>")


def _times(cells: list[dict], charts: _Charts) -> str:
    seconds = [[sum(e.get("seconds") or 0.0 for e in c["chain"] if e["stage"] == stage)
                for stage in STAGES] for c in cells]
    if not any(map(any, seconds)):
        return "<p>No stage ran or was restored in this run (everything was up to date).</p>"
    labels = [c["label"] for c in cells]
    svg = charts.svg("times", {"labels": labels, "seconds": seconds}, _draw_times)
    return _figure(svg, "Seconds each stage took in this run, stacked per model × target. The "
                   "front-end stages (capture … emit) run once per model; their time is counted "
                   "in each of that model's rows; validate's is running, timing and comparing. A "
                   "cached stage costs its restore, an up-to-date one nothing.")


def _latency(cells: list[dict], charts: _Charts) -> str:
    timed = [c for c in cells if c["iree_ms"] is not None]
    rows = []
    for c in cells:
        if c["iree_ms"] is None and c["kind"] != "passed":
            continue
        # how each was timed, and why the framework was not, are a hover away
        rows.append([c["label"], (_spread(c, "iree"), c["iree_how"]),
                     (_spread(c, "fw"), c["fw_how"] if c["fw_ms"] is not None else c["fw_why"]),
                     _ratio(c["ratio"])])
    if not timed:
        return "<p>Not timed: no validation in this run measured a latency.</p>"
    data = [[c["label"], c["iree_ms"], c["iree_min"], c["iree_max"], c["fw_ms"], c["fw_min"],
             c["fw_max"], c["ratio"]] for c in timed]
    svg = charts.svg("latency", data, _draw_latency)
    caption = ("Median time per call (log scale; whiskers: min–max where recorded). The ratio is "
               "IREE's median over the framework's: above 1 the compiled module is slower. "
               "Hover over a time for how it was measured.")
    return _figure(svg, caption) + _table(
        ["model @ target", "IREE (min – max)", "framework (min – max)", "ratio"], rows,
        numeric=(1, 2, 3))


def _variants(cells: list[dict]) -> str:
    """Each target's flag variants: outcome, median time, ratio; the picked one first, why."""
    tried = [c for c in cells if len(c["variants"]) > 1]
    if not tried:
        return ""
    parts = ["<h2>Variants: the fastest that validates is the module</h2>"]
    for c in tried:
        rows = []
        for v in c["variants"]:
            ms = _number((v.get("latency") or {}).get("median_ms"))
            name = v["variant"] + (" (picked)" if v["variant"] == c["variant"] else "")
            rows.append([name, v["outcome"], duration(ms) if ms else "—",
                         _ratio(_number(v.get("speed_ratio"))), " ".join(v.get("flags") or [])])
        parts.append(f"<h3>{escape(c['label'])}</h3><p>{escape(c['result'].get('why', ''))}</p>"
                     + _table(["variant", "outcome", "median", "ratio", "flags"], rows,
                              numeric=(2, 3)))
    return "\n".join(parts)


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


def _errors(cells: list[dict], charts: _Charts) -> str:
    checked = [c for c in cells if _number(c["result"].get("max_abs_error")) is not None
               or _number(c["result"].get("max_rel_error")) is not None]
    if not checked:
        return "<p>No numbers: nothing was compared with the framework in this run.</p>"
    data = [[c["label"], c["kind"] == "passed"] + [_number(c["result"].get(k)) for k in
            ("max_abs_error", "atol", "max_rel_error", "rtol")] for c in checked]
    svg = charts.svg("errors", data, _draw_errors)
    rows = [[c["label"], c["kind"], *(_sci(c["result"].get(k)) for k in
             ("max_abs_error", "atol", "max_rel_error", "rtol"))] for c in checked]
    caption = ("Largest error over all outputs (dots; red where the comparison failed) and the "
               "tolerance (bars), log scale; an error of exactly 0 sits at the left edge.")
    return _figure(svg, caption) + _table(
        ["model @ target", "outcome", "max abs err", "atol", "max rel err", "rtol"], rows,
        numeric=(2, 3, 4, 5))


def _sci(value) -> str:
    if value is None:
        return ""
    return f"{value:.2e}" if isinstance(value, (int, float)) else str(value)


def _tasks(entries: list[dict], page_dir: str) -> str:
    order = {s: i for i, s in enumerate(STATUSES)}
    rows = []
    for e in sorted(entries, key=lambda e: (order.get(e["status"], len(order)), e["task"])):
        why = e.get("why") or e.get("reason") or ""
        if e["status"] == "cached":
            why = why or "restored from the cache"
        elif e["status"] == "up-to-date":
            why = why or "nothing it reads changed"
        elif e["status"] == "failed":
            why = (why + ": " if why else "") + (e.get("error") or "")
        extra = ", ".join(f"{k} {e[k]}" for k in ("remote", "worker") if e.get(k))
        rows.append(f"<tr class='{escape(e['status'])}'><td>{escape(e['task'])}</td>"
                    f"<td>{escape(e['status'])}</td><td class='num'>{e.get('seconds') or 0:.2f}</td>"
                    f"<td>{escape(why)}{escape(' (' + extra + ')' if extra else '')}</td>"
                    f"<td>{_log_link(e, page_dir)}</td></tr>")
    return ("<p>ran: executed in this run; cached: restored from the cache (local or remote) "
            "instead of running; up-to-date: its outputs in build/ already match.</p>"
            "<table class='tasks'><tr><th>stage</th><th>status</th><th>s</th><th>why</th>"
            "<th></th></tr>\n" + "\n".join(rows) + "</table>")


def _table(head: list[str], rows: list[list], numeric=()) -> str:
    """A table of text; a cell given as (text, title) shows the title on hover."""
    def td(i, value):
        text, title = value if isinstance(value, tuple) else (value, None)
        attrs = " class='num'" if i in numeric else ""
        if title:
            attrs += f" title='{escape(str(title))}'"
        return f"<td{attrs}>{escape(str(text))}</td>"
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "\n".join("<tr>" + "".join(td(i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>\n{body}</table>"


def _figure(svg: str, caption: str) -> str:
    return f"<figure class='chart'>{svg}<figcaption>{escape(caption)}</figcaption></figure>"


# --- charts --------------------------------------------------------------------------------

class _Charts:
    """Draws each chart as inline SVG, or takes it from the memo when its data are the same
    (the key holds this module's source too, so an edit to a chart draws it again)."""

    def __init__(self, memo: Path | None):
        self.memo = memo
        self.used: set[str] = set()

    def svg(self, name: str, data, draw) -> str:
        source = Path(__file__).read_bytes()
        key = hashlib.sha256(source + json.dumps([name, data]).encode()).hexdigest()[:32]
        path = self.memo / f"{name}-{key}.svg" if self.memo else None
        if path:
            self.used.add(path.name)
            try:
                return path.read_text()
            except OSError:
                pass
        svg = _render(name, data, draw)
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


def _render(name: str, data, draw) -> str:
    try:
        import matplotlib
        from matplotlib.figure import Figure   # no pyplot: no global state, no GUI backend
    except ImportError:
        return "<p>(charts need matplotlib: pip install matplotlib)</p>"
    # a salt per chart keeps the ids of clip paths unique across the SVGs of one page, and
    # fixed, keeps the bytes the same from run to run
    with matplotlib.rc_context({"svg.hashsalt": f"kiln-{name}", "svg.fonttype": "none",
                                "font.size": 9}):
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
    labels, seconds = data["labels"], data["seconds"]
    fig, ax = _rows_figure(Figure, len(labels))
    y = range(len(labels))
    left = [0.0] * len(labels)
    colours = _colours(len(STAGES))
    for i, stage in enumerate(STAGES):
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
        for passed, colour, label in ((True, "#2ca02c", "passed"), (False, "#d62728", "failed")):
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
