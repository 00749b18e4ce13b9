"""Dispatch traces, read and paired: what bisect (stages/bisect.py) compares.

A module compiled with `--iree-flow-trace-dispatch-tensors` prints, as iree-run-module runs
it, every dispatch's tensors (docs/DESIGN.md §8):

    === main$async_dispatch_1::main$async_dispatch_1_matmul_2x32x16_bf16xbf16xf32 inputs ===
    2x16xbf16=[-0.435 1.10 ...][...]
    === main$async_dispatch_1::... outputs ===
    2x32xf32=[...]

read here as a stream (parse), one Dispatch at a time, so a big model's trace (ResNet-18's
is ~200 MB of text) is never held as text.

Two builds of one model (a failing target and a trusted reference) do not pair by position:
a bf16-demoted build adds conversion and initializer dispatches and fuses differently. So
each traced tensor of the failing build is paired with the reference value that holds the
same numbers (Values.match: same element count, the nearest values; a lower-precision
tensor is given one step of its own precision), and the first dispatch whose inputs all
agree but whose outputs do not is the one that went wrong (bisect).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Iterator

if TYPE_CHECKING:   # (numpy is imported where used: planning imports none)
    import numpy as np

HEADER = re.compile(r"^=== (?P<executable>\S+)::(?P<symbol>\S+) (?P<side>inputs|outputs) ===$")
TENSOR = re.compile(r"^(?P<type>(?:\d+x)*[a-z]+\d+)=(?P<values>.*)$")
# the trace prints about 6 significant digits: two values that print alike may differ by this
PRINTED_RTOL = 1e-5
# float dtypes by precision: a tensor compared with a more precise one is allowed a step of
# its own (bf16 rounding of an f32 weight is a conversion, not an error)
MANTISSA_BITS = {"f64": 52, "f32": 23, "f16": 10, "bf16": 7}
# values compared cheaply (a fixed sample) before the full comparison, and how many of the
# nearest by sample are compared in full
SAMPLE = 64
SHORTLIST = 3
TINY = 1e-30
BRACKETS = str.maketrans("[]", "  ")
# how many of the tensors last read parse keeps, to read a tensor printed again only once
RECENT = 16


@dataclass
class Tensor:
    shape: tuple[int, ...]
    dtype: str                      # IREE's element type: f32, bf16, i64, ...
    values: np.ndarray              # flat, float32 (what the trace printed: ~6 digits)
    digest: str = ""                # the printed text's: equal tensors are one value

    @property
    def type(self) -> str:
        return "x".join([*map(str, self.shape), self.dtype])


@dataclass
class Dispatch:
    position: int                   # its place in the run's execution order (0: first traced)
    executable: str
    symbol: str
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)

    @property
    def initializer(self) -> bool:
        return self.executable.startswith("_initializer")


def parse(lines: Iterable[str]) -> Iterator[Dispatch]:
    """The dispatches of an iree-run-module trace, in execution order, as they are read.
    Lines that are no part of a dispatch (EXEC @main, the results) are skipped. A tensor
    printed again (a dispatch's output is the next one's input) is read once."""
    current, side, position = None, None, 0
    read: dict[str, Tensor] = {}
    for line in lines:
        line = line.rstrip("\n")
        header = HEADER.match(line)
        if header:
            name = (header["executable"], header["symbol"])
            if header["side"] == "inputs" or current is None or \
                    (current.executable, current.symbol) != name:
                if current is not None:
                    yield current
                    position += 1
                current = Dispatch(position, *name)
            side = header["side"]
            continue
        if current is None or side is None:
            continue
        tensor = TENSOR.match(line)
        if tensor is None:
            if line.startswith(("result[", "EXEC ")):
                side = None   # what follows is the function's results, not a dispatch's
            continue
        digest = hashlib.sha1(line.encode()).hexdigest()
        if digest not in read:
            read[digest] = _tensor(tensor["type"], tensor["values"], digest)
            if len(read) > RECENT:   # (the oldest goes: a run's tensors are not all kept)
                del read[next(iter(read))]
        getattr(current, side).append(read[digest])
    if current is not None:
        yield current


def _tensor(type_text: str, text: str, digest: str) -> Tensor:
    import numpy as np
    *dims, dtype = type_text.split("x")
    flat = text.translate(BRACKETS)
    if dtype == "i1":
        flat = flat.replace("true", "1").replace("false", "0")
    values = np.fromstring(flat, dtype=np.float32, sep=" ")   # (text mode: not deprecated)
    return Tensor(tuple(int(d) for d in dims), dtype, values, digest)


@dataclass
class Match:
    """A traced tensor of the failing build and the reference value nearest to it."""
    partner: Dispatch | None        # the reference dispatch that produced it (None: a
    # model input or weight the reference only consumed), when there is a partner at all
    paired: bool                    # a reference value of its size was found
    agrees: bool                    # within tolerance of that value
    max_abs_error: float | None = None   # None where NaN/Inf make it meaningless
    max_rel_error: float | None = None
    nonfinite: int = 0              # elements NaN/Inf on one side and not the same on the other


class Values:
    """Every distinct tensor the reference build's trace holds (dispatch inputs and
    outputs), by element count, each with the dispatch that produced it, if one did."""

    def __init__(self, atol: float, rtol: float):
        self.atol, self.rtol = atol, rtol
        self.by_size: dict[int, list[tuple[Tensor, np.ndarray, Dispatch | None]]] = {}
        self._seen: dict[str, Dispatch | None] = {}
        self.dispatches: list[Dispatch] = []

    def add(self, dispatch: Dispatch) -> None:
        self.dispatches.append(dispatch)
        for tensor in dispatch.inputs:
            self._keep(tensor, None)
        for tensor in dispatch.outputs:
            self._keep(tensor, dispatch)

    def _keep(self, tensor: Tensor, producer: Dispatch | None) -> None:
        if tensor.digest in self._seen:
            return
        self._seen[tensor.digest] = producer
        self.by_size.setdefault(tensor.values.size, []).append(
            (tensor, _sample(tensor.values), producer))

    def match(self, tensor: Tensor) -> Match:
        """The reference value nearest to tensor (of the same element count), and whether
        tensor agrees with it within the tolerance."""
        candidates = self.by_size.get(tensor.values.size) or []
        # a value of another shape is this tensor reshaped only where the values prove it
        # (2x16 read as 32); one that differs is another tensor of as many elements (a later
        # layer's 256x3136 for a 64x12544): never a partner to blame a dispatch by, so then
        # only the values of its own shape are asked
        for pool in (candidates, [c for c in candidates if c[0].shape == tensor.shape]):
            found = self._nearest(tensor, pool)
            if found is None:
                break
            reference, _, producer = found
            verdict = self.within(tensor, reference)
            if reference.shape == tensor.shape or verdict[0]:
                return Match(producer, True, *verdict)
        return Match(None, False, False)

    def _nearest(self, tensor: Tensor, candidates: list) -> tuple | None:
        """The candidate nearest to tensor by value (shortlisted by samples first), or None."""
        if not candidates:
            return None
        sample = _sample(tensor.values)
        # by values, not shape: a dispatch may see a tensor reshaped (2x16 as 32)
        by_sample = sorted(candidates, key=lambda c: (_distance(sample, c[1]),
                                                      c[0].shape != tensor.shape))[:SHORTLIST]
        return min(by_sample, key=lambda c: _distance(tensor.values, c[0].values))

    def within(self, got: Tensor, want: Tensor) -> tuple[bool, float | None, float | None, int]:
        """(agrees, max abs error, max rel error, NaN/Inf mismatches) of got against want:
        within atol + rtol * |want|, plus what printing rounds, plus one step of the less
        precise dtype. The errors are None where a NaN/Inf mismatch makes them meaningless
        (JSON-safe, as stages/compare.py's)."""
        import numpy as np
        a, b = got.values, want.values
        with np.errstate(invalid="ignore", over="ignore"):   # (inf - inf: masked below)
            diff = np.abs(a - b)
        finite = np.isfinite(a) & np.isfinite(b)
        same_nonfinite = ~finite & ((a == b) | (np.isnan(a) & np.isnan(b)))
        allowed = self.atol + (self.rtol + PRINTED_RTOL) * np.abs(b) + _step(b, got.dtype, want.dtype)
        agrees = bool(np.all((finite & (diff <= allowed)) | same_nonfinite))
        mismatched = int(np.count_nonzero(~(finite | same_nonfinite)))
        if mismatched:
            return agrees, None, None, mismatched
        diff = np.where(finite, diff, 0.0)
        rel = diff / np.maximum(np.abs(b), TINY)
        return agrees, float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), 0


def _distance(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """How far a is from b: elements where one is NaN/Inf and the other is not, then the
    largest difference elsewhere relative to b's scale."""
    import numpy as np
    finite_a, finite_b = np.isfinite(a), np.isfinite(b)
    both = finite_a & finite_b
    scale = float(np.max(np.abs(b[finite_b]), initial=0.0)) + TINY
    return (int(np.count_nonzero(finite_a != finite_b)),
            float(np.max(np.abs(a[both] - b[both]), initial=0.0)) / scale)


def _sample(values: np.ndarray) -> np.ndarray:
    import numpy as np
    if values.size <= SAMPLE:
        return values
    return values[np.linspace(0, values.size - 1, SAMPLE).astype(np.int64)]


def _step(values: np.ndarray, *dtypes: str) -> np.ndarray | float:
    """One step (ulp) of the least precise float dtype of the two, at each value."""
    import numpy as np
    bits = min((MANTISSA_BITS[d] for d in dtypes if d in MANTISSA_BITS), default=None)
    if bits is None or bits >= MANTISSA_BITS["f32"]:
        return 0.0
    exponent = np.floor(np.log2(np.maximum(np.abs(values), TINY)))
    return np.exp2(exponent - bits)


@dataclass
class Step:
    """One dispatch of the failing build, compared with the reference."""
    dispatch: Dispatch
    inputs: list[Match]
    outputs: list[Match]

    @property
    def inputs_agree(self) -> bool:
        return all(m.agrees or not m.paired for m in self.inputs)

    @property
    def outputs_agree(self) -> bool:
        return all(m.agrees for m in self.outputs if m.paired)

    @property
    def paired(self) -> bool:
        return any(m.paired for m in self.outputs)

    def worst(self, key: str) -> float | None:
        errors = [getattr(m, key) for m in self.outputs if m.paired]
        return None if not errors or None in errors else max(errors)

    def partner(self) -> Dispatch | None:
        """The reference dispatch that computed this one's (worst) output."""
        paired = [m for m in self.outputs if m.paired and m.partner is not None]
        if not paired:
            return None
        return max(paired, key=lambda m: (m.nonfinite, m.max_abs_error or 0.0)).partner

    def describe(self) -> dict:
        partner = self.partner()
        return {"ordinal": self.dispatch.position, "executable": self.dispatch.executable,
                "symbol": self.dispatch.symbol, "max_abs_error": self.worst("max_abs_error"),
                "max_rel_error": self.worst("max_rel_error"),
                "nonfinite": sum(m.nonfinite for m in self.outputs),
                "outputs": [t.type for t in self.dispatch.outputs],
                "partner": partner and partner.symbol,
                "partner_executable": partner and partner.executable,
                "partner_ordinal": partner and partner.position}


def steps(reference: Values, failing: Iterable[Dispatch]) -> Iterator[Step]:
    """Each dispatch of the failing build with its tensors matched to the reference's (the
    failing build's tensors are dropped as it goes: only the reference's are kept)."""
    for dispatch in failing:
        yield Step(dispatch, [reference.match(t) for t in dispatch.inputs],
                   [reference.match(t) for t in dispatch.outputs])
