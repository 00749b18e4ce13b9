"""A targets.yaml entry made concrete: its backend's flags, arch and driver (stages/backends.py
holds what kiln knows per backend), its variants, and the flags it may not take.

A targets.yaml entry names a backend and an arch; this turns it into iree-compile flags.
'host' for llvm-cpu is resolved here (llvmlite) to a concrete CPU name, so the flags, and so
the key, say which CPU the code was built for.
"""
from __future__ import annotations

import dataclasses
import functools

from pipeline.stage import ConfigError, Target
from stages.backends import BACKENDS


def variants(target: Target) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The backend's built-in variants with the target's own applied: a declared name
    overrides a built-in one's flags (or drops it, given null) or adds a new one."""
    merged = dict(BACKENDS[target.backend].variants)
    for name, flags in target.variants:
        if flags is None:
            merged.pop(name, None)
        else:
            merged[name] = flags
    if not merged:
        raise ConfigError(f"{target.where}: targets.{target.name}.variants: every variant is "
                          "dropped; keep at least one")
    return tuple(merged.items())


@functools.lru_cache(maxsize=None)
def host_cpu() -> str:
    import llvmlite.binding as llvm
    return llvm.get_host_cpu_name()


# iree-compile's input phase runs once per model in kiln (legalize, target-independent): a
# target's flag for it would silently do nothing, since lower compiles from that phase on
# (`--iree-input-demote-f32-to-f16` left the mlp's module as it was: docs/DESIGN.md §10.2)
INPUT_PHASE = "--iree-input-"


def _refuse_input_phase_flags(target: Target) -> None:
    declared = [("flags", target.flags),
                *((f"variants.{name}", flags) for name, flags in target.variants if flags)]
    for field_name, flags in declared:
        flag = next((f for f in flags if f.startswith(INPUT_PHASE)), None)
        if flag is not None:
            raise ConfigError(
                f"{target.where}: targets.{target.name}.{field_name}: {flag.split('=')[0]} acts in "
                "iree-compile's input phase, which kiln runs once per model (legalize) before "
                "any target's flags: it would have no effect (for f16/bf16 numerics use "
                "--iree-global-opt-demote-contraction-inputs-type=f16|bf16)")


# the variant a tuned target adds: its start variant's flags, each dispatch's tiles searched
TUNED = "tuned"


def resolve(target: Target, tune: str | bool | None = None,
            tune_budget: float | None = None) -> Target:
    """Fill in the arch and driver defaults and resolve 'host'; reject what cannot work.
    tune, tune_budget: the command line's tune= (on, off or a variant) and tune_budget=,
    which override the target's own `tune:` where its backend can be tuned."""
    _refuse_input_phase_flags(target)
    if target.backend not in BACKENDS:
        raise ConfigError(f"{target.where}: targets.{target.name}.backend: unknown backend "
                          f"'{target.backend}' (valid: {', '.join(BACKENDS)})")
    backend = BACKENDS[target.backend]
    arch = target.arch or backend.default_arch
    if backend.arch_flag is None and target.arch:
        raise ConfigError(f"{target.where}: targets.{target.name}.arch: backend {target.backend} "
                          "takes no arch")
    if arch == "host" and backend.host_arch:
        arch = host_cpu()
    known = backend.known_archs
    if known is not None and arch not in known:
        raise ConfigError(f"{target.where}: targets.{target.name}.arch: unknown {target.backend} "
                          f"target '{arch}' (valid: {', '.join(sorted(known))})")
    resolved = dataclasses.replace(target, arch=arch, driver=target.driver or backend.driver,
                                   variants=variants(target))
    return with_tuning(resolved, tune, tune_budget)


def with_tuning(target: Target, tune: str | bool | None, budget: float | None) -> Target:
    """The target with its 'tuned' variant (the start variant's flags), where tuning is on:
    targets.yaml's `tune:` unless the command line says otherwise (tune=on tunes every
    llvm-cpu target from its fastest validated variant; tune=off none)."""
    backend = BACKENDS[target.backend]
    if target.tune and not backend.tunable:
        raise ConfigError(f"{target.where}: targets.{target.name}.tune: backend {target.backend} "
                          "cannot be tuned (tuning searches llvm-cpu dispatches' tiles)")
    start = target.tune
    if tune is False or not backend.tunable:
        start = None
    elif tune is True:
        start = start or BEST
    elif isinstance(tune, str):
        start = tune
    declared = dict(target.variants)
    if start not in (None, BEST) and start not in declared:
        raise ConfigError(f"{target.where}: targets.{target.name}: tune starts from variant "
                          f"'{start}', which the target does not have (valid: "
                          f"{', '.join(n for n in declared if n != TUNED)})")
    kept = tuple(v for v in target.variants if v[0] != TUNED)
    if start is None:
        return dataclasses.replace(target, tune=None, variants=kept)
    # from the best variant: its own lower and codegen are the first variant's (cache hits)
    flags = kept[0][1] if start == BEST else declared[start]
    return dataclasses.replace(target, tune=start, tune_budget=budget or target.tune_budget,
                               variants=(*kept, (TUNED, flags)))


# tune=on, `tune: true`: start from the fastest variant that validated (stages/tune.py reads
# the other variants' verdicts and flow, as pick would choose)
BEST = "best"


def compile_flags(target: Target) -> list[str]:
    backend = BACKENDS[target.backend]
    arch = [f"{backend.arch_flag}={target.arch}"] if backend.arch_flag and target.arch else []
    return [*backend.flags, *arch, *target.flags]
