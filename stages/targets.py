"""IREE backends: the flags each one needs, its runtime driver, and the names it accepts.

A targets.yaml entry names a backend and an arch; this turns it into iree-compile flags.
'host' for llvm-cpu is resolved here (llvmlite) to a concrete CPU name, so the flags, and so
the key, say which CPU the code was built for.
"""
from __future__ import annotations

import dataclasses
import functools

from pipeline.stage import ConfigError, Target

# backend -> (base flags, flag that takes the arch, default arch, default driver)
BACKENDS = {
    "llvm-cpu": (["--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=llvm-cpu"],
                 "--iree-llvmcpu-target-cpu", "host", "local-task"),
    "vmvx": (["--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=vmvx"],
             None, None, "local-task"),
    "vulkan-spirv": (["--iree-hal-target-device=vulkan"], "--iree-vulkan-target", "llvmpipe", "vulkan"),
    "cuda": (["--iree-hal-target-device=cuda"], "--iree-cuda-target", "sm_80", "cuda"),
    "rocm": (["--iree-hal-target-device=hip"], "--iree-rocm-target", "gfx942", "hip"),
}
# an unknown --iree-vulkan-target crashes iree-compile with a stack dump: check first.
# sm_90 and newer fail in IREE 3.13 ("missing GPU target in #hal.executable.target").
KNOWN_ARCHS = {
    "vulkan-spirv": {"llvmpipe", "valhall", "valhall4", "adreno", "rdna1", "rdna2", "rdna3",
                     "rdna4", "cdna1", "cdna2", "cdna3", "ampere", "turing", "ada", "pascal",
                     "volta"},   # each compiled here with IREE 3.13; 'hopper' fails
    "cuda": {"sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_87", "sm_89"},
}


# Named flag sets each backend's targets try by default (targets.yaml `variants:` adds to,
# overrides or drops them; `variants=default` tries the first only). Which is fastest depends
# on the CPU, so each is compiled, validated and timed, and the fastest that passes is picked
# (stages/pick.py). Measured for ResNet-18 with IREE 3.13 (docs/DESIGN.md §7): channels-last is ~4x
# faster than default on AVX-512 and slower on AVX2; im2col is ~7x faster on AVX2.
CHANNELS_LAST = ("--iree-preprocessing-pass-pipeline=builtin.module(util.func("
                 "iree-preprocessing-convert-conv-to-channels-last))")
IM2COL = "--iree-global-opt-use-im2col-for-convs"
# IREE's fused attention op written out (online softmax, then matmuls) before dispatch
# formation: BERT-base's .pt2 runs in 361 ms instead of 962 ms on AVX2
# (docs/DESIGN.md §10.1); a model without attention gets the default's module
DECOMPOSED_ATTENTION = ("--iree-preprocessing-pass-pipeline=builtin.module(util.func("
                        "iree-linalg-ext-convert-attention-to-online-attention,"
                        "iree-linalg-ext-decompose-attention))")
BUILTIN_VARIANTS = {
    "llvm-cpu": (("default", ()), ("channels-last", (CHANNELS_LAST,)), ("im2col", (IM2COL,)),
                 ("im2col-mmt4d", (IM2COL, "--iree-opt-data-tiling=true",
                                   "--iree-llvmcpu-enable-ukernels=mmt4d")),
                 ("decomposed-attention", (DECOMPOSED_ATTENTION,))),
}


def variants(target: Target) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The backend's built-in variants with the target's own applied: a declared name
    overrides a built-in one's flags (or drops it, given null) or adds a new one."""
    merged = dict(BUILTIN_VARIANTS.get(target.backend, (("default", ()),)))
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


def resolve(target: Target) -> Target:
    """Fill in the arch and driver defaults and resolve 'host'; reject what cannot work."""
    _refuse_input_phase_flags(target)
    if target.backend not in BACKENDS:
        raise ConfigError(f"{target.where}: targets.{target.name}.backend: unknown backend "
                          f"'{target.backend}' (valid: {', '.join(BACKENDS)})")
    _, arch_flag, default_arch, default_driver = BACKENDS[target.backend]
    arch = target.arch or default_arch
    if arch_flag is None and target.arch:
        raise ConfigError(f"{target.where}: targets.{target.name}.arch: backend {target.backend} "
                          "takes no arch")
    if arch == "host" and target.backend == "llvm-cpu":
        arch = host_cpu()
    known = KNOWN_ARCHS.get(target.backend)
    if known and arch not in known:
        raise ConfigError(f"{target.where}: targets.{target.name}.arch: unknown {target.backend} "
                          f"target '{arch}' (valid: {', '.join(sorted(known))})")
    return dataclasses.replace(target, arch=arch, driver=target.driver or default_driver,
                               variants=variants(target))


def compile_flags(target: Target) -> list[str]:
    base, arch_flag, _, _ = BACKENDS[target.backend]
    arch = [f"{arch_flag}={target.arch}"] if arch_flag and target.arch else []
    return [*base, *arch, *target.flags]
