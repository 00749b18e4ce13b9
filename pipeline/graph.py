"""Expand models x targets into one networkx DAG of stage nodes.

Per-model stages (capture ... emit) appear once per model and are shared by its targets;
per-target stages (lower, codegen, validate) once per model x target.
"""
from __future__ import annotations

import networkx as nx

from .config import Target
from .stage import ModelSpec, Node, Stage


def build_graph(stages: list[Stage], models: list[ModelSpec], targets: list[Target]) -> nx.DiGraph:
    graph = nx.DiGraph()
    by_name = {s.name: s for s in stages}
    for model in models:
        present = {s.name for s in stages if s.applies_to(model)}
        for stage in stages:
            if stage.name not in present:
                continue
            for target in (targets if stage.per_target else [None]):
                node = Node(stage.name, model.name, target.name if target else None)
                graph.add_node(node, stage=stage, model=model, target=target)
                for peer in stage.peers(model, target, targets):
                    graph.add_edge(Node(stage.name, model.name, peer), node)
                for upstream in stage.inputs:
                    if upstream not in present:
                        continue
                    up_target = node.target if by_name[upstream].per_target else None
                    graph.add_edge(Node(upstream, model.name, up_target), node)
    if not nx.is_directed_acyclic_graph(graph):
        cycle = nx.find_cycle(graph)
        raise ValueError(f"stage graph has a cycle: {cycle}")
    return graph


def shard(graph: nx.DiGraph, index: int, count: int) -> nx.DiGraph:
    """Shard index of count (1-based): every count-th model x target, in sorted order, with
    every stage it needs upstream. Deterministic, so CI jobs given 1/N ... N/N cover the whole
    matrix between them; a front-end stage two shards need is built by both or, with a shared
    cache, restored by the later one."""
    pairs = sorted({(n.model, n.target) for n in graph if n.target is not None})
    mine = set(pairs[index - 1::count])
    keep = {n for n in graph if (n.model, n.target) in mine}
    for node in list(keep):
        keep |= nx.ancestors(graph, node)
    return graph.subgraph(keep).copy()
