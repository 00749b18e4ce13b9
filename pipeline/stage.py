"""The contract between the engine and stages/: what a stage declares, what it is handed
when it runs (model, target, inputs, a fresh output directory) and how it says it failed.

A stage is a pure function of its declared inputs: it reads only the upstream output
directories and the model source it is given, and writes only into ctx.out. How it says it
failed (StageError, StageSkipped, ConfigError) lives in pipeline/errors.py, re-exported
here; of the engine this module imports only that, the names and the vocabulary.
"""
from __future__ import annotations

import contextlib
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from .errors import ConfigError, StageError, StageSkipped  # noqa: F401 (the contract's)
from .names import parse_upstream, task_name
from .vocab import Role


@dataclass(frozen=True)
class Target:
    """A target to compile for (a targets.yaml entry, or one variant of it)."""
    name: str
    backend: str
    arch: str | None
    driver: str | None
    flags: tuple[str, ...]
    atol: float
    rtol: float
    where: str = field(default="", compare=False)   # "targets.yaml:12", for error messages
    weights: str | None = None   # "inline" puts the weights back into this target's module
    # named flag sets to compile, time and pick from: (name, flags), or (name, None) to drop a
    # backend's built-in one; resolved (stages.targets) to the full list, 'default' first
    variants: tuple[tuple[str, tuple[str, ...] | None], ...] = ()
    variant: str | None = None   # for a variant's own stages: which one (its flags are added)
    base: str | None = None      # for a variant's own stages: the target it is a variant of
    timing: bool = True          # False (timing=off, a matrix's `timing: false`): validate
    # checks the numbers only, timing neither the module nor the framework
    # the targets this one's build is compared with where its numbers are off (a stage that
    # diagnoses a failure: bisect): every other target declared, in order, unless chosen
    # (against= on the command line names the one to use)
    compare_with: tuple["Target", ...] = field(default=(), compare=False, repr=False)
    compare_with_chosen: bool = field(default=False, compare=False, repr=False)
    # per-dispatch tuning (targets.yaml `tune:`, tune= on the command line): None (off), or
    # the variant whose flags the tuned variant starts from; tune_budget: its seconds per
    # model (None: the tuning stage's default)
    tune: str | None = None
    tune_budget: float | None = None
    # another release of the target's tools (targets.yaml `iree:`, iree= on the command line):
    # None, the release kiln is installed with; else a release provisioned apart (pipeline.
    # cache.toolchain) whose tools the stages start and whose versions enter the keys
    toolchain: str | None = None


# a constant with at least this many elements is a weight: it goes to the parameter archive
DEFAULT_WEIGHTS_THRESHOLD = 8


@dataclass(frozen=True)
class ModelSpec:
    """One model, however it was declared (a models/ file, a config entry, a file path).

    `sources` maps a role name to a file whose *content* enters the key (never its path)."""
    name: str
    framework: str
    sources: dict[str, Path]
    factory: str | None = None
    shapes: dict = field(default_factory=dict, hash=False)
    atol: float | None = None
    rtol: float | None = None
    seed: int = 0
    weights: str = "external"           # "external" (a parameter archive, .irpa) or "inline"
    weights_threshold: int = DEFAULT_WEIGHTS_THRESHOLD  # fewest elements a weight is moved out at

    def key_fields(self) -> dict:
        """What of the model's declaration enters the key of the stage it enters at."""
        return {"framework": self.framework, "factory": self.factory and self.factory.split(":")[-1],
                "shapes": self.shapes, "seed": self.seed}

    def input_files(self) -> dict[str, Path]:
        """User-given inputs (sources named 'inputs' or 'inputs:<name or position>')."""
        return {role: path for role, path in self.sources.items() if role.split(":")[0] == "inputs"}

    def __hash__(self):
        return hash(self.name)


class ByRole(NamedTuple):
    """An input named by what it is, not by which stage makes it (in Stage.inputs): the
    engine (pipeline.plan.graph) resolves it, per model x target, to the last stage before the
    reader in pipeline order whose role it is and that applies there. So a stage added after
    codegen that remakes the module (a tuning stage) is what validate reads, and codegen's
    readers never name codegen. The input keeps the resolved stage's name in ctx.inputs (and
    in the key); StageContext.built finds it."""
    role: Role


# the deployable module built for the target: codegen's, or a later stage's that remakes it
MODULE = ByRole(Role.MODULE)


class Node(NamedTuple):
    stage: str
    model: str
    target: str | None

    @property
    def task_name(self) -> str:
        return task_name(self.stage, self.model, self.target)


@dataclass
class StageContext:
    model: ModelSpec
    target: Target | None
    inputs: dict[str, Path]      # upstream stage name -> its output directory
    out: Path                    # a fresh, empty directory
    log_lines: list[str] = field(default_factory=list)
    machine: object = None       # pipeline.run.machine.MachineLock held shared while the stage runs
    makers: dict[str, Stage] = field(default_factory=dict)   # input name -> the stage that made it
    # the cache the run stores into (pipeline.cache.store.Store, with its remote): for a stage
    # that keeps results of its own finer than a stage (tuning: one per dispatch); None: none
    store: object = None

    def log(self, line: str) -> None:
        self.log_lines.append(line)

    def built(self, role: str | ByRole) -> dict[str, Path]:
        """The inputs made by stages of a role (an input declared ByRole), by input name:
        'codegen', or a variant's 'codegen@cpu~im2col' (an across_variants stage's)."""
        role = role.role if isinstance(role, ByRole) else role
        return {name: path for name, path in self.inputs.items()
                if name in self.makers and self.makers[name].role == role}

    def alone(self):
        """The machine to this stage alone, for a measurement: the stages already running
        finish first and none starts until the block ends (a no-op without a lock)."""
        return self.machine.alone() if self.machine is not None else contextlib.nullcontext()


class Stage:
    """Base class: a stage module defines one subclass and registers an instance.

    Subclasses keep heavy imports (torch, iree) inside run(): dodo.py imports every stage."""
    name: str = ""
    per_target: bool = False
    across_variants: bool = False        # once per target, reading each of its variants' nodes
    partial_inputs: bool = False         # runs with the inputs that exist (a failed variant's do not)
    # the upstream stage whose failure this stage diagnoses (bisect: validate's): its node runs
    # only where that one failed in a way it explains (needed), which then does not stop it;
    # it runs on the machine doit runs on (it reads that node's record entry in build/)
    follows: str | None = None
    group: str | None = None             # a doit group its tasks also make up (codegen: compile)
    group_doc: str = ""                  # what `doit list` says of that group
    doc: str = ""                        # what `doit list` says of this stage's tasks: a line
    default: bool = False                # `doit` alone runs this stage's tasks (validate)
    # what the report reads this stage's entries as (None: a step on the way): 'module' (it
    # builds the deployable module: codegen), 'verdict' (it says whether a model x target
    # passed: validate), 'choice' (it picks among a target's variants, and its verdict is
    # the target's: pick)
    role: Role | None = None
    # what it reads: upstream stage names (the constants their modules own: LOWER.name), or
    # a role (ByRole: MODULE, the module built for the target, whichever stage built it)
    inputs: tuple[str | ByRole, ...] = ()
    code: tuple[Path, ...] = ()          # source files that fingerprint this stage
    # per-model stages a per-target stage does the work of, for the targets it applies to
    # (relegalize: legalize and emit, with the target's own release): in those targets' rows
    # their entries count for nothing (the report folds a model's stages into every row)
    stands_for: tuple[str, ...] = ()

    def outputs(self, model: ModelSpec) -> tuple[str, ...]:
        raise NotImplementedError

    def code_files(self, model: ModelSpec) -> tuple[Path, ...]:
        """The stage's own module plus the helper files it declares."""
        return (_module_file(type(self).__module__), *self.code)

    def tools(self, model: ModelSpec) -> tuple[str, ...]:
        return ()

    def reads(self, upstream: str, outputs: tuple[str, ...], model: ModelSpec,
              target: Target | None) -> tuple[str, ...]:
        """Which of an upstream stage's outputs this stage reads: only these enter its key
        and its up-to-date check (lower reads the weight-free MLIR, not the weights)."""
        return outputs

    def key_params(self, model: ModelSpec, target: Target | None) -> dict:
        """The parameters this stage's outputs depend on, as its key's "params" part (not
        a model's YAML `params:`, which says where its weights go)."""
        return {}

    def peers(self, model: ModelSpec, target: Target | None, targets: list[Target]) -> tuple[str, ...]:
        """Other targets whose node of this same stage this one reads (e.g. a reference run
        on CPU for a model that has no framework answer). Handed in as '<stage>@<target>'."""
        return ()

    def siblings(self, model: ModelSpec, target: Target | None) -> tuple[str, ...]:
        """For a stage of one variant: the stages whose nodes for the target's *other*
        variants it reads too (handed in as 'validate@cpu~im2col'), e.g. a tuning stage that
        starts from the fastest variant that validated. Its partial_inputs lets it run
        without those that failed."""
        return ()

    def resources(self, target: Target | None) -> dict[str, int]:
        """Dask resources a worker must declare to run this stage (e.g. {'vulkan': 1})."""
        return {}

    def worker_resources(self) -> dict[str, int]:
        """The resources this machine offers for this stage: what a LocalCluster declares."""
        return {}

    def unavailable(self, model: ModelSpec, target: Target | None) -> str | None:
        """Why this stage cannot run on this machine (e.g. no device for the target's
        driver), or None when it can. Asked before its key: the node is then skipped, never
        run, restored or failed, and `doit explain` says so beforehand."""
        return None

    def needed(self, status: str | None, result: dict | None) -> str | None:
        """For a stage that follows another's failure: None where that stage's outcome (its
        status and result) is one this stage diagnoses, else why it has nothing to do (the
        node is then skipped: "validate passed: nothing to bisect")."""
        return None

    def applies_to(self, model: ModelSpec, target: Target | None) -> bool:
        """False where a model skips this stage (e.g. a model file that enters at legalize)
        or, for a per-target stage, this target does (target: the node's target, a variant's
        own; None for a per-model stage). A stage reading one that does not apply reads
        the one before it of the same role (ByRole), or goes without it."""
        return True

    def run(self, ctx: StageContext) -> dict | None:
        raise NotImplementedError



@functools.cache
def _module_file(module: str) -> Path:
    """A loaded module's file, made a Path once (code_files is asked per model and stage)."""
    return Path(sys.modules[module].__file__)


def read_files(stage: Stage, model: ModelSpec, target: Target | None, name: str,
               up_stage: Stage) -> tuple[str, ...]:
    """The upstream outputs stage reads (name is 'lower' or a peer's 'validate@cpu')."""
    return stage.reads(parse_upstream(name)[0], up_stage.outputs(model), model, target)

