"""Flag variants per target (stages/targets.py, pipeline/plan/graph.py, stages/pick.py): each is
compiled, validated and timed; the fastest that passes becomes the target's module."""
from __future__ import annotations

import json

import pytest
from test_memo import mlir_project

from pipeline.plan.graph import build_graph, variant_targets
from pipeline.stage import ConfigError, ModelSpec, Node, Target
from stages import pipeline as all_stages
from stages.pick import choose
from stages.targets import resolve

CPU = Target("cpu", "llvm-cpu", "znver4", "local-task", (), 1e-4, 1e-4, "targets.yaml:2")


def timed(median, low=None, high=None):
    return {"passed": True, "latency": {"median_ms": median, "min_ms": low or median,
                                        "max_ms": high or median, "runs": 10}}


# --- the pick ----------------------------------------------------------------------------

def test_the_fastest_passing_variant_wins():
    winner, why = choose({"default": timed(64.0), "channels-last": timed(17.0),
                          "im2col": timed(20.0)}, ["default", "channels-last", "im2col"])
    assert winner == "channels-last" and "fastest" in why and "default 64 ms" in why


def test_a_variant_within_the_noise_does_not_displace_an_earlier_one():
    order = ["default", "im2col"]
    assert choose({"default": timed(10.0), "im2col": timed(9.7)}, order)[0] == "default"
    # a wide spread widens the noise: 20% faster is still not clearly faster
    assert choose({"default": timed(10.0, 8.0, 12.0), "im2col": timed(8.0, 6.5, 9.5)},
                  order)[0] == "default"
    assert choose({"default": timed(10.0), "im2col": timed(8.0)}, order)[0] == "im2col"


# --- variants from the config and the graph ------------------------------------------------

def test_a_target_extends_overrides_and_drops_built_in_variants():
    target = resolve(Target(**{**CPU.__dict__, "variants": (
        ("mine", ("--iree-opt-level=O3",)), ("im2col", ("--x",)), ("channels-last", None))}))
    names = [name for name, _ in target.variants]
    assert names == ["default", "im2col", "im2col-mmt4d", "decomposed-attention", "mine"]
    assert dict(target.variants)["im2col"] == ("--x",)
    with pytest.raises(ConfigError, match="every variant is dropped"):
        resolve(Target(**{**CPU.__dict__, "variants": (
            ("default", None), ("channels-last", None), ("im2col", None), ("im2col-mmt4d", None),
            ("decomposed-attention", None))}))


def test_variants_become_targets_of_their_own_with_the_default_keeping_the_name():
    target = resolve(CPU)
    tried = variant_targets(target)
    assert [t.name for t in tried] == ["cpu", "cpu~channels-last", "cpu~im2col", "cpu~im2col-mmt4d",
                                       "cpu~decomposed-attention"]
    assert tried[0].flags == () and tried[2].flags[-1] == "--iree-global-opt-use-im2col-for-convs"
    assert [t.name for t in variant_targets(target, ("default",))] == ["cpu"]
    assert [t.name for t in variant_targets(target, ("im2col",))] == ["cpu~im2col"]


def test_the_pick_reads_every_variant_and_only_their_stages_are_soft():
    model = ModelSpec("m", "mlir", {})
    graph = build_graph(all_stages(), [model], [resolve(CPU)], ("default", "im2col"))
    pick = Node("pick", "m", "cpu")
    assert set(graph.predecessors(pick)) == {
        Node("validate", "m", "cpu"), Node("validate", "m", "cpu~im2col"),
        Node("codegen", "m", "cpu"), Node("codegen", "m", "cpu~im2col")}
    soft = {n for n in graph if graph.nodes[n]["soft"]}
    assert soft == {Node(s, "m", t) for s in ("lower", "codegen", "validate", "bisect")
                    for t in ("cpu", "cpu~im2col")}
    one = build_graph(all_stages(), [model], [resolve(CPU)], ("default",))
    assert not any(one.nodes[n]["soft"] for n in one)   # one variant: failures stop the target


def test_an_unknown_variant_on_the_command_line_names_the_known_ones(tmp_path):
    project = mlir_project(tmp_path / "proj", names=("m1",))
    proc = project.doit("list", "variants=nosuch", check=False)
    assert proc.returncode != 0
    assert "variants=nosuch: unknown variant nosuch" in proc.stderr and "im2col" in proc.stderr


# --- for real: compiled, validated, timed, picked -------------------------------------------

VARIANTS = """    variants:
      broken: [--iree-no-such-flag]
      o1: [--iree-opt-level=O1]
"""


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """An .mlir model on cpu with a variant that cannot compile and one that can."""
    project = mlir_project(tmp_path_factory.mktemp("variants") / "proj", names=("m1",))
    project.variants = None   # the search the matrix asks for
    config = project.root / "targets.yaml"
    config.write_text(config.read_text().replace("    arch: host\n", "    arch: host\n" + VARIANTS)
                      .replace("variants: [default]", "variants: [default, broken, o1]"))
    first = project.doit("-n", "2", "-P", "thread")
    return project, first


def test_a_variant_that_fails_is_reported_and_the_target_still_passes(searched):
    project, first = searched
    assert first.returncode == 0, first.stdout
    statuses = project.statuses()
    assert statuses["lower:m1@cpu~broken"] == "failed"
    assert statuses["codegen:m1@cpu~broken"] == "skipped"   # the rest of that variant
    assert statuses["pick:m1@cpu"] == "ran"
    pick = next(t for t in project.record() if t["task"] == "pick:m1@cpu")["result"]
    outcomes = {v["variant"]: v["outcome"] for v in pick["variants"]}
    assert outcomes["default"] == "passed" and outcomes["o1"] == "passed"
    assert outcomes["broken"].startswith("no result")
    assert pick["variant"] in ("default", "o1") and pick["why"]
    module = project.root / "build" / "m1" / "cpu" / "pick" / "module.vmfb"
    winner = "cpu" if pick["variant"] == "default" else f"cpu~{pick['variant']}"
    assert module.read_bytes() == \
        (project.root / "build" / "m1" / winner / "codegen" / "module.vmfb").read_bytes()
    row = next(line for line in first.stdout.splitlines() if line.startswith("m1 "))
    assert "passed (variant" in row and "of 3)" in row, row


def test_a_second_run_compiles_nothing_again(searched):
    project, _ = searched
    project.doit()
    statuses = project.statuses()
    ran = {t for t, s in statuses.items() if s not in ("up-to-date",)}
    # iree-compile's rejection of the broken variant is remembered: reported, not run again;
    # it left nothing new, so the pick stands
    assert ran == {"lower:m1@cpu~broken", "codegen:m1@cpu~broken", "validate:m1@cpu~broken"}
    assert statuses["lower:m1@cpu~broken"] == "failed (cached)"


def test_editing_one_variants_flags_reruns_only_that_variant(searched):
    project, _ = searched
    config = project.root / "targets.yaml"
    config.write_text(config.read_text().replace("o1: [--iree-opt-level=O1]",
                                                 "o1: [--iree-opt-level=O1, --mlir-disable-threading]"))
    project.doit()
    ran = {t for t, s in project.statuses().items() if s == "ran"}
    assert {"lower:m1@cpu~o1", "codegen:m1@cpu~o1", "pick:m1@cpu"} <= ran
    assert not any(t.endswith("@cpu") and not t.startswith("pick") for t in ran), ran
    report = (project.root / "build" / "report.md").read_text()
    assert "## Variants" in report and "broken: failed at lower (cached): iree-compile" in report
    html = (project.root / "build" / "report.html").read_text()
    assert "Variants: the fastest that validates" in html and "(picked)" in html
    assert json.loads((project.root / "build" / "m1" / "cpu" / "pick" / "pick.json").read_text())


def test_explain_says_what_a_search_will_redo(searched):
    """After the runs above: only the failing variant comes back, and explain says so: it
    fails (its failure with this same key is remembered), so the rest of it is skipped."""
    import shutil

    from conftest import REPO
    from test_explain import explained, of
    project, _ = searched
    shutil.copy2(REPO / "pyproject.toml", project.root / "pyproject.toml")
    listed, _ = explained(project)
    assert of(listed, "run") == set() and of(listed, "fail") == {"lower:m1@cpu~broken"}, listed
    assert "failed with this same key before" in listed["lower:m1@cpu~broken"][1]
    assert of(listed, "skip") >= {"codegen:m1@cpu~broken", "validate:m1@cpu~broken"}
    project.doit()
    statuses = project.statuses()
    assert {t for t, s in statuses.items() if s == "failed (cached)"} == of(listed, "fail")
    assert not {t for t, s in statuses.items() if s in ("ran", "failed")}
    assert {t for t, s in statuses.items() if s == "skipped"} == of(listed, "skip")
    assert {t for t, s in statuses.items() if s != "up-to-date"} <= \
        of(listed, "fail") | of(listed, "skip") | of(listed, "maybe")


def test_compile_only_counts_the_target_compiled_when_a_variant_did(searched):
    project, _ = searched
    proc = project.doit("compile")
    row = next(line for line in proc.stdout.splitlines() if line.startswith("m1 "))
    assert "compiled" in row and "FAILED" not in row, row
