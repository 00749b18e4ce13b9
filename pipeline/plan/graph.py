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

A stage names what it reads (Stage.inputs) by stage name or by role (ByRole): a role is
resolved here, per model x target, to the last stage of that role that applies there, so a
stage inserted after codegen that remakes the module is what validate, pick and bisect read.
A stage may apply to some models or targets only (Stage.applies_to): its nodes are then
absent there, and its readers read what is before it.
"""
from __future__ import annotations

import dataclasses

import networkx as nx

from ..names import base_target, variant_target
from ..stage import ByRole, ModelSpec, Node, Stage, Target

ORDER = "topological_order"   # the graph attribute build_graph keeps its order in


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
    expanded = {t.name: variant_targets(t, variants) for t in targets}
    tried = [v for vs in expanded.values() for v in vs]
    # stages whose failure another diagnoses (Stage.follows): their failure stops nothing
    followed = {s.follows for s in stages if s.follows}
    # what does not depend on the model, worked out once: each stage's nodes, and for each
    # of its inputs the stages that may make it, last first
    nodes = [_nodes(stage, targets, expanded, tried) for stage in stages]
    makers = [[_makers(stages, position, wanted) for wanted in stage.inputs]
              for position, stage in enumerate(stages)]
    for model in models:
        present = {Node(stage.name, model.name, target and target.name)
                   for stage, its in zip(stages, nodes) for target, _ in its
                   if stage.applies_to(model, target)}
        for position, stage in enumerate(stages):
            for target, reads in nodes[position]:
                node = Node(stage.name, model.name, target.name if target else None)
                if node not in present:
                    continue
                soft = bool(target and not stage.across_variants
                            and len(expanded[target.base or target.name]) > 1)
                graph.add_node(node, stage=stage, model=model, target=target, soft=soft,
                               followed=stage.name in followed)
                for peer in stage.peers(model, target, tried):
                    graph.add_edge(Node(stage.name, model.name, peer), node)
                for up in _siblings(stage, model, target, expanded, present):
                    graph.add_edge(up, node)
                for upstream in _upstream(makers[position], model, reads, present):
                    graph.add_edge(upstream, node)
    try:   # (the order is kept: the task specs are made in it, and working it out twice
        # was a twentieth of a cold 2,000-case plan)
        graph.graph[ORDER] = list(nx.topological_sort(graph))
    except nx.NetworkXUnfeasible:
        raise ValueError(f"stage graph has a cycle: {nx.find_cycle(graph)}") from None
    return graph


def topological_order(graph: nx.DiGraph) -> list[Node]:
    """nx.topological_sort(graph): the order build_graph found, where the graph is still the
    one it built (nodes are never added, nor edges changed, after it; a shard's subgraph has
    fewer nodes and its own order), else worked out."""
    kept = graph.graph.get(ORDER)
    return kept if kept is not None and len(kept) == len(graph) else \
        list(nx.topological_sort(graph))


def _siblings(stage: Stage, model: ModelSpec, target: Target | None, expanded: dict,
              present: set[Node]) -> list[Node]:
    """The nodes of the target's other variants a variant's node reads (Stage.siblings)."""
    if target is None or target.variant is None:
        return []
    wanted = stage.siblings(model, target)
    return [n for other in expanded[target.base] if other.name != target.name
            for n in (Node(s, model.name, other.name) for s in wanted) if n in present]


def _nodes(stage: Stage, targets: list[Target], expanded: dict, tried: list[Target]):
    """(target, the targets its node reads per-target inputs of) for each node of stage."""
    if not stage.per_target:
        return [(None, [])]
    if stage.across_variants:   # once per target, reading each variant tried
        return [(_trying(t, expanded[t.name]), expanded[t.name]) for t in targets]
    return [(t, [t]) for t in tried]


def _makers(stages: list[Stage], position: int, wanted: str | ByRole) -> list[Stage]:
    """The stages that may make the input wanted of stages[position], the one to read
    first: the stage named, or those of the role before the reader, last first (a stage of
    that role reads the one before it: a tuning stage reads codegen's module; the readers
    of the role, the last of all that applies to their model x target)."""
    if isinstance(wanted, ByRole):
        return [s for s in reversed(stages[:position]) if s.role == wanted.role]
    return [s for s in stages if s.name == wanted]


def _upstream(makers: list[list[Stage]], model: ModelSpec, reads: list[Target],
              present: set[Node]) -> list[Node]:
    """The nodes a node reads, given the makers of each of its inputs: a per-target
    upstream's for each target in reads, a per-model one's once; the first maker with a
    node present (an input with none is left out: the model or target skips that stage)."""
    found = []
    for candidates in makers:
        for read in reads or [None]:
            up = next((n for n in (_node_of(s, model, read) for s in candidates)
                       if n in present), None)
            if up is not None and up not in found:
                found.append(up)
    return found


def _node_of(stage: Stage, model: ModelSpec, read: Target | None) -> Node | None:
    """stage's node for model that a node reading target read's inputs reads (None: a
    per-model reader, which reads no per-target stage)."""
    if not stage.per_target:
        return Node(stage.name, model.name, None)
    return Node(stage.name, model.name, read.name) if read is not None else None


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
