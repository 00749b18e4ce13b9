"""IREE's backends, one typed entry each: everything kiln knows about a backend in one place.

A targets.yaml entry names a backend (`backend: llvm-cpu`); stages/targets.py turns it into
iree-compile flags and a runtime driver from the entry here, validate and timing ask it
whether the device is the host's CPU, bisect which backends every machine has as a
reference, the device probe which places and variables change the device list. A new
backend (a second CPU flavour, rocm) is one entry in BACKENDS and nothing else.

Runtime drivers (`local-task`, `vulkan`, ...) are the target's (targets.yaml `driver:`
overrides the backend's default); is_host_driver says which ones run on the host's cores.
"""
from __future__ import annotations

from dataclasses import dataclass

# the runtime drivers that run a module on this machine's CPU cores
HOST_DRIVERS = ("local-task", "local-sync")


@dataclass(frozen=True)
class Backend:
    """One IREE backend as kiln uses it."""
    name: str                        # what targets.yaml's `backend:` says
    flags: tuple[str, ...]           # the iree-compile flags that select it
    driver: str                      # the runtime driver its modules run on, by default
    arch_flag: str | None = None     # the flag that takes a target's `arch:` (None: no arch)
    default_arch: str | None = None
    # the arches IREE 3.13 takes, where an unknown one would crash iree-compile or fail
    # late (None: not checked here)
    known_archs: frozenset[str] | None = None
    host_arch: bool = False          # `arch: host` means this machine's CPU (llvmlite names it)
    # named flag sets its targets try by default, 'default' first (stages/pick.py picks)
    variants: tuple[tuple[str, tuple[str, ...]], ...] = (("default", ()),)
    reference: bool = False          # a bisect reference: every machine can run it
    # its first target's run is the answer imported MLIR (no framework) is checked against
    answers_imported_mlir: bool = False
    # what selects or changes its devices: variables and places the device probe watches
    # (stages/iree_tools.py) and the plan memo compares (pipeline/plan/memo.py)
    device_env: tuple[str, ...] = ()
    device_places: tuple[str, ...] = ()
    # its dispatches' tile configurations can be searched (stages/tune.py): a `tune:` target
    tunable: bool = False


# Measured for ResNet-18 with IREE 3.13 (docs/DESIGN.md §7): channels-last is ~4x faster than
# default on AVX-512 and slower on AVX2; im2col is ~7x faster on AVX2.
CHANNELS_LAST = ("--iree-preprocessing-pass-pipeline=builtin.module(util.func("
                 "iree-preprocessing-convert-conv-to-channels-last))")
IM2COL = "--iree-global-opt-use-im2col-for-convs"
# IREE's fused attention op written out (online softmax, then matmuls) before dispatch
# formation: BERT-base's .pt2 runs in 361 ms instead of 953 ms on AVX2 (docs/DESIGN.md §10.1);
# a model without attention gets the default's module
DECOMPOSED_ATTENTION = ("--iree-preprocessing-pass-pipeline=builtin.module(util.func("
                        "iree-linalg-ext-convert-attention-to-online-attention,"
                        "iree-linalg-ext-decompose-attention))")
CPU_VARIANTS = (("default", ()), ("channels-last", (CHANNELS_LAST,)), ("im2col", (IM2COL,)),
                ("im2col-mmt4d", (IM2COL, "--iree-opt-data-tiling=true",
                                  "--iree-llvmcpu-enable-ukernels=mmt4d")),
                ("decomposed-attention", (DECOMPOSED_ATTENTION,)))

VULKAN_PLACES = ("/dev/dri", "/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d",
                 "/usr/local/share/vulkan/icd.d")

BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("llvm-cpu", ("--iree-hal-target-device=local",
                         "--iree-hal-local-target-device-backends=llvm-cpu"), "local-task",
            arch_flag="--iree-llvmcpu-target-cpu", default_arch="host", host_arch=True,
            variants=CPU_VARIANTS, reference=True, answers_imported_mlir=True, tunable=True),
    Backend("vmvx", ("--iree-hal-target-device=local",
                     "--iree-hal-local-target-device-backends=vmvx"), "local-task",
            reference=True),
    # an unknown --iree-vulkan-target crashes iree-compile with a stack dump: checked first;
    # each arch compiled here with IREE 3.13 ('hopper' fails)
    Backend("vulkan-spirv", ("--iree-hal-target-device=vulkan",), "vulkan",
            arch_flag="--iree-vulkan-target", default_arch="llvmpipe",
            known_archs=frozenset({"llvmpipe", "valhall", "valhall4", "adreno", "rdna1",
                                   "rdna2", "rdna3", "rdna4", "cdna1", "cdna2", "cdna3",
                                   "ampere", "turing", "ada", "pascal", "volta"}),
            device_env=("VK_ICD_FILENAMES", "VK_DRIVER_FILES", "VK_ADD_DRIVER_FILES",
                        "VK_LOADER_DRIVERS_SELECT", "VK_LOADER_DRIVERS_DISABLE"),
            device_places=VULKAN_PLACES),
    # sm_90 and newer fail in IREE 3.13 ("missing GPU target in #hal.executable.target")
    Backend("cuda", ("--iree-hal-target-device=cuda",), "cuda",
            arch_flag="--iree-cuda-target", default_arch="sm_80",
            known_archs=frozenset({"sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_87",
                                   "sm_89"}),
            device_env=("CUDA_VISIBLE_DEVICES",), device_places=("/proc/driver/nvidia/gpus",)),
    # an unknown ROCm target fails only at compile ("Unknown ROCM target"): checked first;
    # these compiled a 4-element add with IREE 3.13 (2026-12-07; gfx900, gfx906, gfx940,
    # gfx941, gfx1030 and gfx1102 did not)
    Backend("rocm", ("--iree-hal-target-device=hip",), "hip",
            arch_flag="--iree-rocm-target", default_arch="gfx942",
            known_archs=frozenset({"gfx908", "gfx90a", "gfx942", "gfx950", "gfx1100",
                                   "gfx1101", "gfx1150", "gfx1151", "gfx1200", "gfx1201",
                                   "mi300x", "mi300a", "mi308x", "mi325x", "mi355x",
                                   "rx7900xtx"}),
            device_env=("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")),
)}


def is_host_driver(driver: str) -> bool:
    """Whether a driver (or a device URI, 'local-task://') runs on this machine's cores."""
    return driver.split("://")[0] in HOST_DRIVERS


def device_env() -> tuple[str, ...]:
    """Every variable that selects or changes some backend's devices."""
    return tuple(dict.fromkeys(v for b in BACKENDS.values() for v in b.device_env))


def device_places() -> tuple[str, ...]:
    return tuple(dict.fromkeys(p for b in BACKENDS.values() for p in b.device_places))
