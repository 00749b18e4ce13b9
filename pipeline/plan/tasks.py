"""The plan: the command line's options and targets.yaml made into the stage graph of the
selected models x targets, and that graph into doit task specs.

doit owns scheduling, the CLI and the local up-to-date check (file_dep by content; params,
tool versions and outputs by pipeline.run.uptodate); the store owns reuse across runs and
machines. Specs are plain data (pipeline.driver attaches the actions), so pipeline.plan.memo
can keep them between runs.
"""
from __future__ import annotations

import dataclasses
import functools
import marshal
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import networkx as nx

from ..cache import remote, toolchain
from ..cache.digest import canonical, digest_bytes, digest_file, source_files
from ..cache.probes import tool_version, use_probe_cache
from ..names import base_target, file_stem, release_target, task_name, task_subname, upstream_name
from ..stage import ConfigError, ModelSpec, Node, Stage, Target, read_files
from ..vocab import TaskInfo
from . import models as model_registry
from . import xfail
from .config import Config, load_config
from .facts import FACTS_FILE, ModelFacts
from .graph import build_graph, shard, topological_order
from .layout import Layout, room_for_model
from .options import Options


@dataclass
class Plan:
    """What this doit invocation builds: the stage graph of the selected models x targets
    (each node carries its Stage, ModelSpec and Target) and where its files go."""
    config: Config
    layout: Layout
    graph: nx.DiGraph
    options: Options
    stages: list[Stage]
    model_dirs: list[Path] = dataclasses.field(default_factory=list)   # where models were found
    notices: list[str] = dataclasses.field(default_factory=list)       # printed at every run
    expected: dict = dataclasses.field(default_factory=dict)   # expected failures (plan.xfail)
    expected_file: Path | None = None                          # where they were read from
    listed: list[Path] = dataclasses.field(default_factory=list)   # folders scanned for models
    sources: dict = dataclasses.field(default_factory=dict)   # files_of's answers, by source
    code: dict = dataclasses.field(default_factory=dict)      # code_files_of's, by the ids

    def files_of(self, source: Path) -> list[Path]:
        """source_files(source), asked once a plan: the task specs and plan_inputs both need
        it, and each asking stats the source (8,000 of them for a 2,000-case suite)."""
        found = self.sources.get(source)
        if found is None:
            found = self.sources[source] = source_files(source)
        return found

    def code_files_of(self, stage: Stage, model: ModelSpec) -> tuple:
        """stage.code_files(model), asked once a plan: the task specs and plan_inputs both
        need it, for every stage x model (20,000 of them for a 2,000-case suite). Known by the
        objects' ids, and kept with them (so no other object takes their ids)."""
        key = (id(stage), id(model))
        found = self.code.get(key)
        if found is None:
            found = self.code[key] = (stage, model, tuple(stage.code_files(model)))
        return found[2]

    @functools.cached_property
    def nodes_by_task(self) -> dict[str, Node]:
        return {node.task_name: node for node in self.graph}

    def job(self, node: Node) -> Job:
        """What the runner needs to decide and do node's work."""
        data = self.graph.nodes[node]
        return Job(node, data["stage"], data["model"], data["target"], upstream_of(self, node),
                   is_entry(self, node), self.options.retry_failed)


@dataclass(frozen=True)
class Job:
    """One stage node as the runner (pipeline.run) takes it: the node, its stage, model and
    target, what it reads (upstream name -> (stage, directory)), whether it is the stage
    the model enters at (then the model's own files enter its key), and whether a failure
    remembered under its key runs again (retry=failed)."""
    node: Node
    stage: Stage
    model: ModelSpec
    target: Target | None
    upstream: dict[str, tuple[Stage, Path]]
    first: bool
    retry_failed: bool = False


def _pick(names: tuple[str, ...] | None, valid: dict, default: tuple, what: str,
          config: Config, resolve_path: Callable[[str], object] | None = None,
          unusable: dict[str, str] | None = None) -> list:
    """What what= selects. `unusable` names what exists but cannot be used, with why (a
    models/ file with a syntax error): selecting it says why, not "unknown"."""
    unusable = unusable or {}
    if names is None:
        return [valid[n] for n in default]
    if names == ("all",):
        if unusable:
            raise ConfigError(f"{what}=all: {next(iter(unusable.values()))}")
        return list(valid.values())
    picked = []
    for name in names:
        if name in valid:
            picked.append(valid[name])
        elif name in unusable:
            raise ConfigError(f"{what}={name}: {unusable[name]}")
        elif resolve_path and (os.sep in name or Path(name).suffix):
            if not Path(name).exists():
                raise ConfigError(f"{what}={name}: no such file or directory")
            found = resolve_path(name)   # a folder: every model in it
            picked += found if isinstance(found, list) else [found]
        else:
            raise ConfigError(f"{what}={name}: unknown {what} (valid: {', '.join(sorted(valid))}"
                              + (", or a path to a model file" if resolve_path else "")
                              + f"; see {config.path})")
    return picked


def make_plan(options: Options, stages: list[Stage], detect: model_registry.Detect,
              resolve_target: Callable, model_dirs: list[Path], root: Path | None = None,
              companions: model_registry.Companions = model_registry.no_companions) -> Plan:
    root = Path(root or os.getcwd()).resolve()
    config = load_config(options.config or os.environ.get("KILN_CONFIG") or root / "targets.yaml",
                         [s.name for s in stages])
    layout = Layout(root, root / "build", Path(os.environ.get("KILN_CACHE") or root / "cache").resolve(),
                    remote.settings(config.remote, os.environ))
    use_probe_cache(layout.build / ".kiln" / "tool-probes.json")
    toolchain.use_root(layout.cache / "toolchains")
    if options.matrix not in config.matrices:
        raise ConfigError(f"matrix={options.matrix}: unknown matrix (valid: "
                          f"{', '.join(config.matrices)}; see {config.path})")
    matrix = config.matrices[options.matrix]
    model_dirs = model_dirs + [config.root / "models"]
    # the stages' hooks read model files (ONNX: the whole protobuf): asked once per file stat
    facts = ModelFacts(layout.build / ".kiln" / FACTS_FILE)
    # a folder of models is scanned with the bare detect (it reads no file: a suffix, a stat)
    scan, listed = facts.folder(lambda path: model_registry.scan_folder(path, detect)), []
    try:
        models, notices, known = _models(options, matrix, config, model_dirs,
                                         facts.detect(detect), facts.companions(companions),
                                         scan, listed)
    finally:
        facts.save()   # (what was learnt holds even when a selection is refused)
    model_registry.check_frameworks(models, stages, config)
    # tune=, tune_budget= reach the hook only when given (a hook of one argument still serves)
    tuning = {} if options.tune is None and options.tune_budget is None else \
        {"tune": options.tune, "tune_budget": options.tune_budget}
    targets = [resolve_target(t, **tuning) for t in _with_releases(
        _pick(options.targets, config.targets, matrix.targets, "target", config),
        options.releases or matrix.releases)]
    targets = _compared_with(targets, options, config, resolve_target)
    _refuse_an_empty_selection(options, matrix, config, models, targets)
    if not (matrix.timing if options.timing is None else options.timing):
        targets = [dataclasses.replace(t, timing=False) for t in targets]
    expected, expected_file = _expected(options, matrix, config)
    if expected_file is not None:
        notices = [*notices, *xfail.unmatched(expected, expected_file,
                                              {m.name for m in models}, known)]
    graph = build_graph(stages, models, targets, _variants(options, matrix, targets, config))
    _refuse_names_too_long(graph)
    if options.shard:
        graph = shard(graph, *options.shard)
        if not any(node.target is not None for node in graph):
            notices = [*notices, (f"kiln: shard={options.variables['shard']}: this shard "
                                  f"holds none of the {len(models) * len(targets)} model x "
                                  "target cases selected: nothing to build")]
    return Plan(config, layout, graph, options, stages, model_dirs, notices, expected.reasons,
                expected_file, listed)


def _with_releases(targets: list[Target], releases: tuple[str, ...] | None) -> list[Target]:
    """Each target once per release of its tools (iree=, a matrix's `iree:`), named for it
    ('cpu+3.12.0'); the stages' hook provisions each (stages.toolchains)."""
    if not releases:
        return targets
    return [dataclasses.replace(t, name=release_target(t.name, release), toolchain=release)
            for t in targets for release in releases]


def _compared_with(targets: list[Target], options: Options, config: Config,
                   resolve_target: Callable) -> list[Target]:
    """Each target with the targets its build is compared with where its numbers are off
    (Target.compare_with): the one against= names, else every other one declared."""
    if options.against is not None:
        if options.against not in config.targets:
            raise ConfigError(f"against={options.against}: unknown target (valid: "
                              f"{', '.join(config.targets)}; see {config.path})")
        chosen = resolve_target(config.targets[options.against])
        return [dataclasses.replace(t, compare_with=(chosen,), compare_with_chosen=True)
                for t in targets]
    declared = []
    for target in config.targets.values():
        if target.toolchain is not None:   # (a reference is built with kiln's own release)
            continue
        try:
            declared.append(resolve_target(target))
        except ConfigError:   # an unselected target this machine cannot resolve: not one
            continue
    return [dataclasses.replace(t, compare_with=tuple(d for d in declared if d.name != t.name))
            for t in targets]


def _refuse_an_empty_selection(options: Options, matrix, config: Config, models: list,
                               targets: list) -> None:
    """A selection of no model or no target (a matrix's `targets: []`, model= that names
    none) would build nothing and say nothing: refused, naming what is empty. (An empty shard
    of a selection is not refused: CI jobs 1/N ... N/N share out however many cases there
    are; make_plan says so.)"""
    for found, what in ((models, "model"), (targets, "target")):
        if found:
            continue
        if what in options.variables:
            raise ConfigError(f"{what}={options.variables[what]}: selects no {what}: nothing to "
                              f"build (give a {what} name, several comma-separated, or 'all'"
                              + (", or a path to a model file or folder)" if what == "model" else ")"))
        valid = f" (valid targets: {', '.join(config.targets)})" if what == "target" else ""
        raise ConfigError(f"{config.path}: matrices.{matrix.name} selects no {what}: nothing "
                          f"to build{valid}")


def _refuse_names_too_long(graph: nx.DiGraph) -> None:
    """A model whose name, with a stage and a target, is too long for a file name (its log,
    its record entry) is refused here, naming its file and the limit: it would otherwise
    fail at its first stage, with "File name too long", on every run."""
    # per model, the node whose file names leave least room, and that room (each node's
    # worked out once: 20,000 of them in a 2,000-case plan)
    tightest: dict[str, tuple[int, Node]] = {}
    for node in graph:
        room = room_for_model(node)
        if node.model not in tightest or room < tightest[node.model][0]:
            tightest[node.model] = (room, node)
    for model, (room, node) in tightest.items():
        if len(model.encode()) > room:
            spec = graph.nodes[node]["model"]
            raise ConfigError(f"{model_registry.origin(spec)}: model name {model[:40]}... "
                              f"({len(model)} characters) is too long: kiln names files after "
                              f"it with its stages and targets (build/logs/"
                              f"{file_stem(task_name(node.stage, model[:20] + '...', node.target))}"
                              ".log), and with this "
                              f"selection's a model name may have at most {room} characters "
                              "(a file name holds 255 bytes); rename it")


def _expected(options: Options, matrix, config: Config) -> tuple[xfail.Listed, Path | None]:
    """The expected failures (with their lines) and their file: xfail= (relative to the
    working directory), else the matrix's `xfail:` (relative to the config file), else none."""
    if options.xfail is not None:
        path, what = Path(options.xfail).resolve(), f"xfail={options.xfail}"
    elif matrix.xfail is not None:
        path, what = matrix.xfail, f"{config.path}: matrices.{matrix.name}.xfail"
    else:
        return xfail.Listed({}, {}), None
    return xfail.read(path, what, config.targets), path


def _models(options: Options, matrix, config: Config, model_dirs: list[Path], detect,
            companions, scan, listed: list[Path]) -> tuple[list[ModelSpec], list[str], set[str]]:
    """The selected models, notices of the models/ files left out as unreadable, and the
    names of every model kiln knows here, selected or not (models/, the config's, the
    matrix's suite). The directories of every folder scanned (model=DIR, the matrix's
    suite) go into listed."""

    def folder(path: Path, what: str) -> list[ModelSpec]:
        if not path.is_dir():
            raise ConfigError(f"{what}: {path} is not a folder")
        scanned = scan(path)
        listed.extend(Path(d) for d in scanned["dirs"])
        return model_registry.from_folder(path, scanned, options.shapes, what, companions,
                                          config.reserved)

    def from_path(text: str) -> ModelSpec | list[ModelSpec]:
        path = Path(text)
        if path.is_dir() and detect(path) is None:
            return folder(path, f"model={text}")
        return model_registry.from_path(path, detect, options.shapes, None, companions,
                                        config.reserved)

    known = model_registry.available(config, model_dirs, detect, companions)
    unreadable = model_registry.unreadable(model_dirs, known)
    unknown = [m for m in matrix.models if m not in known and m not in unreadable]
    if unknown:
        raise ConfigError(f"{config.path}: matrices.{matrix.name}: unknown model "
                          f"{', '.join(unknown)} (valid: {', '.join(sorted(known))})")
    broken = [m for m in matrix.models if m in unreadable] if options.models is None else []
    if broken:   # the matrix is what is selected
        raise ConfigError(f"{config.path}: matrices.{matrix.name}: model {broken[0]}: "
                          f"{unreadable[broken[0]]}")
    suite = folder(config.root / matrix.suite, f"{matrix.suite_at}: matrices.{matrix.name}.suite") \
        if matrix.suite else []
    # a suite's cases are selectable by name too (a models/ or config model of the name wins)
    valid = {**{m.name: m for m in suite}, **known}
    models = [known[n] for n in matrix.models] + suite if options.models is None else \
        _pick(options.models, valid, (), "model", config, from_path, unreadable)
    # none of the unreadable is selected (_pick refuses those): they are only noticed
    return (_with_inputs(model_registry.unique(models), options.inputs),
            model_registry.left_out(unreadable), set(valid))


def _variants(options: Options, matrix, targets, config: Config) -> tuple[str, ...] | None:
    """Which variants to try: variants=a,b on the command line, else the matrix's `variants:`,
    else every one (None). A name no selected target has is an error."""
    wanted = options.variants if options.variants is not None else matrix.variants
    if wanted is None:
        return None
    known = {name for t in targets for name, _ in t.variants}
    unknown = [v for v in wanted if v not in known]
    if unknown:
        where = "variants=" + options.variables["variants"] if options.variants is not None \
            else f"{config.path}: matrices.{matrix.name}.variants"
        raise ConfigError(f"{where}: unknown variant {', '.join(unknown)} (the selected targets "
                          f"have: {', '.join(sorted(known))})")
    return wanted


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


def input_files(plan: Plan, node: Node, up: Node) -> list[Path]:
    """The files of upstream node up that node reads (its file_dep, or soft_deps where up is
    a variant's or node takes partial inputs), as paths in build/."""
    data, up_stage = plan.graph.nodes[node], plan.graph.nodes[up]["stage"]
    up_dir = plan.layout.node_dir(up)
    return [up_dir / rel for rel in
            read_files(data["stage"], data["model"], data["target"], up.stage, up_stage)]


class _Places:
    """Where the plan's nodes keep their files, as the text str() of layout's Paths gives,
    each node's directory made once: a 2,000-case plan names some 300,000 files, and making
    each a Path was most of a cold plan's time. A name that is not one plain path component
    goes through Path, as layout makes it."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.build = str(layout.build)
        self.tasks = str(layout.build / ".kiln" / "tasks")
        self.dirs: dict[Node, str] = {}
        self.plain: dict[str, bool] = {}   # relative name -> whether it joins as text
        self.all_plain: dict[tuple, bool] = {}   # names -> whether each joins as text

    def node_dir(self, node: Node) -> str:
        found = self.dirs.get(node)
        if found is None:
            parts = [node.model, *([node.target] if node.target else []), node.stage]
            found = self.dirs[node] = "/".join([self.build, *parts]) \
                if all(map(self._is_plain, parts)) else str(self.layout.node_dir(node))
        return found

    def files(self, node: Node, names) -> list[str]:
        """str(layout.node_dir(node) / name) for each name."""
        directory = self.dirs.get(node) or self.node_dir(node)
        plain = self.all_plain.get(names)   # (the stages' names come as the same few tuples)
        if plain is None:
            plain = all(map(self._is_plain, names))
            if isinstance(names, tuple):
                self.all_plain[names] = plain
        if plain:
            prefix = directory + "/"
            return [prefix + name for name in names]
        return [f"{directory}/{name}" if self._is_plain(name) else str(Path(directory) / name)
                for name in names]

    def entry_file(self, node: Node) -> str:
        """str(layout.entry_file(node)): file_stem leaves no '/' in the name."""
        return f"{self.tasks}/{file_stem(node.task_name)}.json"

    def _is_plain(self, name: str) -> bool:
        """Whether Path writes name as given after a '/' (relative, no '/' at its end, no
        '.' or empty part that Path drops)."""
        found = self.plain.get(name)
        if found is None:
            found = self.plain[name] = name not in ("", ".") and not name.startswith("/") \
                and str(Path(name)) == name
        return found


def is_entry(plan: Plan, node: Node) -> bool:
    """The stage a model enters the pipeline at: the one that reads the model's own files."""
    return plan.graph.in_degree(node) == 0


def upstream_of(plan: Plan, node: Node) -> dict[str, tuple[Stage, Path]]:
    """What node reads: upstream name ('lower', or a peer's 'validate@cpu') -> (stage, dir)."""
    return {upstream_name(up.stage, None if up.target in (None, node.target) else up.target):
            (plan.graph.nodes[up]["stage"], plan.layout.node_dir(up))
            for up in plan.graph.predecessors(node)}


def watched_digest(stage: Stage, model: ModelSpec, target, code: dict[str, str],
                   seen: dict | None = None) -> str:
    """Params, tool versions and the stage's code (path -> digest), as one digest: a changed
    flag, compiler or stage file re-runs only the tasks it reaches (doit compares it with the
    one the last run saved).

    The code files are not file_dep: doit would stat and compare each of them for every task
    on every run (most of a no-op's file checks), and a touched but unchanged one would cost
    a hash per task per run until the task ran again. The plan memo watches them instead
    (plan_inputs): a changed one makes the plan, and so this digest, again.

    seen remembers the digests of one plan by what they were made of (_exact)."""
    params = stage.key_params(model, target)
    tools = {t: tool_version(t, target and target.toolchain) for t in stage.tools(model)}
    key = _exact(params, tools, code) if seen is not None else None
    found = seen.get(key) if key is not None else None
    if found is None or found[0] is not code:
        found = (code, digest_bytes(canonical({"params": params, "tools": tools,
                                               "code": code}).encode()))
        if key is not None:
            seen[key] = found
    return found[1]


def _exact(params: dict, tools: dict, code: dict) -> tuple | None:
    """A key equal only for the same params and tools, of the same types (marshal writes 1,
    1.0 and True apart, where == does not), and the same code dict; None where marshal
    cannot write them. Most of a suite's tasks share a stage's params and code: the key
    spares the canonical JSON of each (20,000 of them in a 2,000-case plan)."""
    try:
        return id(code), marshal.dumps((params, tools))
    except ValueError:
        return None


def _code_digests(plan: Plan, stage: Stage, model: ModelSpec, seen: dict) -> dict[str, str]:
    """The stage's code files for this model, path -> sha256, each file hashed once a plan
    (seen holds the digests by path and the answers by (stage, model))."""
    key = (id(stage), id(model))
    if key not in seen:
        files = plan.code_files_of(stage, model)
        # (most models share their files, as the same objects: made into paths once, not
        # once per task: 2,000 cases made 120,000 Paths here, a third of a cold plan; and
        # known by the objects' ids, as hashing 20,000 tuples of Paths was a tenth)
        ids = ("files", *map(id, files))
        found = seen.get(ids)
        if found is None:   # (the files kept in seen: no other object takes their ids)
            paths = [str(Path(f)) for f in files]
            for path in paths:
                if path not in seen:
                    seen[path] = digest_file(path)
            found = seen[ids] = (files, {path: seen[path] for path in paths})   # (keeps the ids)
        seen[key] = (stage, model, found[1])   # (keeps the ids)
    return seen[key][2]


def task_specs(plan: Plan) -> list[dict]:
    """Every doit task of the plan as plain data ("kiln_action" names the action that
    pipeline.driver.session attaches): stage tasks in topological order, then the groups."""
    return [*_stage_groups(plan), *_stage_specs(plan), *_group_specs(plan)]


def _stage_specs(plan: Plan):
    places = _Places(plan.layout)
    code: dict = {}     # the code files' digests (_code_digests)
    watched: dict = {}  # the watched digests (watched_digest)
    # (the graph's own dicts: networkx's views cost as much as the specs, 50,000 lookups)
    nodes, preds = plan.graph._node, plan.graph._pred
    for node in topological_order(plan.graph):
        data = nodes[node]
        stage, model, target = data["stage"], data["model"], data["target"]
        # a soft upstream (a variant among several) may fail, and one a stage reads only if it
        # is there (partial_inputs) may leave nothing, without stopping this node: its files
        # are checked by the session, not doit (which stops a task whose file is missing);
        # so is the record entry of an upstream whose failure the stage diagnoses
        deps, soft, after = [], [], []
        ups = preds[node]
        for up in ups:
            up_data = nodes[up]
            files = places.files(up, read_files(stage, model, target, up.stage, up_data["stage"]))
            if stage.follows == up.stage:   # its outcome is what this node reads
                soft.append(places.entry_file(up))
                after.append(up.task_name)
            if up_data["soft"] or stage.partial_inputs:
                soft += files
                after.append(up.task_name)
            else:
                deps += files
        if not ups:   # (is_entry)
            deps += [str(f) for path in model.sources.values() for f in plan.files_of(path)]
        yield {
            "basename": node.stage,
            "name": task_subname(node.task_name),
            "kiln_action": "stage",
            **({"kiln_default": True} if stage.default else {}),
            "file_dep": deps,
            **({"task_dep": after} if after else {}),
            "targets": places.files(node, stage.outputs(model)),
            "meta": {"kiln": TaskInfo(stage=node.stage, model=node.model, target=node.target,
                              entry=places.entry_file(node),
                              out_dir=places.node_dir(node),
                              watched=watched_digest(stage, model, target,
                                                     _code_digests(plan, stage, model, code),
                                                     watched),
                              **({"role": str(stage.role)} if stage.role else {}),   # (plain: marshal)
                              **({"stands_for": list(stage.stands_for)}
                                 if stage.stands_for and target else {}),
                              **({"soft_deps": soft} if soft else {}),
                              **({"soft": True} if data["soft"] else {}),
                              **({"followed": True} if data["followed"] else {}),
                              **_expected_meta(plan, node))},
            "doc": f"{node.stage} {model.name}" + (f" for {target.name}" if target else ""),
        }


def _expected_meta(plan: Plan, node: Node) -> dict:
    """{"xfail": reason} for a task of a model x target expected to fail (the report reads
    it from the task's meta: pipeline.report.record.entry_of), else {}."""
    reason = node.target and xfail.reason(plan.expected, node.model, base_target(node.target))
    return {"xfail": reason} if reason else {}


# A group task has no action of its own: "up to date" only spares doit saving it to .doit.db
# on every run (its members run or not on their own), so a no-op run leaves the database,
# and the record memo keyed by it (pipeline.report.record.reuse), as they were.
GROUP_UPTODATE = [True]


def _group_specs(plan: Plan):
    """The groups stages declare that are not a stage's own name (codegen's 'compile'), and
    `doit prune`."""
    names = {s.name for s in plan.stages}
    for group, doc, members in _groups(plan):
        if group not in names:
            yield {"basename": group, "actions": None, "task_dep": members, "doc": doc,
                   "uptodate": GROUP_UPTODATE}
    yield {"basename": "prune", "kiln_action": "prune", "uptodate": [False], "verbosity": 2,
           "doc": "drop cache entries unused for days= (default 30) and blobs nothing names"}


def _stage_groups(plan: Plan) -> list[dict]:
    """The group of each stage's tasks, which doit makes; this, yielded before them, makes it
    up to date (GROUP_UPTODATE) and adds the tasks of other stages that join it (pick joins
    'validate': `doit validate` also picks each target's fastest variant)."""
    joining = {group: (doc, members) for group, doc, members in _groups(plan)}
    present = {node.stage for node in plan.graph}
    specs = []
    for stage in plan.stages:
        doc, members = joining.get(stage.name, (None, []))
        doc = doc if members else stage.doc   # (the group's word, where stages join it)
        if stage.name in present or members:
            specs.append({"basename": stage.name, "name": None, "task_dep": members,
                          "uptodate": GROUP_UPTODATE, **({"doc": doc} if doc else {})})
    return specs


def _groups(plan: Plan) -> list[tuple[str, str, list[str]]]:
    """(group, its doc, the tasks of the stages that join it), in stage order."""
    groups: dict[str, tuple[str, list[str]]] = {}
    for stage in plan.stages:
        if stage.group:
            doc, members = groups.setdefault(stage.group, (stage.group_doc, []))
            members += [n.task_name for n in plan.graph if n.stage == stage.name]
    return [(group, doc, members) for group, (doc, members) in groups.items()]


def plan_inputs(plan: Plan) -> tuple[list[Path], list[Path]]:
    """(files read, directories listed) in making the plan: what pipeline.plan.memo re-checks.
    Among the files, every stage's code: its digest is in the tasks (watched_digest)."""
    files, dirs = [plan.config.path, *filter(None, [plan.expected_file])], []
    for directory in plan.model_dirs:
        dirs.append(directory)
        files += sorted(directory.glob("*.py")) if directory.is_dir() else []
    dirs += plan.listed   # a case added to a folder of models makes the plan again
    models = {model.name: model for _, model in plan.graph.nodes(data="model")}
    for model in models.values():
        for source in model.sources.values():
            source = source if isinstance(source, Path) else Path(source)
            dirs.append(source.parent)   # a companion file appearing beside it
            found = plan.files_of(source)
            if found != [source]:   # a directory (a file's answer is itself)
                dirs += [source, *(p for p in source.rglob("*") if p.is_dir())]
            files += found
    code = {(id(d["stage"]), id(d["model"])): (d["stage"], d["model"])
            for _, d in plan.graph.nodes(data=True)}
    # (the files as given, then made Paths: one Path per file, not one per task)
    # (by identity first: most are the same few objects, and hashing a Path is slow)
    given = {id(f): f for stage, model in code.values() for f in plan.code_files_of(stage, model)}
    files += sorted({Path(f) for f in given.values()})
    return files, dirs
