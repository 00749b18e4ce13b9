"""The syntax of kiln's names, built and parsed here only.

    validate:mlp@cpu~im2col   task: stage 'validate' of model 'mlp' for target 'cpu', its
                              variant 'im2col' ('cpu' alone is the target's default variant)
    capture:mlp               task: a per-model stage
    validate@cpu              what a stage reads: a peer target's node of the same stage
    lower                     what a stage reads: its own target's (or the model's) node

Target, model and variant names are checked (pipeline.plan.config) to hold none of ':', '@'
and '~' (nor '+'), so every name parses back to what built it.
"""
from __future__ import annotations

STAGE_SEP, TARGET_SEP, VARIANT_SEP, RELEASE_SEP = ":", "@", "~", "+"
DEFAULT_VARIANT = "default"
# build/'s temp space: stages' fresh output directories, a worker's private build, and every
# temporary file of a run and its tools (a killed run's leftovers: `doit prune` removes them)
SCRATCH_DIR = ".tmp"


def task_name(stage: str, model: str, target: str | None = None) -> str:
    return f"{stage}{STAGE_SEP}{model}" + (f"{TARGET_SEP}{target}" if target else "")


def task_subname(task: str) -> str:
    """'lower:mlp@cpu' -> 'mlp@cpu': doit's name of a task within its stage's group."""
    return task.split(STAGE_SEP, 1)[1]


def variant_target(base: str, variant: str) -> str:
    """The target name of a variant's stages: the default variant keeps the target's own."""
    return base if variant == DEFAULT_VARIANT else f"{base}{VARIANT_SEP}{variant}"


def base_target(target: str) -> str:
    """'cpu~im2col' -> 'cpu': a report's row is a model x target, its variants folded in."""
    return target.split(VARIANT_SEP, 1)[0]


def variant_of(target: str) -> str:
    """'cpu~im2col' -> 'im2col'; 'cpu' -> 'default'."""
    return target.split(VARIANT_SEP, 1)[1] if VARIANT_SEP in target else DEFAULT_VARIANT


def release_target(base: str, release: str) -> str:
    """'cpu', '3.12.0' -> 'cpu+3.12.0': a target built with that release of its tools."""
    return f"{base}{RELEASE_SEP}{release}"


def release_of(target: str) -> str | None:
    """'cpu+3.12.0~im2col' -> '3.12.0'; 'cpu' -> None (no release axis)."""
    return base_target(target).partition(RELEASE_SEP)[2] or None


def without_release(target: str) -> str:
    """'cpu+3.12.0~im2col' -> 'cpu~im2col': the target whatever the release."""
    base, _, rest = target.partition(RELEASE_SEP)
    return base + (rest[rest.index(VARIANT_SEP):] if VARIANT_SEP in rest else "")


def upstream_name(stage: str, target: str | None = None) -> str:
    """How a stage names an input: 'lower', or a peer target's 'validate@cpu'."""
    return f"{stage}{TARGET_SEP}{target}" if target else stage


def parse_upstream(name: str) -> tuple[str, str | None]:
    """'validate@cpu~im2col' -> ('validate', 'cpu~im2col'); 'lower' -> ('lower', None)."""
    stage, _, target = name.partition(TARGET_SEP)
    return stage, target or None


def file_stem(task: str) -> str:
    """A task's name as a file name: 'lower:mlp@cpu' -> 'lower.mlp@cpu' (stage names hold no
    '.', targets no '@', so no two tasks share one)."""
    return task.replace(STAGE_SEP, ".", 1).replace("/", "_")
