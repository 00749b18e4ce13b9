"""The tile configurations stages/tune.py tries for one dispatch, as edits of its text.

A dispatch configured by iree-compile for llvm-cpu carries `#iree_cpu.lowering_config<...>`
attributes: its root op's holds the three tile levels (distribution, vector_common_parallel,
vector_reduction), and the ops fused with it (fill, elementwise consumers) hold
vector_common_parallel only, equal to the root's without its reduction loops. A candidate is
a list of (old attribute text, new attribute text) edits, applied the same way to the dumped
per-dispatch benchmark (to measure it) and to the configured executable (to substitute it
into the whole module: docs/DESIGN.md §9.4, §9.6). Pure text: no compiler is needed here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

CONFIG = re.compile(r"#iree_cpu\.lowering_config<([^<>]*)>")
FIELD = re.compile(r"(\w+) = \[([-0-9, ]*)\]")
DISTRIBUTION, PARALLEL, REDUCTION = "distribution", "vector_common_parallel", "vector_reduction"
# the scalings tried per tile, around the compiler's choice; distribution tiles first (the
# only changes that won in the probes of docs/DESIGN.md §9.5), then reduction and vector tiles
NEAR, FAR = (0.5, 2.0), (0.25, 4.0)
VECTOR_FACTORS = (2.0, 0.5)
TENSOR_DIMS = re.compile(r"tensor<((?:\d+x)+)")
MAX_CANDIDATES = 12


@dataclass(frozen=True)
class Config:
    """One lowering_config attribute: its text as printed and its tile lists by level."""
    text: str
    tiles: dict[str, tuple[int, ...]]

    def with_tiles(self, level: str, tiles: tuple[int, ...]) -> Config:
        changed = {**self.tiles, level: tiles}
        body = ", ".join(f"{name} = [{', '.join(map(str, values))}]"
                         for name, values in changed.items())
        return Config(f"#iree_cpu.lowering_config<{body}>", changed)


@dataclass(frozen=True)
class Candidate:
    label: str                           # e.g. "distribution [64, 16, 0]"
    edits: tuple[tuple[str, str], ...]   # (old attribute text, new): every op it changes

    def apply(self, text: str) -> str:
        """text with the edits made; a ValueError where an edit's old text is not there (the
        dispatch is not the one this candidate was made for)."""
        for old, new in self.edits:
            if old not in text:
                raise ValueError(f"configuration {old} not found")
            text = text.replace(old, new)
        return text


def configs(text: str) -> list[Config]:
    """The lowering_config attributes of a configured dispatch, in order."""
    found = []
    for match in CONFIG.finditer(text):
        tiles = {name: tuple(int(v) for v in values.split(",") if v.strip())
                 for name, values in FIELD.findall(match.group(1))}
        found.append(Config(match.group(0), tiles))
    return found


def root_config(text: str) -> Config | None:
    """The root op's configuration: the one attribute with distribution tiles (None: none,
    or several, which this search does not take apart)."""
    roots = {c.text: c for c in configs(text) if DISTRIBUTION in c.tiles}
    return next(iter(roots.values())) if len(roots) == 1 else None


def candidates(text: str, limit: int = MAX_CANDIDATES) -> list[Candidate]:
    """Tile configurations around the compiler's own choice for the dispatch's root op, the
    most promising first, at most limit; [] where the dispatch has no single root config."""
    root = root_config(text)
    if root is None:
        return []
    largest = max((int(d) for dims in TENSOR_DIMS.findall(text) for d in dims.split("x") if d),
                  default=None)
    found = [*_distribution(root, NEAR, largest), *_reduction(root),
             *_parallel(root, configs(text)), *_distribution(root, FAR, largest),
             *_traded(root, largest)]
    unique = list({c.edits: c for c in found}.values())
    return unique[:limit]


def _scaled(value: int, factor: float) -> int:
    return int(value * factor)


def _legal(root: Config, largest: int | None):
    """Whether a distribution tile may be tried for loop i: a multiple of (and at least) the
    loop's vector tile, not the current one, and not past the dispatch's largest tensor
    dimension (a bigger tile is the whole loop again)."""
    tiles = root.tiles[DISTRIBUTION]
    vector = root.tiles.get(PARALLEL, (0,) * len(tiles))

    def legal(i: int, value: int) -> bool:
        step = vector[i] if i < len(vector) and vector[i] > 0 else 1
        return (value >= step and value % step == 0 and value != tiles[i]
                and (largest is None or value <= largest))
    return legal


def _distribution(root: Config, factors: tuple[float, ...], largest: int | None) -> list[Candidate]:
    """Each distributed loop's tile scaled alone."""
    tiles, legal = root.tiles[DISTRIBUTION], _legal(root, largest)
    found = []
    for factor in factors:
        for i in (i for i, t in enumerate(tiles) if t > 0):
            value = _scaled(tiles[i], factor)
            if legal(i, value):
                found.append(_retiled(root, DISTRIBUTION, {i: value}))
    return found


def _traded(root: Config, largest: int | None) -> list[Candidate]:
    """Pairs of distributed loops traded: one tile doubled, another halved (as much work per
    workgroup, another shape)."""
    tiles, legal = root.tiles[DISTRIBUTION], _legal(root, largest)
    loops = [i for i, t in enumerate(tiles) if t > 0]
    return [_retiled(root, DISTRIBUTION, {i: tiles[i] * 2, j: tiles[j] // 2})
            for i in loops for j in loops
            if i != j and legal(i, tiles[i] * 2) and legal(j, tiles[j] // 2)]


def _reduction(root: Config) -> list[Candidate]:
    tiles = root.tiles.get(REDUCTION, ())
    found = []
    for i, tile in enumerate(tiles):
        for factor in VECTOR_FACTORS:
            value = _scaled(tile, factor)
            if tile > 1 and value >= 1 and value != tile:
                found.append(_retiled(root, REDUCTION, {i: value}))
    return found


def _parallel(root: Config, all_configs: list[Config]) -> list[Candidate]:
    """The innermost vector tile scaled, in the root and in every fused op whose vector tile
    is the root's without its reduction loops (the ops the compiler configured alike)."""
    tiles = root.tiles.get(PARALLEL, ())
    reduction = root.tiles.get(REDUCTION, (0,) * len(tiles))
    parallel = [i for i, t in enumerate(tiles) if t > 0 and not (i < len(reduction) and reduction[i])]
    if not parallel:
        return []
    inner = parallel[-1]
    kept = [i for i in range(len(tiles)) if not (i < len(reduction) and reduction[i])]
    fused = {c.text: c for c in all_configs
             if DISTRIBUTION not in c.tiles and c.tiles.get(PARALLEL) == tuple(tiles[i] for i in kept)}
    found = []
    for factor in VECTOR_FACTORS:
        value = _scaled(tiles[inner], factor)
        distributed = root.tiles[DISTRIBUTION]
        if value < 1 or (distributed[inner] and distributed[inner] % value):
            continue
        new = list(tiles)
        new[inner] = value
        edits = [(root.text, root.with_tiles(PARALLEL, tuple(new)).text)]
        for op in fused.values():
            edits.append((op.text, op.with_tiles(PARALLEL, tuple(new[i] for i in kept)).text))
        found.append(Candidate(f"{PARALLEL} {new}", tuple(edits)))
    return found


def _retiled(root: Config, level: str, changes: dict[int, int]) -> Candidate:
    tiles = list(root.tiles[level])
    for i, value in changes.items():
        tiles[i] = value
    return Candidate(f"{level} {tiles}", ((root.text, root.with_tiles(level, tuple(tiles)).text),))
