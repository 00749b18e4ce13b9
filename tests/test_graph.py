import dataclasses

import networkx as nx

from pipeline.plan.graph import build_graph
from pipeline.stage import MODULE, ModelSpec, Node, Stage, Target
from stages import pipeline

CPU = Target("cpu", "llvm-cpu", "generic", "local-task", (), 1e-4, 1e-4)
GPU = Target("vulkan", "vulkan-spirv", "llvmpipe", "vulkan", (), 1e-4, 1e-4)


def test_per_model_stages_are_shared_by_targets():
    models = [ModelSpec("a", "torch", {}), ModelSpec("b", "torch", {})]
    graph = build_graph(pipeline(), models, [CPU, GPU])
    # 5 per-model stages x 2 models + 5 per-target stages (lower, codegen, validate, pick,
    # bisect) x 2 models x 2 targets (unresolved targets: no variants but themselves)
    assert graph.number_of_nodes() == 5 * 2 + 5 * 2 * 2
    assert set(graph.successors(Node("emit", "a", None))) == {
        Node(stage, "a", t) for stage in ("lower", "validate", "bisect") for t in ("cpu", "vulkan")}
    assert set(graph.predecessors(Node("validate", "a", "cpu"))) == {
        Node("capture", "a", None), Node("emit", "a", None), Node("codegen", "a", "cpu")}
    # bisect reads validate's outcome; validate's failure stops nothing (it is "followed")
    assert Node("validate", "a", "cpu") in set(graph.predecessors(Node("bisect", "a", "cpu")))
    assert graph.nodes[Node("validate", "a", "cpu")]["followed"]
    assert not graph.nodes[Node("lower", "a", "cpu")]["followed"]


def test_what_a_legalize_change_can_reach():
    graph = build_graph(pipeline(), [ModelSpec("a", "torch", {})], [CPU, GPU])
    reach = nx.descendants(graph, Node("legalize", "a", None))
    assert {n.stage for n in reach} == {"emit", "lower", "codegen", "validate", "pick", "bisect"}
    assert Node("capture", "a", None) not in reach


def test_shards_partition_the_matrix_and_keep_what_each_needs():
    from pipeline.plan.graph import shard
    models = [ModelSpec(f"m{i}", "torch", {}) for i in range(3)]
    graph = build_graph(pipeline(), models, [CPU, GPU])
    pairs = lambda g: {(n.model, n.target) for n in g if n.target}
    shards = [shard(graph, i, 4) for i in (1, 2, 3, 4)]
    assert sorted(len(pairs(s)) for s in shards) == [1, 1, 2, 2]
    assert set().union(*map(pairs, shards)) == pairs(graph)
    assert sum(len(pairs(s)) for s in shards) == len(pairs(graph))      # disjoint
    for part in shards:
        for node in part:
            assert set(graph.predecessors(node)) <= set(part)          # nothing it needs is missing
    assert [sorted(pairs(s)) for s in shards] == [sorted(pairs(shard(graph, i, 4))) for i in (1, 2, 3, 4)]


class Remake(Stage):
    """A stage after codegen that remakes the module (as a tuning stage would), on CPU only."""
    name = "remake"
    per_target = True
    role = MODULE.role
    inputs = (MODULE,)

    def applies_to(self, model, target):
        return target.backend == "llvm-cpu"


def with_remake() -> list[Stage]:
    stages = pipeline()
    at = next(i for i, s in enumerate(stages) if s.name == "codegen") + 1
    return [*stages[:at], Remake(), *stages[at:]]


def test_the_module_is_read_from_the_last_stage_that_builds_one_for_the_target():
    graph = build_graph(with_remake(), [ModelSpec("a", "torch", {})], [CPU, GPU])
    assert set(graph.predecessors(Node("remake", "a", "cpu"))) == {Node("codegen", "a", "cpu")}
    for reader in ("validate", "pick", "bisect"):
        ups = set(graph.predecessors(Node(reader, "a", "cpu")))
        assert Node("remake", "a", "cpu") in ups and Node("codegen", "a", "cpu") not in ups
    # where it does not apply (vulkan), its node is absent and codegen's module is read
    assert Node("remake", "a", "vulkan") not in graph
    assert Node("codegen", "a", "vulkan") in set(graph.predecessors(Node("validate", "a", "vulkan")))


def test_a_pick_reads_each_variant_s_module_from_its_own_last_builder():
    im2col = dataclasses.replace(CPU, variants=(("default", ()), ("im2col", ("--im2col",))))
    graph = build_graph(with_remake(), [ModelSpec("a", "torch", {})], [im2col])
    assert set(graph.predecessors(Node("pick", "a", "cpu"))) == {
        Node(stage, "a", t) for stage in ("validate", "remake") for t in ("cpu", "cpu~im2col")}
