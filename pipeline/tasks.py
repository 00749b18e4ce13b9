"""doit glue: turn the command line into a plan, the plan's graph into doit task specs.

doit owns scheduling, the CLI and the local up-to-date check (file_dep by content; params,
tool versions and outputs by pipeline.session's check); the store owns reuse across runs
and machines. A task's action only calls runner.execute, the one place that decides restore
or run. Specs are plain data, so pipeline.memo can keep them between runs.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import networkx as nx
from doit.exceptions import TaskFailed

from . import executor, keys, models as model_registry, remote
from .executor import DaskExecutor
from .config import Config, ConfigError, load_config
from .graph import build_graph, shard
from .record import RunLog
from .runner import Layout, execute, read_files
from .store import Store, prune_scratch
from .stage import ModelSpec, Node, Stage


@dataclass
class Plan:
    """What this doit invocation builds: the stage graph of the selected models x targets
    (each node carries its Stage, ModelSpec and Target) and where its files go."""
    config: Config
    layout: Layout
    graph: nx.DiGraph
    run: RunLog = dataclasses.field(default_factory=RunLog)   # what the reporter is told
    executor: DaskExecutor | None = None    # where stages that miss the cache run (None: here)
    model_dirs: list[Path] = dataclasses.field(default_factory=list)   # where models were found
    notices: list[str] = dataclasses.field(default_factory=list)       # printed at every run

    @functools.cached_property
    def nodes_by_task(self) -> dict[str, Node]:
        return {node.task_name: node for node in self.graph}


def _pick(value: str | None, valid: dict, default: tuple, what: str, config: Config,
          resolve_path: Callable[[str], object] | None = None,
          unusable: dict[str, str] | None = None) -> list:
    """What value= selects. `unusable` names what exists but cannot be used, with why (a
    models/ file with a syntax error): selecting it says why, not "unknown"."""
    unusable = unusable or {}
    if value is None:
        return [valid[n] for n in default]
    if value == "all":
        if unusable:
            raise ConfigError(f"{what}=all: {next(iter(unusable.values()))}")
        return list(valid.values())
    picked = []
    for name in (v.strip() for v in value.split(",") if v.strip()):
        if name in valid:
            picked.append(valid[name])
        elif name in unusable:
            raise ConfigError(f"{what}={name}: {unusable[name]}")
        elif resolve_path and (os.sep in name or Path(name).suffix):
            if not Path(name).exists():
                raise ConfigError(f"{what}={name}: no such file or directory")
            picked.append(resolve_path(name))
        else:
            raise ConfigError(f"{what}={name}: unknown {what} (valid: {', '.join(sorted(valid))}"
                              + (", or a path to a model file" if resolve_path else "")
                              + f"; see {config.path})")
    return picked


def parse_shapes(text: str | None) -> dict:
    """'x:1x3x224x224;y:4' -> {'x': [1, 3, 224, 224], 'y': [4]}. Input names may hold ':'
    (TFLite's 'serving_default_x:0'), dims never do: split at the last one."""
    shapes = {}
    for item in filter(None, (text or "").split(";")):
        name, _, dims = item.rpartition(":")
        try:
            shapes[name.strip()] = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            raise ConfigError(f"shapes={text}: expected 'input:1x3x224x224;other:4'") from None
    return shapes


def make_plan(get_var: Callable[[str], str | None], stages: list[Stage],
              detect: model_registry.Detect, resolve_target: Callable, model_dirs: list[Path],
              root: Path | None = None,
              companions: model_registry.Companions = model_registry._no_companions,
              run: RunLog | None = None) -> Plan:
    root = Path(root or os.getcwd()).resolve()
    config = load_config(get_var("config") or os.environ.get("KILN_CONFIG") or root / "targets.yaml")
    layout = Layout(root, root / "build", Path(os.environ.get("KILN_CACHE") or root / "cache").resolve(),
                    remote.settings(config.remote, os.environ))
    keys.use_probe_cache(layout.build / ".kiln" / "tool-probes.json")
    matrix_name = get_var("matrix") or "default"
    if matrix_name not in config.matrices:
        raise ConfigError(f"matrix={matrix_name}: unknown matrix (valid: "
                          f"{', '.join(config.matrices)}; see {config.path})")
    matrix = config.matrices[matrix_name]
    known = model_registry.available(config, model_dirs + [config.root / "models"], detect,
                                     companions)
    unreadable = model_registry.unreadable(model_dirs + [config.root / "models"], known)
    shapes = parse_shapes(get_var("shapes"))
    unknown = [m for m in matrix.models if m not in known and m not in unreadable]
    if unknown:
        raise ConfigError(f"{config.path}: matrices.{matrix.name}: unknown model "
                          f"{', '.join(unknown)} (valid: {', '.join(sorted(known))})")
    broken = [m for m in matrix.models if m in unreadable] if get_var("model") is None else []
    if broken:   # the matrix is what is selected
        raise ConfigError(f"{config.path}: matrices.{matrix.name}: model {broken[0]}: "
                          f"{unreadable[broken[0]]}")
    models = _pick(get_var("model"), known, matrix.models, "model", config,
                   lambda p: model_registry.from_path(Path(p), detect, shapes, None, companions),
                   unreadable)
    notices = model_registry.left_out(unreadable)   # none is selected: _pick refuses those
    model_registry.check_frameworks(models, stages, config)
    models = _with_inputs(models, get_var("inputs"))
    targets = [resolve_target(t) for t in
               _pick(get_var("target"), config.targets, matrix.targets, "target", config)]
    graph = build_graph(stages, models, targets, _variants(get_var("variants"), matrix, targets,
                                                           config))
    if get_var("shard"):
        graph = shard(graph, *parse_shard(get_var("shard")))
    return Plan(config, layout, graph, run or RunLog(), _executor(get_var, layout, stages),
                model_dirs + [config.root / "models"], notices)


def _executor(get_var, layout: Layout, stages: list[Stage]) -> DaskExecutor | None:
    where = executor.parse(get_var("executor"))
    if where is None:
        return None
    names = ("config", "matrix", "model", "target", "shapes", "inputs", "shard", "variants")
    variables = {n: get_var(n) for n in names if get_var(n) is not None}
    offered = lambda: {k: v for s in stages for k, v in s.worker_resources().items()}  # noqa: E731
    return DaskExecutor(where, variables, layout.root, layout.cache, offered)


def _variants(value: str | None, matrix, targets, config: Config) -> tuple[str, ...] | None:
    """Which variants to try: variants=a,b on the command line, else the matrix's `variants:`,
    else every one (None). A name no selected target has is an error."""
    wanted = tuple(v.strip() for v in value.split(",") if v.strip()) if value is not None \
        else matrix.variants
    if wanted is None:
        return None
    known = {name for t in targets for name, _ in t.variants}
    unknown = [v for v in wanted if v not in known]
    if unknown:
        where = "variants=" + value if value is not None else \
            f"{config.path}: matrices.{matrix.name}.variants"
        raise ConfigError(f"{where}: unknown variant {', '.join(unknown)} (the selected targets "
                          f"have: {', '.join(sorted(known))})")
    return wanted


def parse_shard(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4): this CI job builds the second of four shards of the selection."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise ConfigError(f"shard={text}: expected I/N with 1 <= I <= N, e.g. shard=2/4")
    return int(index), int(count)


def _with_inputs(models: list[ModelSpec], inputs: str | None) -> list[ModelSpec]:
    """inputs=path.npz on the command line: the one selected model's inputs."""
    if inputs is None:
        return models
    if len(models) != 1:
        raise ConfigError(f"inputs={inputs}: give inputs for one model at a time (model=NAME); "
                          f"{len(models)} are selected")
    sources = {r: p for r, p in models[0].sources.items() if r.split(":")[0] != "inputs"}
    sources.update(model_registry.input_sources(inputs, Path.cwd(), f"inputs={inputs}"))
    return [dataclasses.replace(models[0], sources=sources)]


def _node_files(plan: Plan, node: Node, dirs: dict | None = None) -> list[Path]:
    stage, model = plan.graph.nodes[node]["stage"], plan.graph.nodes[node]["model"]
    node_dir = _node_dir(plan, node, dirs)
    return [node_dir / rel for rel in stage.outputs(model)]


def _read_files(plan: Plan, node: Node, up: Node, dirs: dict | None = None) -> list[Path]:
    """The files of upstream node up that node reads (its file_dep)."""
    data, up_stage = plan.graph.nodes[node], plan.graph.nodes[up]["stage"]
    up_dir = _node_dir(plan, up, dirs)
    return [up_dir / rel for rel in
            read_files(data["stage"], data["model"], data["target"], up.stage, up_stage)]


def _node_dir(plan: Plan, node: Node, dirs: dict | None) -> Path:
    """layout.node_dir, remembered in dirs (one task generation asks for each node's often)."""
    if dirs is None:
        return plan.layout.node_dir(node)
    found = dirs.get(node)
    if found is None:
        found = dirs[node] = plan.layout.node_dir(node)
    return found


def _is_entry(plan: Plan, node: Node) -> bool:
    """The stage a model enters the pipeline at: the one that reads the model's own files."""
    return plan.graph.in_degree(node) == 0


def upstream_of(plan: Plan, node: Node) -> dict[str, tuple[Stage, Path]]:
    """What node reads: upstream name ('lower', or a peer's 'validate@cpu') -> (stage, dir)."""
    return {(up.stage if up.target in (None, node.target) else f"{up.stage}@{up.target}"):
            (plan.graph.nodes[up]["stage"], plan.layout.node_dir(up))
            for up in plan.graph.predecessors(node)}


def stage_action(plan: Plan, task_name: str, watched: str, soft_deps: list[str] = ()):
    """A stage task's action: the runner's entry goes to the reporter and, as the task's
    values, into doit's database, where the next run's up-to-date check finds it."""
    node = plan.nodes_by_task[task_name]
    data = plan.graph.nodes[node]
    delegate = None
    if plan.executor is not None:
        resources = data["stage"].resources(data["target"])
        delegate = lambda: plan.executor.run(node.task_name, resources)  # noqa: E731
    entry = execute(node, data["stage"], data["model"], data["target"], upstream_of(plan, node),
                    plan.layout, first=_is_entry(plan, node), delegate=delegate)
    plan.run.entries[node.task_name] = entry   # the reporter's copy, even where build/ is full
    if entry["status"] == "failed" and not data["soft"]:
        detail = f"\n  command: {entry['command']}" if entry.get("command") else ""
        return TaskFailed(f"{node.task_name} failed at {node.stage}: {entry['error']}{detail}\n"
                          f"  log: {entry['log']}")
    values = {"entry": {k: v for k, v in entry.items() if k != "fingerprint"}}
    if soft_deps:   # what the session's check compares next time
        values["soft_inputs"] = _soft_inputs(plan, node, entry.get("fingerprint"), soft_deps)
    if entry["status"] not in ("failed", "skipped"):   # those run again next time
        values["watched"] = watched
    return values


def _soft_inputs(plan: Plan, node: Node, fingerprint: dict | None,
                 soft_deps: list[str]) -> dict[str, list | None]:
    """The state of the inputs soft upstreams left, with the digests the runner took for the
    key ('<upstream>/<rel>'); a file is hashed again only where it took none."""
    from .session import input_state
    dirs = {name: up_dir for name, (_, up_dir) in upstream_of(plan, node).items()}
    taken = {}
    for part, digest in ((fingerprint or {}).get("inputs") or {}).items():
        name, _, rel = part.partition("/")
        if name in dirs and digest != "absent":
            taken[str(dirs[name] / rel)] = digest
    return {f: input_state(f, taken.get(f)) for f in soft_deps}


def watched_digest(stage: Stage, model: ModelSpec, target) -> str:
    """Params and tool versions, as one digest: a changed flag or compiler re-runs only the
    tasks it reaches (doit compares it with the one the last run saved)."""
    return keys.digest_bytes(keys.canonical(
        {"params": stage.params(model, target),
         "tools": {t: keys.tool_version(t) for t in stage.tools(model)}}).encode())


def task_specs(plan: Plan) -> list[dict]:
    """Every doit task of the plan as plain data ("kiln_action" names the action that
    pipeline.session attaches): stage tasks in topological order, then the groups."""
    return [*_validate_group(plan), *_stage_specs(plan), *_group_specs(plan)]


def _stage_specs(plan: Plan):
    dirs: dict = {}     # node -> its directory, asked once per node
    code: dict = {}     # (stage, model) -> its code files as text
    for node in nx.topological_sort(plan.graph):
        data = plan.graph.nodes[node]
        stage, model, target = data["stage"], data["model"], data["target"]
        # a soft upstream (a variant among several) may fail, and one a stage reads only if it
        # is there (partial_inputs) may leave nothing, without stopping this node: its files
        # are checked by the session, not doit (which stops a task whose file is missing)
        deps, soft, after = [], [], []
        for up in plan.graph.predecessors(node):
            files = [str(f) for f in _read_files(plan, node, up, dirs)]
            if plan.graph.nodes[up]["soft"] or stage.partial_inputs:
                soft += files
                after.append(up.task_name)
            else:
                deps += files
        code_key = (id(stage), id(model))
        if code_key not in code:
            code[code_key] = (stage, model, [str(Path(f)) for f in stage.code_files(model)])
        deps += code[code_key][2]
        if _is_entry(plan, node):
            deps += [str(f) for path in model.sources.values() for f in keys.source_files(path)]
        yield {
            "basename": node.stage,
            "name": node.task_name.split(":", 1)[1],
            "kiln_action": "stage",
            "file_dep": deps,
            **({"task_dep": after} if after else {}),
            "targets": [str(p) for p in _node_files(plan, node, dirs)],
            "meta": {"kiln": {"stage": node.stage, "model": node.model, "target": node.target,
                              "entry": str(plan.layout.entry_file(node)),
                              "out_dir": str(_node_dir(plan, node, dirs)),
                              "watched": watched_digest(stage, model, target),
                              **({"soft_deps": soft} if soft else {}),
                              **({"soft": True} if data["soft"] else {})}},
            "doc": f"{node.stage} {model.name}" + (f" for {target.name}" if target else ""),
        }


def _group_specs(plan: Plan):
    codegen = [n.task_name for n in plan.graph if n.stage == "codegen"]
    yield {"basename": "compile", "actions": None, "task_dep": codegen,
           "doc": "compile the selected models for the selected targets (model=, target=)"}
    yield {"basename": "prune", "kiln_action": "prune", "uptodate": [False], "verbosity": 2,
           "doc": "drop cache entries unused for days= (default 30) and blobs nothing names"}


def _validate_group(plan: Plan) -> list[dict]:
    """`doit validate` (and the default run) also picks each target's fastest variant. doit
    makes the group of the validate:* tasks; this, yielded before them, adds the picks."""
    picks = [n.task_name for n in plan.graph if plan.graph.nodes[n]["stage"].across_variants]
    return [{"basename": "validate", "name": None, "task_dep": picks,
             "doc": "validate (and time) every variant; pick each target's fastest"}] \
        if picks else []


def prune(cache: Path, build: Path, days: str | None):
    try:
        max_age = float(days if days is not None else 30)
    except ValueError:
        return TaskFailed(f"days={days}: expected a number of days")
    print(f"kiln: {Store(cache).prune(max_age)} (unused for {max_age:g} days)")
    scratch = prune_scratch(build / ".tmp")
    if scratch:
        print(f"kiln: removed {scratch} temp directories killed runs left in build/.tmp")
    return None


def plan_inputs(plan: Plan) -> tuple[list[Path], list[Path]]:
    """(files read, directories listed) in making the plan: what pipeline.memo re-checks."""
    files, dirs = [plan.config.path], []
    for directory in plan.model_dirs:
        dirs.append(directory)
        files += sorted(directory.glob("*.py")) if directory.is_dir() else []
    models = {plan.graph.nodes[n]["model"].name: plan.graph.nodes[n]["model"] for n in plan.graph}
    for model in models.values():
        for source in model.sources.values():
            source = Path(source)
            dirs.append(source.parent)   # a companion file appearing beside it
            if source.is_dir():
                dirs += [source, *(p for p in source.rglob("*") if p.is_dir())]
            files += keys.source_files(source)
    return files, dirs
