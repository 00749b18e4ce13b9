"""The whole-model choices stages/tune.py tries before it searches any dispatch's tiles: the
start variant's flags with one iree-compile knob set or replaced, then the two best winners
together. Pure flag lists: no compiler is needed here.

Measured on a quiet 2-core rocketlake (docs/DESIGN.md §9.8): data tiling with every ukernel
made MobileNetV2 0.80x its default, a distribution size of 16 made a small ViT 0.87x; the
same knobs made other models slower (data tiling: ViT 1.15x), so only measurement decides,
per model."""
from __future__ import annotations

from dataclasses import dataclass

# a change to the knobs or to how a winner is decided: every model's choice again
KNOBS_VERSION = 2


@dataclass(frozen=True)
class Knob:
    label: str
    flags: tuple[str, ...]


DATA_TILING = Knob("data tiling + ukernels", ("--iree-opt-data-tiling=true",
                                              "--iree-llvmcpu-enable-ukernels=all"))
# (not kept, each slower or level on every model of §9.8: a distribution size of 8 or 64,
# --iree-opt-level=O3, horizontal fusion of contractions (BERT-base 8.7x), 64 KiB matmul tiles)
KNOBS = (
    DATA_TILING,
    Knob("distribution 16", ("--iree-llvmcpu-distribution-size=16",)),
    Knob("aggressive fusion", ("--iree-dispatch-creation-enable-aggressive-fusion=true",)),
    Knob("masked vectors", ("--iree-llvmcpu-vector-pproc-strategy=mask",)),
)


def flag_name(flag: str) -> str:
    return flag.split("=", 1)[0]


def with_knob(flags: list[str], knob: Knob) -> list[str]:
    """flags with the knob's flags in place of any of the same name (a variant's
    `--iree-llvmcpu-enable-ukernels=mmt4d` gives way to the knob's `=all`)."""
    names = {flag_name(f) for f in knob.flags}
    return [f for f in flags if flag_name(f) not in names] + list(knob.flags)


def candidates(flags: list[str], limit: int | None = None) -> list[tuple[Knob, list[str]]]:
    """(knob, the flags it makes) for each knob that changes the start's flags, in KNOBS'
    order, at most limit of them."""
    found = []
    for knob in KNOBS:
        changed = with_knob(flags, knob)
        if sorted(changed) != sorted(flags):
            found.append((knob, changed))
    return found[:limit]


def combined(first: Knob, second: Knob) -> Knob | None:
    """The two knobs together, or None where they set the same flag (one would undo the
    other)."""
    if {flag_name(f) for f in first.flags} & {flag_name(f) for f in second.flags}:
        return None
    return Knob(f"{first.label} + {second.label}", first.flags + second.flags)
