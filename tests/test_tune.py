"""stages/tune.py: the candidates around a dispatch's configuration (text only), and tuning
the mlp for real (iree-compile, iree-benchmark-module, kiln's store, nginx as the remote
cache): a second tuning of the same model compiles no candidate and benchmarks nothing, its
answers coming from the local cache or, on a machine with an empty one, from the remote."""
from __future__ import annotations

import json

import pytest
from conftest import Project, copy_project, needs_torch

from pipeline.plan.graph import build_graph
from pipeline.stage import ConfigError, ModelSpec, Node, Target
from stages import pipeline as all_stages
from stages import tune_cache, tune_knobs, tune_space
from stages.targets import resolve

CPU = Target("cpu", "llvm-cpu", "znver4", "local-task", (), 1e-4, 1e-4, "targets.yaml:2")

ROOT = ("#iree_cpu.lowering_config<distribution = [64, 64, 0], vector_common_parallel = "
        "[8, 16, 0], vector_reduction = [0, 0, 16]>")
FUSED = "#iree_cpu.lowering_config<vector_common_parallel = [8, 16]>"
DISPATCH = (f"%8 = linalg.fill {{lowering_config = {FUSED}}} : tensor<128x768xf32>\n"
            f"%9 = linalg.matmul {{lowering_config = {ROOT}}} : tensor<128x3072xf32>\n"
            f"%10 = linalg.generic attrs = {{lowering_config = {FUSED}}}\n")


def test_the_root_config_is_the_one_with_distribution_tiles():
    root = tune_space.root_config(DISPATCH)
    assert root.text == ROOT
    assert root.tiles == {"distribution": (64, 64, 0), "vector_common_parallel": (8, 16, 0),
                          "vector_reduction": (0, 0, 16)}
    assert tune_space.root_config(DISPATCH.replace(ROOT, FUSED)) is None
    assert tune_space.candidates(DISPATCH.replace(ROOT, FUSED)) == []


def test_candidates_start_near_the_compilers_choice_and_stay_legal():
    found = tune_space.candidates(DISPATCH)
    labels = [c.label for c in found]
    assert labels[:4] == ["distribution [32, 64, 0]", "distribution [64, 32, 0]",
                          "distribution [128, 64, 0]", "distribution [64, 128, 0]"]
    assert "vector_reduction [0, 0, 32]" in labels and len(found) <= tune_space.MAX_CANDIDATES
    for candidate in found:
        root = tune_space.root_config(candidate.apply(DISPATCH))
        distributed, vector = root.tiles["distribution"], root.tiles["vector_common_parallel"]
        # a distribution tile stays a multiple of its loop's vector tile, within the tensors
        assert all(d % v == 0 and v <= d <= 3072 for d, v in zip(distributed, vector) if d)
    assert len(tune_space.candidates(DISPATCH, limit=2)) == 2


def test_a_vector_tile_change_edits_the_fused_ops_alike():
    wider = next(c for c in tune_space.candidates(DISPATCH)
                 if c.label == "vector_common_parallel [8, 32, 0]")
    edited = wider.apply(DISPATCH)
    assert edited.count("vector_common_parallel = [8, 32]>") == 2   # fill and generic
    assert "vector_common_parallel = [8, 32, 0]" in edited and FUSED not in edited
    with pytest.raises(ValueError):   # another dispatch's configuration: not applied
        wider.apply(DISPATCH.replace("16", "4"))


def test_the_dispatch_key_ignores_where_the_dispatch_sits():
    source = "hal.executable public @main$async_dispatch_3 { func @main$async_dispatch_3_mm }"
    moved = source.replace("dispatch_3", "dispatch_12")
    key = tune_cache.dispatch_key(source, "main$async_dispatch_3", "iree 3.13", "znver4", 2, [])
    assert key == tune_cache.dispatch_key(moved, "main$async_dispatch_12", "iree 3.13", "znver4", 2, [])
    assert key != tune_cache.dispatch_key(source, "main$async_dispatch_3", "iree 3.13", "znver4", 1, [])
    assert key != tune_cache.dispatch_key(source, "main$async_dispatch_3", "iree 3.14", "znver4", 2, [])


def test_a_knob_replaces_the_start_flags_of_its_name_and_no_op_knobs_are_not_tried():
    mmt4d = ["--iree-global-opt-use-im2col-for-convs", "--iree-opt-data-tiling=true",
             "--iree-llvmcpu-enable-ukernels=mmt4d"]
    found = dict((k.label, flags) for k, flags in tune_knobs.candidates(mmt4d))
    assert found["data tiling + ukernels"] == ["--iree-global-opt-use-im2col-for-convs",
                                               "--iree-opt-data-tiling=true",
                                               "--iree-llvmcpu-enable-ukernels=all"]
    assert found["distribution 16"] == [*mmt4d, "--iree-llvmcpu-distribution-size=16"]
    # a start that already has a knob's flags is not raced against itself
    labels = [k.label for k, _ in tune_knobs.candidates(found["distribution 16"])]
    assert "distribution 16" not in labels and "aggressive fusion" in labels
    assert len(tune_knobs.candidates(mmt4d, limit=1)) == 1
    knobs = {k.label: k for k in tune_knobs.KNOBS}
    assert tune_knobs.combined(knobs["distribution 16"], tune_knobs.Knob(
        "distribution 64", ("--iree-llvmcpu-distribution-size=64",))) is None
    both = tune_knobs.combined(knobs["data tiling + ukernels"], knobs["distribution 16"])
    assert both.label == "data tiling + ukernels + distribution 16" and len(both.flags) == 3


def test_which_dispatches_are_searched_does_not_move_when_a_search_re_measures_one():
    """Shares come from each dispatch's first time alone: a search's re-measured default
    (here 1.0 -> 0.8 ms) must not bring another dispatch over the line on a second tuning."""
    from pathlib import Path

    from stages.tune import Dispatch, carrying_the_time

    def dispatch(name, ms, searched=False):
        d = Dispatch(name, name, Path(name), "", "", calls=1)
        d.outcome = tune_cache.Outcome("", default_ms=ms, alone_ms=ms, searched=searched)
        return d
    big, middle, small = dispatch("big", 1.0), dispatch("middle", 0.04), dispatch("small", 0.01)
    assert carrying_the_time([small, middle, big]) == [big]   # 95% of the time in one
    big.outcome = tune_cache.Outcome("", default_ms=0.8, alone_ms=1.0, searched=True)
    assert carrying_the_time([small, middle, big]) == [big]
    big.outcome.alone_ms = None   # (an answer kept before alone_ms: its default time)
    assert carrying_the_time([small, middle, big]) == [big, middle]


# --- the tuned variant in the plan --------------------------------------------------------

def test_tune_on_adds_a_tuned_variant_that_reads_the_other_variants():
    """tune=on starts from the fastest variant that validated: the tuned variant's tune node
    reads every other variant's verdict and flow, and its validate and pick read its module."""
    target = resolve(CPU, tune=True, tune_budget=30)
    assert target.tune == "best" and target.tune_budget == 30
    assert target.variants[-1] == ("tuned", ())   # its own lower: the default's (a cache hit)
    model = ModelSpec("m", "mlir", {})
    graph = build_graph(all_stages(), [model], [target], ("default", "im2col", "tuned"))
    tune = Node("tune", "m", "cpu~tuned")
    assert set(graph.predecessors(tune)) == {
        # (an MLIR file: no capture stage)
        Node("emit", "m", None), Node("lower", "m", "cpu~tuned"), Node("lower", "m", "cpu"),
        Node("lower", "m", "cpu~im2col"),
        Node("validate", "m", "cpu"), Node("validate", "m", "cpu~im2col")}
    assert tune in set(graph.predecessors(Node("validate", "m", "cpu~tuned")))
    assert Node("codegen", "m", "cpu~tuned") not in set(graph.predecessors(Node("pick", "m", "cpu")))
    assert Node("tune", "m", "cpu") not in graph   # only the tuned variant is tuned


def test_tune_from_a_named_variant_or_off_and_where_it_cannot():
    target = resolve(CPU, tune="im2col")
    assert target.tune == "im2col" and dict(target.variants)["tuned"] == \
        dict(target.variants)["im2col"]
    assert resolve(Target(**{**CPU.__dict__, "tune": "best"}), tune=False).tune is None
    assert "tuned" not in dict(resolve(CPU).variants)
    with pytest.raises(ConfigError, match="valid: default, channels-last"):
        resolve(CPU, tune="nope")
    vulkan = Target("gpu", "vulkan-spirv", None, None, (), 1e-4, 1e-4, "targets.yaml:9")
    assert resolve(vulkan, tune=True).tune is None   # tune=on: the llvm-cpu targets
    with pytest.raises(ConfigError, match="cannot be tuned"):
        resolve(Target(**{**vulkan.__dict__, "tune": "best"}))


# --- tuning the mlp for real ---------------------------------------------------------------

TUNE = ("tune", "model=mlp", "target=cpu", "variants=default,im2col,tuned", "tune=on")
# two candidates per dispatch, one whole-model knob: seconds, not minutes
QUICK = {"KILN_TUNE_CANDIDATES": "2", "KILN_TUNE_KNOBS": "1"}


MLP_B = ('FRAMEWORK = "torch"\n\n\ndef build():\n    import torch\n\n    model = torch.nn.Sequential('
         'torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))\n'
         '    return model, (torch.randn(2, 16),)\n')


def tuned(project: Project, model: str = "mlp") -> dict:
    return json.loads((project.root / "build" / model / "cpu~tuned" / "tune" / "tune.json").read_text())


@pytest.fixture(scope="module")
def tuned_twice(tmp_path_factory):
    """The mlp tuned into a cache that writes to the remote; then in a second project copy
    with an empty local cache reading the remote, and again there from its local cache, each
    time with another budget (another tune key: the stage runs, its dispatches are looked up)."""
    from conftest import CacheServer
    base = tmp_path_factory.mktemp("tune")
    server = CacheServer(base / "nginx")
    remote = {"KILN_REMOTE": server.url, "KILN_REMOTE_TOKEN": server.token}
    try:
        first = Project(copy_project(base / "first"))
        console = first.doit(*TUNE, "tune_budget=60", env_extra={
            **QUICK, **remote, "KILN_REMOTE_MODE": "write", "KILN_CACHE": str(base / "cache-a")})
        runs = {"first": tuned(first), "console": console.stdout}
        second = Project(copy_project(base / "second"))
        second.doit(*TUNE, "tune_budget=61", env_extra={
            **QUICK, **remote, "KILN_CACHE": str(base / "cache-b")})
        runs["remote"] = tuned(second)
        second.doit(*TUNE, "tune_budget=62", env_extra={**QUICK, "KILN_CACHE": str(base / "cache-b")})
        runs["local"] = tuned(second)
        # another model sharing the mlp's first layer; its second has a 4-element bias,
        # inlined in the module (below the weights threshold): a constant no dump carries
        (second.root / "models" / "mlp_b.py").write_text(MLP_B)
        second.doit(*(a.replace("model=mlp", "model=mlp_b") for a in TUNE), "tune_budget=60",
                    env_extra={"KILN_TUNE_CANDIDATES": "1", "KILN_TUNE_KNOBS": "0",
                               "KILN_CACHE": str(base / "cache-b")})
        runs["other model"] = tuned(second, "mlp_b")
    finally:
        server.stop()
    return runs


@needs_torch
def test_the_first_tune_searches_the_dispatches_that_carry_the_time(tuned_twice):
    first = tuned_twice["first"]
    said = json.dumps(first, indent=1)[:3000]   # (what the tuning wrote, where this fails)
    assert first["from_cache"] == 0 and first["searched"] >= 1, said
    assert 1 <= first["candidates_compiled"] <= 2 * first["searched"], said
    assert first["benchmarks_run"] > first["candidates_compiled"], said
    shares = [r["share"] for r in first["dispatches"] if r["share"] is not None]
    assert shares == sorted(shares, reverse=True), said
    rows = first["dispatches"]
    assert all(r["config"].startswith("#iree_cpu.lowering_config<distribution") for r in rows), said
    assert "matmul" in rows[0]["op"] and first["seconds"] > 0, said
    # the console says it under the case, from the stage's result (pipeline.report.table)
    line = next(line for line in tuned_twice["console"].splitlines() if " tune (tuned): " in line)
    assert line.startswith("mlp@cpu tune (tuned): from default"), line
    # the other variant that validated is a rival of the start, raced as a whole module:
    # im2col builds the mlp's (convolution-free) module byte for byte, so it is not raced
    knobs = first["knobs"]
    assert knobs["variants"] == [{"variant": "im2col", "checked": "the start's code: not raced"}]
    assert knobs["variant"] is None, said
    # the whole-model knob raced as a whole module against the start's, on the model's inputs
    assert [k["knob"] for k in knobs["tried"]] == ["data tiling + ukernels"], said
    raced = knobs["tried"][0]
    assert "--iree-opt-data-tiling=true" in raced["flags"], said
    assert not raced["outputs_match"] or len(raced["ratios"]) == 5, said
    assert (knobs["chosen"] is None) == (not raced["kept"]), said
    if raced["kept"]:   # the dispatches were then searched from the knob's flags
        assert first["flags"] == raced["flags"], said
        assert first["start"] == "default + data tiling + ukernels", said
    else:
        assert "--iree-opt-data-tiling=true" not in first["flags"], said
    assert f"{first['searched']} searched ({first['candidates_compiled']} candidates)" in line
    # the tuned module is checked as a whole against the untuned one (where anything won)
    whole = first["whole_module"]
    assert whole is None or whole.get("outputs_match", True), said


@needs_torch
def test_a_second_tune_hits_the_cache_for_every_dispatch_through_the_remote_too(tuned_twice):
    runs = tuned_twice
    for where in ("remote", "local"):
        again = runs[where]
        count = again["dispatch_count"]
        assert again["from_cache"] == count == runs["first"]["dispatch_count"], where
        assert again["from_remote"] == (count if where == "remote" else 0)
        assert again["candidates_compiled"] == again["benchmarks_run"] == again["searched"] == 0
        assert again["knobs"]["from_cache"] == ("remote" if where == "remote" else "local")
        assert again["knobs"]["chosen"] == runs["first"]["knobs"]["chosen"]
        # where anything won, the whole-module check's verdict on these answers is kept too
        whole = again["whole_module"]
        assert whole is None or "from_cache" in whole or "same module" in whole["checked"], where
        assert [r["chosen"] for r in again["dispatches"]] == \
            [r["chosen"] for r in runs["first"]["dispatches"]]


def test_bad_tune_settings_name_the_field_and_what_is_valid(tmp_path):
    from pipeline.plan.config import load_config
    from pipeline.plan.options import Options
    config = tmp_path / "targets.yaml"
    text = "targets:\n  cpu:\n    backend: llvm-cpu\n{extra}matrices:\n  default:\n" \
           "    models: []\n    targets: [cpu]\n"
    config.write_text(text.format(extra="    tune: true\n    tune_budget: 90\n"))
    cpu = load_config(config).targets["cpu"]
    assert (cpu.tune, cpu.tune_budget) == ("best", 90.0)
    config.write_text(text.format(extra="    tune_budget: -5\n"))
    with pytest.raises(ConfigError, match=r"targets.yaml:\d+: targets.cpu.tune_budget: expected"):
        load_config(config)
    config.write_text(text.format(extra="    tune: 3\n"))
    with pytest.raises(ConfigError, match="targets.cpu.tune: expected true"):
        load_config(config)
    with pytest.raises(ConfigError, match="tune_budget=soon: expected the seconds"):
        Options.parse({"tune_budget": "soon"})
    assert Options.parse({"tune": "off"}).tune is False
    assert Options.parse({"tune": "im2col"}).tune == "im2col"


@needs_torch
def test_a_dispatch_seen_in_another_model_is_not_searched_again(tuned_twice):
    other = tuned_twice["other model"]
    rows = {r["op"].split("_", 3)[-1]: r for r in other["dispatches"]}
    assert rows["matmul_2x32x16_f32"]["from_cache"] == "local"   # the mlp's first layer
    fresh = rows["matmul_2x4x32_f32"]
    assert fresh["from_cache"] is None and fresh["searched"] and fresh["default_ms"]
    assert fresh["failed"] == 0 and other["candidates_compiled"] == 1   # its bias went along
    assert other["knobs"] is None   # KILN_TUNE_KNOBS=0: no whole-model knob raced
