"""The summary table (pipeline/report/table.py) on hand-made entries: its wording (IREE's
time beside the framework's) and what a row's outcome rests on, read from the roles stages
declare, never from their names (but in a record written before roles were recorded)."""
from pipeline.report.table import markdown, rows, table


def validate_entry(result: dict) -> dict:
    return {"task": "validate:m@cpu", "stage": "validate", "model": "m", "target": "cpu",
            "role": "verdict", "status": "ran", "result": {"passed": True, **result}}


def test_the_table_shows_time_per_run_with_its_unit():
    # a record written before framework timing: no framework figure, no ratio
    text = table([validate_entry({"latency_ms": 135706.0})])
    assert "time/run" in text and "136 s" in text and "135706" not in text


def test_rows_and_table_show_iree_and_framework_times_and_their_ratio():
    result = {"latency_ms": 2.0,
              "latency": {"median_ms": 2.0, "min_ms": 1.9, "max_ms": 2.5, "runs": 10, "how": "x"},
              "framework_latency": {"median_ms": 1.6, "min_ms": 1.5, "max_ms": 1.7, "runs": 10,
                                    "how": "y"},
              "speed_ratio": 1.25}
    (row,) = rows([validate_entry(result)])
    assert (row["ms"], row["framework_ms"], row["ratio"]) == (2.0, 1.6, 1.25)
    text = table([validate_entry(result)])
    assert "framework time/run" in text and "2 ms" in text and "1.6 ms" in text \
        and "1.25×" in text
    summary = markdown({"tasks": [validate_entry(result)]})
    assert "1.25×" in summary and "1.6 ms" in summary and "medians" in summary


def test_no_framework_time_leaves_its_cells_empty():
    result = {"latency_ms": 0.5, "framework_latency": None, "speed_ratio": None,
              "framework_latency_why": "no framework: the model is an MLIR file"}
    (row,) = rows([validate_entry(result)])
    assert row["framework_ms"] is None and row["ratio"] is None
    assert "×" not in table([validate_entry(result)])


def entry(stage: str, role: str | None, target: str | None, status: str = "ran",
          **extra) -> dict:
    at = f"@{target}" if target else ""
    return {"task": f"{stage}:m{at}", "stage": stage, "model": "m", "target": target,
            "role": role, "status": status, **extra}


def searched_record(names=("make", "build", "judge", "choose")) -> list[dict]:
    """m made once, built and judged for cpu with two variants (fast fails its judging), and
    the choice among them: stages named `names`, whose roles are those of codegen, validate
    and pick."""
    make, build, judge, choose = names
    passed = {"passed": True, "latency_ms": 1.0}
    return [entry(make, None, None), entry(build, "module", "cpu"),
            entry(build, "module", "cpu~fast"), entry(judge, "verdict", "cpu", result=passed),
            entry(judge, "verdict", "cpu~fast", status="failed", error="off by 1"),
            entry(choose, "choice", "cpu", result={**passed, "variant": "default",
                                                   "variants": [{}, {}]})]


def test_a_row_rests_on_the_roles_stages_declare_not_their_names():
    (row,) = rows(searched_record())
    # a variant that fails alone does not fail the target: the choice among them is its verdict
    assert (row["kind"], row["outcome"]) == ("passed", "passed (variant default of 2)")
    assert row["verdict"]["stage"] == "choose" and row["failed"] is None
    assert row["stages"] == "1 failed 5 ran"


def test_compiled_only_the_target_compiled_when_one_of_its_variants_did():
    record = [e for e in searched_record() if e["role"] in (None, "module")]
    record[2].update(status="failed", error="no such flag")
    (row,) = rows(record)
    assert (row["kind"], row["outcome"], row["failed"]) == ("compiled", "compiled", None)
    record[1].update(status="failed", error="no such flag")
    (row,) = rows(record)
    assert row["kind"] == "failed" and row["outcome"] == "FAILED at build: no such flag"


def test_a_failure_from_the_cache_is_a_failure_marked_cached():
    from pipeline.report import html
    record = [e for e in searched_record() if e["role"] in (None, "module")]
    for variant in record[1:]:   # (neither variant compiles)
        variant.update(status="failed (cached)", error="no such flag", log="logs/build.log")
    (row,) = rows(record)
    assert row["kind"] == "failed" and row["outcome"] == "FAILED at build (cached): no such flag"
    assert row["stages"] == "2 failed (cached) 1 ran"
    assert "`build:m@cpu` at **build** (cached): no such flag" in markdown({"tasks": record})
    page = html.page({"tasks": record}, draw_charts=False)
    assert "failed at build (cached)" in page and "<span class='failed'>2 failed (cached)" in page
    assert "<tr class='failed'><td>build:m@cpu</td><td>failed (cached)</td>" in page


def test_a_record_written_before_roles_reads_by_the_stage_names_of_then():
    old = searched_record(("emit", "codegen", "validate", "pick"))
    for e in old:
        del e["role"]
    (row,) = rows(old)
    assert (row["kind"], row["outcome"]) == ("passed", "passed (variant default of 2)")
    assert row["verdict"]["stage"] == "pick"
    # a recorded role, even none, is what counts: a stage named validate that declares no
    # role gives no verdict
    new = searched_record(("emit", "codegen", "validate", "pick"))
    for e in new:
        e["role"] = None if e["stage"] in ("validate", "pick") else e["role"]
    (row,) = rows(new)
    assert (row["kind"], row["verdict"]) == ("compiled", None)
