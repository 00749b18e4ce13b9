"""Expand models x targets into one networkx DAG of stage nodes.

Per-model stages (capture ... emit) appear once per model and are shared by its targets;
per-target stages (lower, codegen, validate) once per model x target variant; stages that
choose among a target's variants (pick) once per model x target, reading every variant.

A target's variants are its named flag sets. The variant named 'default' keeps the target's
name (its nodes, paths and keys are the target's own); another is the target 'cpu~im2col'.
Where a target tries more than one, its variants' nodes are "soft": one that fails is
recorded, and the others, and the pick among them, still run. A node of a stage another
diagnoses (Stage.follows: bisect follows validate) is "followed": its failure is recorded
and fails its case, and the stage that diagnoses it still runs.
"""
from __future__ import annotations

import dataclasses

import networkx as nx

from ..names import base_target, variant_target
from ..stage import ModelSpec, Node, Stage, Target


def variant_targets(target: Target, wanted: tuple[str, ...] | None = None) -> list[Target]:
    """The targets a target's variants compile for, as selected by `wanted` (None: all; a
    target with none of the wanted names tries its first, 'default')."""
    chosen = [v for v in target.variants if wanted is None or v[0] in wanted] \
        or list(target.variants[:1])
    if not chosen:   # (a target never resolved through stages.targets: itself)
        return [target]
    return [dataclasses.replace(target, name=variant_target(target.name, name),
                                flags=(*target.flags, *flags),
                                variant=name, base=target.name)
            for name, flags in chosen]


def _trying(target: Target, tried: list[Target]) -> Target:
    """The target with only the variants this run tries (what a pick among them depends on)."""
    names = {t.variant for t in tried}
    return dataclasses.replace(target, variants=tuple(v for v in target.variants if v[0] in names))


def build_graph(stages: list[Stage], models: list[ModelSpec], targets: list[Target],
                variants: tuple[str, ...] | None = None) -> nx.DiGraph:
    graph = nx.DiGraph()
    by_name = {s.name: s for s in stages}
    expanded = {t.name: variant_targets(t, variants) for t in targets}
    tried = [v for vs in expanded.values() for v in vs]
    # the (target, what it reads) of a per-target stage's nodes, the same for every model:
    # made once, not per model (2,000 dataclasses.replace for a 2,000-case suite)
    per_variant = [(t, [t]) for t in tried]
    across = [(_trying(t, expanded[t.name]), expanded[t.name]) for t in targets]
    # stages whose failure another diagnoses (Stage.follows): their failure stops nothing
    followed = {s.follows for s in stages if s.follows}
    for model in models:
        present = {s.name for s in stages if s.applies_to(model)}
        for stage in stages:
            if stage.name not in present:
                continue
            if not stage.per_target:
                nodes = [(None, [])]
            elif stage.across_variants:   # once per target, reading each variant tried
                nodes = across
            else:
                nodes = per_variant
            for target, reads in nodes:
                node = Node(stage.name, model.name, target.name if target else None)
                soft = bool(target and not stage.across_variants
                            and len(expanded[target.base or target.name]) > 1)
                graph.add_node(node, stage=stage, model=model, target=target, soft=soft,
                               followed=stage.name in followed)
                for peer in stage.peers(model, target, tried):
                    graph.add_edge(Node(stage.name, model.name, peer), node)
                for upstream in stage.inputs:
                    if upstream not in present:
                        continue
                    for read in (reads if by_name[upstream].per_target else [None]):
                        graph.add_edge(Node(upstream, model.name, read and read.name), node)
    if not nx.is_directed_acyclic_graph(graph):
        cycle = nx.find_cycle(graph)
        raise ValueError(f"stage graph has a cycle: {cycle}")
    return graph


def shard(graph: nx.DiGraph, index: int, count: int) -> nx.DiGraph:
    """Shard index of count (1-based): every count-th model x target, in sorted order, with
    every stage it needs upstream. Deterministic, so CI jobs given 1/N ... N/N cover the whole
    matrix between them; a front-end stage two shards need is built by both or, with a shared
    cache, restored by the later one."""
    def pair(node: Node) -> tuple[str, str]:   # a target's variants go with it
        return node.model, base_target(node.target)

    pairs = sorted({pair(n) for n in graph if n.target is not None})
    mine = set(pairs[index - 1::count])
    keep = {n for n in graph if n.target is not None and pair(n) in mine}
    for node in list(keep):
        keep |= nx.ancestors(graph, node)
    return graph.subgraph(keep).copy()
