from pipeline.config import Target
import networkx as nx

from pipeline.graph import build_graph
from pipeline.stage import ModelSpec, Node
from stages import pipeline

CPU = Target("cpu", "llvm-cpu", "generic", "local-task", (), 1e-4, 1e-4)
GPU = Target("vulkan", "vulkan-spirv", "llvmpipe", "vulkan", (), 1e-4, 1e-4)


def test_per_model_stages_are_shared_by_targets():
    models = [ModelSpec("a", "torch", {}), ModelSpec("b", "torch", {})]
    graph = build_graph(pipeline(), models, [CPU, GPU])
    # 5 per-model stages x 2 models + 3 per-target stages x 2 models x 2 targets
    assert graph.number_of_nodes() == 5 * 2 + 3 * 2 * 2
    assert set(graph.successors(Node("emit", "a", None))) == {
        Node(stage, "a", t) for stage in ("lower", "validate") for t in ("cpu", "vulkan")}
    assert set(graph.predecessors(Node("validate", "a", "cpu"))) == {
        Node("capture", "a", None), Node("emit", "a", None), Node("codegen", "a", "cpu")}


def test_what_a_legalize_change_can_reach():
    graph = build_graph(pipeline(), [ModelSpec("a", "torch", {})], [CPU, GPU])
    reach = nx.descendants(graph, Node("legalize", "a", None))
    assert {n.stage for n in reach} == {"emit", "lower", "codegen", "validate"}
    assert Node("capture", "a", None) not in reach
