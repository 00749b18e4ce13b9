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
each traced tensor of the failing build is paired with the reference value of the same
layout that holds the nearest numbers (Values.match: the same shape, or one a reshape can
prove to hold its elements in the same order, never merely as many of them: docs/DESIGN.md
§10.9; a lower-precision tensor is given one step of its own precision). A dispatch is
blamed only where its outputs' error is beyond what its inputs' error and its precision
explain (Step.explained, the rule and why in §10.9): error that grows a little at each
dispatch, as rounding does in a deep net, blames none. Integer tensors are read as their
own type's values (an i8 printed 252 is -4).
"""
from __future__ import annotations

import functools
import hashlib
import math
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
INTEGER = re.compile(r"^(?P<unsigned>u?)[si]?i(?P<bits>\d+)$")   # i8, si32, ui8 (not i1)
# the blame rule (docs/DESIGN.md §10.9): a dispatch's output error is explained by its inputs'
# error amplified by at most AMPLIFY (per-layer growth of rounding error in deep random nets
# measured 0.8-2.2x), plus its own rounding, ROUNDING * sqrt(K) * u (a length-K dot product's
# error in practice, the max over elements rather than the typical one), plus what the
# trace's printing rounds away on both sides
AMPLIFY = 4.0
ROUNDING = 4.0
PRINTED_FLOOR = 2 * PRINTED_RTOL


@dataclass
class Tensor:
    shape: tuple[int, ...]
    dtype: str                      # IREE's element type: f32, bf16, i64, ...
    values: np.ndarray              # flat, float32 (what the trace printed: ~6 digits)
    digest: str = ""                # the printed text's: equal tensors are one value

    @property
    def type(self) -> str:
        return "x".join([*map(str, self.shape), self.dtype])

    @functools.cached_property
    def content(self) -> str:
        """Its element type and values in order, whatever its shape: one dispatch's output
        printed as 64x3136 and the next one's input printed as 64x56x56 are one tensor."""
        return hashlib.sha1(self.dtype.encode() + self.values.tobytes()).hexdigest()


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
    integer = INTEGER.match(dtype)
    if integer and int(integer["bits"]) > 1:
        values = _as_own_type(np.fromstring(flat, dtype=np.float64, sep=" "),
                              int(integer["bits"]), bool(integer["unsigned"]))
    else:
        values = np.fromstring(flat, dtype=np.float32, sep=" ")   # (text mode: not deprecated)
    return Tensor(tuple(int(d) for d in dims), dtype, values, digest)


def _as_own_type(values: np.ndarray, bits: int, unsigned: bool) -> np.ndarray:
    """Integers as the values of their own type: an i8 printed as 252 (its bits read
    unsigned) is -4, a ui8's -4 is 252; read as float64 (exact to 2**53, where float32 is
    exact to 2**24 only)."""
    import numpy as np
    if bits > 53:
        return values
    span = float(2 ** bits)
    low = 0.0 if unsigned else -span / 2
    return np.mod(values - low, span) + low


def same_layout(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether a tensor of shape a and one of shape b hold their elements in the same order
    (a row-major reshape): equal once dims of 1 are dropped, or one made from the other by
    merging runs of adjacent dims (2x16 and 32, 1x64x112x112 and 64x12544), as IREE's
    collapse and expand reshapes do. As many elements is not enough: 64x12544 and 256x3136
    are different tensors (docs/DESIGN.md §10.9)."""
    a, b = [d for d in a if d != 1], [d for d in b if d != 1]
    if math.prod(a) != math.prod(b):
        return False
    fine, coarse = (a, b) if len(a) >= len(b) else (b, a)
    at = 0
    for dim in coarse:
        merged = 1
        while merged < dim and at < len(fine):
            merged *= fine[at]
            at += 1
        if merged != dim:
            return False
    return at == len(fine)


@dataclass(frozen=True)
class Error:
    """How far a traced tensor is from its reference value, beyond one step of its own
    dtype where that is less precise (a bf16 rounding is the reader's, not an error carried):
    absolute, relative to the reference's scale (its largest finite magnitude), and whether
    NaN/Inf appear where the reference has none."""
    abs: float = 0.0
    rel: float = 0.0
    nonfinite: bool = False

    def worst(self, other: Error) -> Error:
        return Error(max(self.abs, other.abs), max(self.rel, other.rel),
                     self.nonfinite or other.nonfinite)


EXACT = Error()


@dataclass
class Match:
    """A traced tensor of the failing build and the reference value nearest to it."""
    partner: Dispatch | None        # the reference dispatch that produced it (None: a
    # model input or weight the reference only consumed), when there is a partner at all
    paired: bool                    # a reference value of its layout was found
    agrees: bool                    # within tolerance of that value
    max_abs_error: float | None = None   # None where NaN/Inf make it meaningless
    max_rel_error: float | None = None
    nonfinite: int = 0              # elements NaN/Inf on one side and not the same on the other
    error: Error = EXACT            # beyond its dtype's step: what a reader inherits
    scale: float = 0.0              # the reference value's largest finite magnitude
    dtype: str = "f32"              # the reference value's: the precision the model asks


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
        """The reference value nearest to tensor among those of its layout (same_layout:
        never another tensor of as many elements, such as a later layer's 256x3136 for a
        64x12544), and whether tensor agrees with it within the tolerance."""
        candidates = [c for c in self.by_size.get(tensor.values.size) or []
                      if same_layout(c[0].shape, tensor.shape)]
        found = self._nearest(tensor, candidates)
        if found is None:
            return Match(None, False, False)
        reference, _, producer = found
        return Match(producer, True, *self.within(tensor, reference), dtype=reference.dtype)

    def _nearest(self, tensor: Tensor, candidates: list) -> tuple | None:
        """The candidate nearest to tensor by value (shortlisted by samples first), or None."""
        if not candidates:
            return None
        sample = _sample(tensor.values)
        by_sample = sorted(candidates, key=lambda c: (_distance(sample, c[1]),
                                                      c[0].shape != tensor.shape))[:SHORTLIST]
        return min(by_sample, key=lambda c: _distance(tensor.values, c[0].values))

    def within(self, got: Tensor, want: Tensor) -> tuple[bool, float | None, float | None, int,
                                                         Error, float]:
        """(agrees, max abs error, max rel error, NaN/Inf mismatches, Error, scale) of got
        against want: within atol + rtol * |want|, plus what printing rounds, plus one step
        of the less precise dtype. The errors are None where a NaN/Inf mismatch makes them
        meaningless (JSON-safe, as stages/compare.py's)."""
        import numpy as np
        a, b = got.values, want.values
        with np.errstate(invalid="ignore", over="ignore"):   # (inf - inf: masked below)
            diff = np.abs(a - b)
        finite = np.isfinite(a) & np.isfinite(b)
        same_nonfinite = ~finite & ((a == b) | (np.isnan(a) & np.isnan(b)))
        step = _step(b, got.dtype, want.dtype)
        allowed = self.atol + (self.rtol + PRINTED_RTOL) * np.abs(b) + step
        agrees = bool(np.all((finite & (diff <= allowed)) | same_nonfinite))
        mismatched = int(np.count_nonzero(~(finite | same_nonfinite)))
        diff = np.where(finite, diff, 0.0)
        scale = float(np.max(np.abs(b[np.isfinite(b)]), initial=0.0))
        # (where both are finite: a NaN/Inf is counted as such, not as a number)
        beyond = float(np.max((diff - step)[finite], initial=0.0))
        error = Error(beyond, beyond / max(scale, TINY), mismatched > 0)
        if mismatched:
            return agrees, None, None, mismatched, error, scale
        rel = diff / np.maximum(np.abs(b), TINY)
        return agrees, float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), 0, error, scale


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
    """One dispatch of the failing build, compared with the reference. carried: the error
    each input is known to carry where it has no partner (what the dispatch that made it
    inherited: steps), by position among the inputs."""
    dispatch: Dispatch
    inputs: list[Match]
    outputs: list[Match]
    carried: dict[int, Error] = field(default_factory=dict)
    # the blamed dispatches (ordinals) whose error this one's reading confirms, or withdraws
    confirms: list[int] = field(default_factory=list)
    withdrawn: list[int] = field(default_factory=list)

    @property
    def inputs_agree(self) -> bool:
        return all(m.agrees or not m.paired for m in self.inputs)

    @property
    def outputs_agree(self) -> bool:
        return all(m.agrees for m in self.outputs if m.paired)

    @property
    def paired(self) -> bool:
        return any(m.paired for m in self.outputs)

    def inherited(self) -> Error:
        """The error the dispatch's inputs bring (paired ones as measured, the others as
        carried from the dispatch that made them; a weight or model input the reference
        holds in no layout of its own: exact)."""
        found = EXACT
        for i, m in enumerate(self.inputs):
            found = found.worst(m.error if m.paired else self.carried.get(i, EXACT))
        return found

    def own(self) -> Error:
        """The error of its paired outputs."""
        found = EXACT
        for m in self.outputs:
            if m.paired:
                found = found.worst(m.error)
        return found

    def explained(self) -> bool:
        """Whether its outputs' error is what its inputs' error and its own precision
        explain (docs/DESIGN.md §10.9): NaN/Inf only where an input has them; otherwise, per
        paired output, its max abs error at most AMPLIFY times its inputs' (absolute, or
        relative to the output's scale: a subtraction that cancels keeps the absolute error,
        a matmul the relative one) plus its own rounding, at the reference's precision, and
        the trace's. (Its inputs' error is counted beyond one step of their own dtype: the
        precision a dispatch gives up by reading bf16 where the reference reads f32 is its
        own, not carried.)"""
        inherited, own = self.inherited(), self.own()
        if own.nonfinite:
            return inherited.nonfinite
        reduction = self.reduction_length()
        for m in self.outputs:
            if not m.paired:
                continue
            carried = AMPLIFY * max(inherited.abs, inherited.rel * m.scale)
            if (m.max_abs_error or 0.0) > carried + self.rounding(m, reduction):
                return False
        return True

    def rounding(self, output: Match, reduction: int) -> float:
        """What the dispatch's own arithmetic may round its output by: ROUNDING * sqrt(K) *
        u of the reference's float type (the precision the model asks for: a bf16 result
        where the reference's is f32 is a loss, not its precision), and the trace's
        printing, at the output's scale; an integer output one unit (a requantization may
        round either way)."""
        if output.dtype not in MANTISSA_BITS:
            return 1.0 if INTEGER.match(output.dtype) else 0.0
        unit = 2.0 ** -(MANTISSA_BITS[output.dtype] + 1)
        return output.scale * (ROUNDING * math.sqrt(reduction) * unit + PRINTED_FLOOR)

    def reduction_length(self) -> int:
        """K, how many products a dot product of this dispatch sums, estimated from sizes
        alone: sqrt(|A| |B| / |C|) for its two largest inputs and largest output (exact for
        a matmul, low by sqrt(kh kw) for a convolution, high for an elementwise op, where
        the term is far below the printing's anyway); one input: |A| / |C|."""
        sizes = sorted((t.values.size for t in self.dispatch.inputs), reverse=True)
        out = max((t.values.size for t in self.dispatch.outputs), default=1) or 1
        if not sizes:
            return 1
        if len(sizes) == 1:
            return max(1, sizes[0] // out)
        return int(min(max(1.0, math.sqrt(sizes[0] * sizes[1] / out)), sizes[1]))

    @property
    def blamed(self) -> bool:
        """Its outputs disagree, and beyond what its inputs' error and precision explain."""
        return self.paired and not self.outputs_agree and not self.explained()

    def worst(self, key: str) -> float | None:
        errors = [getattr(m, key) for m in self.outputs if m.paired]
        return None if not errors or None in errors else max(errors)

    def partner(self) -> Dispatch | None:
        """The reference dispatch that computed this one's (worst) output."""
        paired = [m for m in self.outputs if m.paired and m.partner is not None]
        if not paired:
            return None
        return max(paired, key=lambda m: (m.nonfinite, m.max_abs_error or 0.0)).partner

    def relative_error(self) -> float | None:
        """Its worst paired output's max abs error over that output's reference scale (None:
        NaN/Inf)."""
        paired = [m for m in self.outputs if m.paired]
        if not paired or any(m.nonfinite for m in paired):
            return None
        return max((m.max_abs_error or 0.0) / max(m.scale, TINY) for m in paired)

    def describe(self) -> dict:
        partner = self.partner()
        inherited = self.inherited()
        return {"ordinal": self.dispatch.position, "executable": self.dispatch.executable,
                "symbol": self.dispatch.symbol, "max_abs_error": self.worst("max_abs_error"),
                "max_rel_error": self.worst("max_rel_error"),
                "relative_error": self.relative_error(),
                "inputs_relative_error": None if inherited.nonfinite else inherited.rel,
                "nonfinite": sum(m.nonfinite for m in self.outputs),
                "outputs": [t.type for t in self.dispatch.outputs],
                "unpaired_inputs": [t.type for t, m in zip(self.dispatch.inputs, self.inputs)
                                    if not m.paired],
                "partner": partner and partner.symbol,
                "partner_executable": partner and partner.executable,
                "partner_ordinal": partner and partner.position}


@dataclass(frozen=True)
class Suspect:
    """A blamed dispatch whose blame waits for its readers: its error must reach them."""
    ordinal: int
    relative: float | None          # its relative error (None: NaN/Inf)
    inherited: Error                # what its inputs brought: its outputs' error if set aside


class Walk:
    """The failing build's dispatches, one at a time, each with its tensors matched to the
    reference's (the failing build's tensors are dropped as it goes: only the reference's
    are kept). A tensor with no partner carries the error its maker's inputs brought (as far
    as the trace can tell, that dispatch added none), so the dispatch reading it inherits
    that.

    A blamed dispatch's outputs are suspects until a paired dispatch reads one (through
    unpaired ones in between): where that reader's relative error is below the suspect's by
    more than AMPLIFY**2, the error did not reach it, so the suspect's "partner" was another
    tensor of its layout (ResNet's im2col matmul before its ReLU, paired with another conv's
    output after one): the blame is withdrawn (step.withdrawn) and its outputs count as
    unpaired, carrying what its inputs brought; otherwise it is confirmed (step.confirms)
    (docs/DESIGN.md §10.9)."""

    def __init__(self, reference: Values):
        self.reference = reference
        self.carried: dict[str, Error] = {}      # a failing tensor's content -> its error
        self.suspects: dict[str, Suspect] = {}   # a blamed dispatch's output's content -> it
        self.set_aside: dict[str, Error] = {}    # a withdrawn one's -> what it carries
        # (by content, not by the printed line: a reshape between two dispatches prints the
        # one tensor with two shapes)

    def step(self, dispatch: Dispatch) -> Step:
        step = self._matched(dispatch)
        read = {}
        for tensor in dispatch.inputs:
            if tensor.content in self.suspects:
                read.setdefault(self.suspects[tensor.content].ordinal, self.suspects[tensor.content])
        if read and step.paired:
            self._judge(step, read)
        inherited = step.inherited()
        for tensor, m in zip(dispatch.outputs, step.outputs):
            self.carried[tensor.content] = m.error if m.paired else inherited
            if not m.paired and read and not step.paired:   # (a suspect passed on)
                self.suspects[tensor.content] = next(iter(read.values()))
        if step.blamed:
            suspect = Suspect(dispatch.position, step.relative_error(), inherited)
            for tensor, m in zip(dispatch.outputs, step.outputs):
                if m.paired:
                    self.suspects[tensor.content] = suspect
        return step

    def _matched(self, dispatch: Dispatch) -> Step:
        match = self.reference.match
        step = Step(dispatch, [Match(None, False, False) if t.content in self.set_aside
                               else match(t) for t in dispatch.inputs],
                    [match(t) for t in dispatch.outputs])
        step.carried = {i: self.set_aside.get(t.content) or self.carried[t.content]
                        for i, (t, m) in enumerate(zip(dispatch.inputs, step.inputs))
                        if not m.paired and (t.content in self.carried or t.content in self.set_aside)}
        return step

    def _judge(self, step: Step, read: dict[int, Suspect]) -> None:
        """Confirm or withdraw the suspects step reads (its error reached step or not)."""
        reader = step.relative_error()
        for ordinal, suspect in read.items():
            reached = reader is None if suspect.relative is None else \
                reader is None or reader * AMPLIFY ** 2 >= suspect.relative
            (step.confirms if reached else step.withdrawn).append(ordinal)
            for key in [k for k, s in self.suspects.items() if s.ordinal == ordinal]:
                del self.suspects[key]
                if not reached:
                    self.set_aside[key] = suspect.inherited
        if step.withdrawn:   # (its inputs read again: the withdrawn ones unpaired)
            again = self._matched(step.dispatch)
            step.inputs, step.carried = again.inputs, again.carried


def steps(reference: Values, failing: Iterable[Dispatch]) -> Iterator[Step]:
    """Each dispatch of the failing build, matched (Walk)."""
    walk = Walk(reference)
    for dispatch in failing:
        yield walk.step(dispatch)
