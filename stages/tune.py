"""Stage 7b, tune: per llvm-cpu target that asks for it (targets.yaml `tune:`, tune=on), the
module of its 'tuned' variant: the start variant's flags, with the tile configuration of
each dispatch that carries the time searched on this machine and the winners substituted.

It builds the module (role MODULE) of the variant `<target>~tuned` only, so validate judges
it against the framework and times it like any variant, and pick keeps it only where it is
faster than every other variant beyond the noise (stages/pick.py). Steps (docs/DESIGN.md
§9.3-§9.8):

0. whole-model knobs (stages/tune_knobs.py) on top of the start variant's flags, each a
   whole module raced against the start's on the model's inputs (at most KNOBS_SHARE of
   the budget); the fastest winner's flags and flow are the start of what follows, the
   verdict kept by the model's content;
1. compile the variant's flow with `--iree-hal-dump-executable-benchmarks-to`,
   `-configurations-to` and `-sources-to`: one runnable benchmark module, the configured
   executable and the configuration-free source per dispatch;
2. per dispatch, its cached search (stages/tune_cache.py: keyed by its source, so a shape
   seen before in any model is not searched again), or its time alone
   (iree-benchmark-module at the target's thread count) times its calls: its share;
3. for the dispatches carrying the time, largest first, while the budget lasts: tile
   candidates around the compiler's choice (stages/tune_space.py), each compiled as the
   dispatch's benchmark alone (a failing one is dropped), measured in rounds interleaved
   with the compiler's configuration (re-measured each round, before and after, for drift),
   each measurement the fastest of its repetitions; a candidate wins only when it is faster
   in every round and by more than the noise floor in the median of the rounds' ratios;
4. the winners' configured executables, as location-free bytecode named after the
   executable, substituted into the whole module (`--iree-hal-substitute-executable-
   configurations-from`); a control build substitutes the unedited ones, and the two
   modules must differ (else nothing changed); on the model's inputs the tuned module must
   give the control's outputs and be faster as a whole (in all but one of five rounds).

tune.json says per dispatch its share, the configuration chosen, the candidates tried and
where its answer came from; the stage's result says what the tuning cost."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import process
from pipeline.cache.digest import digest_file
from pipeline.cache.probes import tool_version
from pipeline.names import upstream_name, variant_target
from pipeline.stage import Role, Stage, StageError
from stages import timing, tune_cache, tune_knobs, tune_space
from stages.capture import STAGE as CAPTURE
from stages.emit import STAGE as EMIT
from stages.iree_tools import COMPILE_CODE, failure, tool
from stages.lower import PHASE, flow_flags
from stages.lower import STAGE as LOWER
from stages.pick import NOISE_FLOOR, choose, keep_first
from stages.runtime import device_for, module_args, run_module
from stages.targets import BEST, TUNED, compile_flags
from stages.validate import STAGE as VALIDATE

HERE = Path(__file__).parent

# seconds the whole tuning of a model may take, unless the target or tune_budget= says
# otherwise: the search stops early enough to leave the two whole-module builds and the check
# their time (RESERVE_BUILDS x the dump compile's). 10 minutes is meant to keep a ResNet-50's
# tuning under the 15 the issue allows on 2 cores (not measured: README)
DEFAULT_BUDGET_S = 600.0
RESERVE_BUILDS = 4.0
# at most this many candidates per dispatch (KILN_TUNE_CANDIDATES: fewer, for a quick run)
CANDIDATES_ENV = "KILN_TUNE_CANDIDATES"
# at most this many whole-model knobs (KILN_TUNE_KNOBS: fewer, for a quick run; 0: none)
KNOBS_ENV = "KILN_TUNE_KNOBS"
# the whole-model knobs may take this share of the budget; the dispatches' search the rest
KNOBS_SHARE = 0.5
# the other validated variants raced against the start: those within this factor of its
# time in validate's timing (pick's choice kept ViT's default over im2col 10% faster: README)
RIVAL_RATIO = 1.3
ROUNDS = 3                 # interleaved rounds a candidate must win in
# the whole module against the control: rounds, of which it may lose one (a round's first
# run of a model on a busy machine read 2.2x once), each the fastest of more repetitions
WHOLE_ROUNDS, WHOLE_REPETITIONS = 5, 5
REPETITIONS = 3            # iree-benchmark-module repetitions per measurement
SHARE_COVERED = 0.95       # search the dispatches that make up this much of the time
MIN_SHARE = 0.01           # and none below this share
COMPILE_TIMEOUT_S = 120
RESOURCE_USE = re.compile(r'dense_resource<"([^"]+)">')
RESOURCE_BLOB = re.compile(r'^\s*"([^"]+)": "(0x[0-9A-Fa-f]*)",?$', re.MULTILINE)
BENCH_TIMEOUT_S = 120


class Tune(Stage):
    name = "tune"
    doc = "search each dispatch's tiles for llvm-cpu targets with tune on (the ~tuned variant)"
    per_target = True
    role = Role.MODULE
    # the flow it compiles; the model's inputs and weights, to run the tuned module against
    # the untuned one (the same outputs, faster as a whole) before it is handed on
    inputs = (LOWER.name, CAPTURE.name, EMIT.name)
    partial_inputs = True   # (from the best variant: the other variants that failed are absent)
    code = (*COMPILE_CODE, HERE / "tune_space.py", HERE / "tune_knobs.py", HERE / "tune_cache.py",
            HERE / "timing.py", HERE / "pick.py", HERE / "lower.py")

    def outputs(self, model):
        return ("module.vmfb", "tune.json")

    def tools(self, model):
        return ("iree-compile", "iree-base-runtime")

    def applies_to(self, model, target):
        return target is None or target.variant == TUNED

    def siblings(self, model, target):
        # from the best variant: every other variant's verdict (its time) and its flow
        return (VALIDATE.name, LOWER.name) if target.tune == BEST else ()

    def reads(self, upstream, outputs, model, target):
        return {VALIDATE.name: ("result.json",), CAPTURE.name: ("inputs.npz",),
                EMIT.name: ("model.mlirbc", "model.json", "model.irpa")}.get(upstream, outputs)

    def unavailable(self, model, target):
        return None if device_for(target.driver) else f"skipped: no {target.driver} device to tune on"

    def key_params(self, model, target):
        return {"flags": compile_flags(target), "from": PHASE, "start": target.tune,
                "budget_s": budget(target), "candidates": candidate_limit(),
                "knobs": knob_limit(), "knobs_version": tune_knobs.KNOBS_VERSION,
                "threads": timing.threads_for(target.driver),
                "search": tune_cache.SEARCH_VERSION, "noise_floor": NOISE_FLOOR}

    def run(self, ctx):
        started = time.monotonic()
        start = Start.of(ctx)
        ctx.log(f"tuning from the {start.variant} variant: {start.why}")
        with tempfile.TemporaryDirectory() as tmp, timing.one_at_a_time(ctx) as how:
            session = Session(ctx, Path(tmp), started + budget(ctx.target), start)
            session.choose_knobs(started + KNOBS_SHARE * budget(ctx.target))
            dispatches = session.dump()
            session.answer(dispatches)
            took = session.rebuild(dispatches, ctx.out / "module.vmfb")
        summary = session.summary(dispatches, took, time.monotonic() - started, how)
        (ctx.out / "tune.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
        ctx.log(f"tuned: {summary['applied']} of {len(dispatches)} dispatches changed; "
                f"{summary['from_cache']} answered from the cache, {summary['searched']} "
                f"searched ({summary['candidates_compiled']} candidates), "
                f"{summary['seconds']:.1f} s")
        return {k: v for k, v in summary.items() if k != "dispatches"} | {
            "top": summary["dispatches"][:5], "report_line": report_line(summary)}


def budget(target) -> float:
    return target.tune_budget or DEFAULT_BUDGET_S


def candidate_limit() -> int:
    return _count(CANDIDATES_ENV, tune_space.MAX_CANDIDATES, 1, "candidates per dispatch")


def knob_limit() -> int:
    return _count(KNOBS_ENV, len(tune_knobs.KNOBS), 0, "whole-model knobs")


def _count(variable: str, default: int, least: int, what: str) -> int:
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    if not text.isdigit() or not least <= int(text) <= 100:
        raise StageError(f"{variable}={text!r}: expected a whole number of {what} from "
                         f"{least} to 100")
    return int(text)


@dataclass
class Start:
    """What tuning starts from: a variant's flow (lower's output) and its flags; with tune
    on, the other validated variants near it in validate's timing, raced against it as
    whole modules before any knob (a single timing each cannot part variants 10% apart)."""
    variant: str
    lowered: Path
    flags: list[str]
    why: str
    rivals: dict[str, tuple[Path, list[str]]] = field(default_factory=dict)

    @classmethod
    def of(cls, ctx) -> Start:
        """The variant the target says (tune: <variant>), or with tune on, the fastest of the
        other variants that validated, chosen as pick chooses (the noise keeps the earlier)."""
        target, variants = ctx.target, dict(ctx.target.variants)
        own = [name for name, flags in target.variants if name != TUNED]
        # the target's flags without the tuned variant's own (the first variant's, or the start's)
        base = target.flags[:len(target.flags) - len(variants[TUNED])]
        if target.tune != BEST:
            return cls(target.tune, ctx.inputs[LOWER.name] / "lowered.mlir",
                       _flags(target, base, variants[target.tune]), "the target names it")
        passed = {}
        for variant in own:
            result = _sibling_result(ctx, variant)
            if result and result.get("passed") and (result.get("latency") or
                                                    result.get("timing") == "off"):
                passed[variant] = result
        lowered = {v: ctx.inputs.get(_sibling(ctx, LOWER.name, v)) for v in own}
        passed = {v: r for v, r in passed.items() if lowered[v] is not None}
        if not passed:
            return cls(own[0], ctx.inputs[LOWER.name] / "lowered.mlir",
                       _flags(target, base, variants[own[0]]),
                       "no other variant validated with a time: the first variant's flags")
        untimed = any(r.get("timing") == "off" for r in passed.values())
        winner, why = keep_first(passed, own) if untimed else choose(passed, own)

        def near(v):   # (untimed: every one that passed)
            return untimed or passed[v]["latency"]["median_ms"] <= \
                RIVAL_RATIO * passed[winner]["latency"]["median_ms"]
        rivals = {v: (lowered[v] / "lowered.mlir", _flags(target, base, variants[v]))
                  for v in passed if v != winner and near(v)}
        return cls(winner, lowered[winner] / "lowered.mlir",
                   _flags(target, base, variants[winner]), why, rivals)


def _sibling(ctx, stage: str, variant: str) -> str:
    """The input name of another variant's node: 'validate@cpu' (the default), 'lower@cpu~im2col'."""
    return upstream_name(stage, variant_target(ctx.target.base, variant))


def _sibling_result(ctx, variant: str) -> dict | None:
    directory = ctx.inputs.get(_sibling(ctx, VALIDATE.name, variant))
    try:
        return json.loads((directory / "result.json").read_text()) if directory else None
    except (OSError, ValueError):
        return None


def _flags(target, base: tuple[str, ...], variant_flags) -> list[str]:
    return compile_flags(dataclasses.replace(target, flags=(*base, *(variant_flags or ()))))


@dataclass
class Dispatch:
    """One executable of the module: its files from the dumps and what tuning found."""
    name: str                       # the executable's symbol, main$async_dispatch_12
    export: str                     # its function, e.g. ..._matmul_128x768x3072_f32
    bench: Path
    configured: str                 # the configured executable's text
    source: str                     # the configuration-free source (the cache key's)
    calls: int
    key: str = ""
    outcome: tune_cache.Outcome | None = None
    from_cache: str | None = None   # "local" or "remote" where the answer was kept
    base_ms: float | None = None    # its time alone, compiler's configuration (this run)
    base_module: Path | None = None
    searched_now: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ms(self) -> float | None:
        """Its time alone with the compiler's configuration (the search's, where searched)."""
        return self.outcome.default_ms if self.outcome else self.base_ms

    @property
    def tuned_ms(self) -> float | None:
        return (self.outcome.winner_ms if self.outcome else None) or self.ms


class Session:
    """One tuning run: its scratch directory, deadline, and counts of what it did."""

    def __init__(self, ctx, work: Path, deadline: float, start: Start):
        self.ctx, self.work, self.deadline, self.start = ctx, work, deadline, start
        self.flags = start.flags
        self.driver = ctx.target.driver
        self.threads = timing.threads_for(self.driver)
        self.compiled = self.failed = self.benchmarks = 0
        # (the probed --version the stage keys name: no process start where remembered)
        self.compiler = tool_version("iree-compile")
        self.out_of_time = False
        self.search_seconds = 0.0
        self.whole: dict | None = None   # the tuned module against the untuned, as a whole
        self.knobs: dict | None = None   # the whole-model knobs tried and the one chosen
        self.blobs: dict[str, str] | None = None   # the flow's inlined constants, by name
        self.knob_flows: dict[str, Path] = {}   # each knob's flow built this run, by label
        self.run_args: list[str] | None = None   # a whole module's run on the model's inputs

    # --- 0. the whole-model knobs --------------------------------------------------------

    def choose_knobs(self, deadline: float) -> None:
        """The start's flags with each whole-model knob (stages/tune_knobs.py), each a whole
        module raced against the start's own on the model's inputs: the fastest that wins
        its rounds with the start's outputs becomes the start of the dispatches' search. Its
        verdict is kept by the model's content (a second tuning compiles and runs none)."""
        limit = knob_limit()
        rivals = self.start.rivals
        if not limit or not (rivals or tune_knobs.candidates(self.flags, limit)):
            return
        model = self.ctx.inputs[EMIT.name] / "model.mlirbc"
        key = tune_cache.knobs_key(digest_file(model), self.compiler, self.ctx.target.arch,
                                   self.threads, self.flags, limit,
                                   sorted(flags for _, flags in rivals.values()))
        found = tune_cache.recalled(self.ctx.store, key, "knobs")
        if found:
            self.knobs = {**found[0], "from_cache": found[1]}
            self._take_variant(self.knobs.get("variant"))
        else:
            self.knobs = self._race_knobs(deadline, limit)
            if not self.knobs["cut_short"]:   # (an unfinished race is no answer)
                tune_cache.remember(self.ctx.store, key, "knobs", self.knobs)
        chosen = self.knobs.get("chosen")
        self.ctx.log("whole-model race against the start: " + ", ".join(
            f"{k.get('variant') or k['knob']} {k.get('ratios') or k.get('checked')}"
            for k in self.knobs["variants"] + self.knobs["tried"]) +
            f"; variant {self.knobs.get('variant') or self.start.variant}, knob {chosen}"
            + (f" (from the {self.knobs['from_cache']} cache)" if "from_cache" in self.knobs else ""))
        if chosen:
            flags = self.knobs["flags"]
            lowered = self.knob_flows.get(chosen) or self._flow(flags, "chosen")
            self.start = Start(f"{self.start.variant} + {chosen}", lowered, flags,
                               f"{self.start.why}; then {chosen} "
                               f"({self.knobs['ratio']:.2f}x as a whole)")
            self.flags = flags

    def _race_knobs(self, deadline: float, limit: int) -> dict:
        """Build the start's module and each knob's, race them; where two win, race the
        two best together too. Past the deadline no further knob is built (cut_short)."""
        began = time.monotonic()
        start = self._module(self.start.lowered, self.flags, "start", required=True)
        raced_variants, variant, module = self._race_variants(start)
        if variant:
            self._take_variant(variant)
            start = module
        built, failed, cut_short = {}, [], False
        knobs = tune_knobs.candidates(self.flags, limit)
        for knob, flags in knobs:
            if time.monotonic() > deadline:
                cut_short = True
                break
            module = self._knob_module(knob, flags, len(built) + len(failed))
            if module is None:
                failed.append(knob.label)
            else:
                built[knob.label] = (flags, module)
        verdicts = self._race(start, {label: m for label, (_, m) in built.items()})
        kept = sorted((v["ratio"], label) for label, v in verdicts.items() if v["kept"])
        by_label = {knob.label: knob for knob, _ in knobs}
        both = len(kept) >= 2 and time.monotonic() <= deadline and \
            tune_knobs.combined(by_label[kept[0][1]], by_label[kept[1][1]])
        if both:   # the two best together
            flags = tune_knobs.with_knob(self.flags, both)
            module = self._knob_module(both, flags, len(built) + len(failed))
            if module is not None:
                built[both.label] = (flags, module)
                verdicts |= self._race(start, {both.label: module})
                if verdicts[both.label]["kept"] and verdicts[both.label]["ratio"] < kept[0][0]:
                    kept.insert(0, (verdicts[both.label]["ratio"], both.label))
        chosen = kept[0][1] if kept else None
        return {"variants": raced_variants, "variant": variant,
                "tried": [{"knob": label, "flags": flags, **verdicts.get(label, {})}
                          for label, (flags, _) in built.items()],
                "failed": failed, "chosen": chosen,
                "flags": built[chosen][0] if chosen else None,
                "ratio": kept[0][0] if kept else None, "cut_short": cut_short,
                "seconds": round(time.monotonic() - began, 1)}

    def _race_variants(self, start: Path) -> tuple[list[dict], str | None, Path | None]:
        """The start's rivals (Start.rivals) as whole modules against it: (what each did,
        the fastest that won and its module, if any). A rival whose module is the start's byte for byte
        (im2col on a model without convolutions) is not raced."""
        modules, rows = {}, []
        for variant, (lowered, flags) in self.start.rivals.items():
            module = self._module(lowered, flags, f"variant.{variant}")
            if module is None:
                rows.append({"variant": variant, "checked": "does not compile here"})
            elif module.read_bytes() == start.read_bytes():
                rows.append({"variant": variant, "checked": "the start's code: not raced"})
            else:
                modules[variant] = module
        verdicts = self._race(start, modules)
        rows += [{"variant": v, **verdicts[v]} for v in modules]
        kept = sorted((verdicts[v]["ratio"], v) for v in modules if verdicts[v]["kept"])
        return (rows, kept[0][1], modules[kept[0][1]]) if kept else (rows, None, None)

    def _take_variant(self, variant: str | None) -> None:
        """Start from this rival of the start instead (it won the race as a whole)."""
        if variant not in self.start.rivals:   # (none won; or a cached verdict's rival
            return                               # under another name: its flags keyed it)
        lowered, flags = self.start.rivals[variant]
        self.start = Start(variant, lowered, flags, f"{variant}: faster as a whole than "
                           f"{self.start.variant}, the pick's choice ({self.start.why})")
        self.flags = flags

    def _knob_module(self, knob: tune_knobs.Knob, flags: list[str], index: int) -> Path | None:
        """The whole module with the knob's flags, built from the input phase as lower and
        codegen build a variant's (its flow kept for the dispatches' search), or None where
        it does not compile."""
        label = f"knob{index}"
        lowered = self._flow(flags, label, required=False)
        module = lowered and self._module(lowered, flags, label)
        if module is None:
            return None
        self.knob_flows[knob.label] = lowered
        return module

    def _flow(self, flags: list[str], label: str, required: bool = True) -> Path | None:
        emitted = self.ctx.inputs[EMIT.name]
        lowered = self.work / f"{label}.lowered.mlir"
        done = self._compile(emitted / "model.mlirbc", lowered,
                             flow_flags(emitted, self.ctx.model, self.ctx.target, flags),
                             required=required)
        return lowered if done else None

    def _module(self, lowered: Path, flags: list[str], label: str,
                required: bool = False) -> Path | None:
        module = self.work / f"{label}.vmfb"
        done = self._compile(lowered, module, [f"--compile-from={PHASE}", *flags], required)
        return module if done else None

    # --- 1. the dispatches ---------------------------------------------------------------

    def dump(self) -> list[Dispatch]:
        lowered = self.start.lowered
        dirs = {kind: self.work / kind for kind in ("benchmarks", "configurations", "sources")}
        began = time.monotonic()
        self._compile(lowered, self.work / "dumped.vmfb", [
            f"--compile-from={PHASE}", *self.flags,
            f"--iree-hal-dump-executable-benchmarks-to={dirs['benchmarks']}",
            f"--iree-hal-dump-executable-configurations-to={dirs['configurations']}",
            f"--iree-hal-dump-executable-sources-to={dirs['sources']}"], required=True)
        # the tuned and control builds and the whole-module check come after the search
        self.deadline -= RESERVE_BUILDS * (time.monotonic() - began)
        flow = lowered.read_text()
        found = []
        for configured in sorted(dirs["configurations"].glob("configured_module_*.mlir")):
            name = configured.stem.removeprefix("configured_module_")
            benches = sorted(dirs["benchmarks"].glob(f"module_{name}_*_benchmark.mlir"))
            source = dirs["sources"] / f"module_{name}.mlir"
            if len(benches) != 1 or not source.is_file():
                continue   # (an executable with several variants: not tuned)
            text = configured.read_text()
            found.append(Dispatch(name, _export(text, name), benches[0], text,
                                  source.read_text(), max(1, flow.count(f"@{name}::"))))
        if not found:
            raise StageError("iree-compile dumped no dispatch benchmarks to tune")
        return found

    # --- 2./3. cached answers, shares, searches --------------------------------------------

    def answer(self, dispatches: list[Dispatch]) -> None:
        store = self.ctx.store
        cpu = self.ctx.target.arch
        for d in dispatches:
            d.key = tune_cache.dispatch_key(d.source, d.name, self.compiler, cpu, self.threads,
                                            self.flags)
            found = tune_cache.recall(store, d.key)
            if found is not None:
                d.outcome, d.from_cache = found
        for d in dispatches:   # a dispatch never seen: its time alone, for its share
            if d.outcome is None and not self._past_deadline():
                d.base_module, d.base_ms = self._baseline(d)
                if d.base_ms is not None:
                    d.outcome = tune_cache.Outcome(_root_text(d), default_ms=d.base_ms,
                                                   alone_ms=d.base_ms)
                    tune_cache.keep(store, d.key, d.outcome)   # its time, searched or not
        for d in carrying_the_time(dispatches):
            if d.outcome.searched or self._past_deadline():
                continue
            outcome = self._search(d)
            if outcome is None and not self.out_of_time:
                d.notes.append("search abandoned: a benchmark failed (see the log)")
            if outcome is not None:
                d.outcome, d.searched_now = outcome, True
                tune_cache.keep(store, d.key, outcome)

    def _baseline(self, d: Dispatch) -> tuple[Path | None, float | None]:
        module = self._bench_module(d, d.configured, "base")
        if module is None:
            d.notes.append("its benchmark did not compile")
            return None, None
        times = self._bench(self._dispatch_args(module))
        return (module, min(times)) if times else (module, None)

    def _bench_module(self, d: Dispatch, configured: str, label: str) -> Path | None:
        """The dispatch's dumped benchmark compiled with configured (its configured
        executable, edited or not) substituted: the dumped benchmark compiled as it is loses
        a batch-1 convolution's configuration and fails ("large vector sizes"), as a spec
        does (docs/DESIGN.md §9.4, §9.6); substituted, every dispatch compiles as in the
        whole module. None where it does not compile."""
        directory = self.work / f"{d.name}.{label}"
        self._bytecode(configured + self._resources(d.configured), directory / f"{d.name}.mlirbc")
        module = self.work / f"{d.name}.{label}.vmfb"
        substitute = f"--iree-hal-substitute-executable-configurations-from={directory}"
        return module if self._compile(d.bench, module, [*self.flags, substitute]) else None

    def _search(self, d: Dispatch) -> tune_cache.Outcome | None:
        """The dispatch's search to its end, or None where the budget ended first."""
        began = time.monotonic()
        outcome = tune_cache.Outcome(_root_text(d), default_ms=d.base_ms, searched=True,
                                     alone_ms=d.outcome.alone_ms if d.outcome else d.base_ms)
        base = d.base_module
        if base is None:
            base, outcome.default_ms = self._baseline(d)
            if base is None or outcome.default_ms is None:
                return None
        compiled = []
        for i, candidate in enumerate(tune_space.candidates(d.configured, candidate_limit())):
            if self._past_deadline():
                return None
            outcome.tried += 1
            self.compiled += 1
            module = self._bench_module(d, candidate.apply(d.configured), f"c{i}")
            if module is None:
                outcome.failed += 1
                self.failed += 1
            elif module.read_bytes() != base.read_bytes():   # (else: the edit changed nothing)
                compiled.append((candidate, module))
        result = self._rounds(base, compiled, outcome)
        if result is None:
            return None
        outcome.seconds = round(time.monotonic() - began, 2)
        self.search_seconds += outcome.seconds
        return result

    def _rounds(self, base: Path, compiled: list, outcome: tune_cache.Outcome):
        """Interleaved rounds: the default before and after each round's candidates, each
        candidate's ratio to the mean of the two. A candidate not faster in a round is out."""
        ratios: dict[str, list[float]] = {c.label: [] for c, _ in compiled}
        times: dict[str, list[float]] = {c.label: [] for c, _ in compiled}
        alive, base_times = list(compiled), []
        for _ in range(ROUNDS):
            if not alive:
                break
            if self._past_deadline():
                return None
            before = self._fastest(base)
            measured = [(c, self._fastest(m)) for c, m in alive]
            after = self._fastest(base)
            if None in (before, after):
                return None
            reference = (before + after) / 2
            base_times += [before, after]
            for c, ms in measured:
                if ms is not None:
                    ratios[c.label].append(ms / reference)
                    times[c.label].append(ms)
            alive = [(c, m) for c, m in alive if ratios[c.label] and ratios[c.label][-1] < 1.0]
        outcome.default_ms = statistics.median(base_times) if base_times else outcome.default_ms
        outcome.measured = [{"candidate": c.label, "median_ms": round(statistics.median(times[c.label]), 4),
                             "ratios": [round(r, 3) for r in ratios[c.label]]}
                            for c, _ in compiled if times[c.label]]
        winners = [(statistics.median(ratios[c.label]), c) for c, _ in alive
                   if len(ratios[c.label]) == ROUNDS
                   and statistics.median(ratios[c.label]) <= 1 - NOISE_FLOOR]
        if winners:
            ratio, best = min(winners, key=lambda w: w[0])
            outcome.winner, outcome.edits = best.label, [list(e) for e in best.edits]
            outcome.winner_ms = statistics.median(times[best.label])
        return outcome

    # --- 4. the whole module -------------------------------------------------------------

    def rebuild(self, dispatches: list[Dispatch], out: Path) -> bool | None:
        """Build the module with the winners substituted: True when it differs from the
        control build (the same, unedited: docs/DESIGN.md §9.4), None when nothing won (the
        plain build). Where it does not differ, or the whole-module check refuses it, the
        plain build is the module."""
        lowered = self.start.lowered
        plain = [f"--compile-from={PHASE}", *self.flags]
        winners = [d for d in dispatches if d.outcome and d.outcome.edits]
        if not winners:
            self._compile(lowered, out, plain, required=True)
            return None
        tuned, control = self.work / "tuned", self.work / "control"
        for d in winners:
            try:
                edited = tune_space.Candidate(d.outcome.winner, tuple(map(tuple, d.outcome.edits))
                                              ).apply(d.configured)
            except ValueError as err:   # a cached answer for another configuration
                d.notes.append(f"cached configuration not applied: {err}")
                edited = d.configured
            self._bytecode(edited + self._resources(d.configured), tuned / f"{d.name}.mlirbc")
            self._bytecode(d.configured + self._resources(d.configured), control / f"{d.name}.mlirbc")
        substitute = "--iree-hal-substitute-executable-configurations-from="
        self._compile(lowered, out, [*plain, substitute + str(tuned)], required=True)
        self._compile(lowered, self.work / "control.vmfb", [*plain, substitute + str(control)],
                      required=True)
        took = out.read_bytes() != (self.work / "control.vmfb").read_bytes()
        if not took:   # the edits made the same code (a tile past its loop's end): no change
            self.whole = {"kept": False, "checked": "the substituted configurations built the "
                          "same module as the unedited ones: nothing to keep"}
        else:   # (a verdict on these very answers, kept: a second tuning measures nothing)
            key = tune_cache.whole_key(digest_file(lowered), [(d.key, d.outcome.edits)
                                                              for d in winners],
                                       self.compiler, self.threads, self.flags)
            found = tune_cache.recalled(self.ctx.store, key, "whole")
            self.whole = {**found[0], "from_cache": found[1]} if found else \
                self._whole_module(out, self.work / "control.vmfb")
            if not found:
                tune_cache.remember(self.ctx.store, key, "whole", self.whole)
        if not self.whole["kept"]:   # the compiler's configurations, as the start variant's
            self._compile(lowered, out, plain, required=True)
        return took

    def _resources(self, configured: str) -> str:
        """The dialect_resources block of the constants the executable inlines
        (`dense_resource<"2.bias">`): no dump carries their values, only the flow module
        does, and a substituted executable without them fails ("resource does not exist":
        docs/DESIGN.md §9.4, §9.6)."""
        names = set(RESOURCE_USE.findall(configured))
        if not names:
            return ""
        if self.blobs is None:
            self.blobs = dict(RESOURCE_BLOB.findall(self.start.lowered.read_text()))
        entries = ",\n".join(f'      "{n}": "{self.blobs[n]}"' for n in sorted(names)
                              if n in self.blobs)
        return f"\n{{-#\n  dialect_resources: {{\n    builtin: {{\n{entries}\n    }}\n  }}\n#-}}\n"

    def _bytecode(self, text: str, path: Path) -> None:
        """The executable as bytecode without locations: parsed from a file, every op would
        carry that file's path into the module (docs/DESIGN.md §9.6)."""
        path.parent.mkdir(exist_ok=True)
        source = path.parent / f"{path.stem}.text.mlir"
        source.write_text(text)
        done = process.run([tool("iree-opt"), "--strip-debuginfo", "--emit-bytecode", "-",
                            "-o", str(path)], COMPILE_TIMEOUT_S, tool="iree-opt", stdin=source)
        source.unlink()
        if done.returncode != 0:
            raise StageError(f"iree-opt {failure(done.returncode, done.stderr)}")

    def _whole_module(self, tuned: Path, control: Path) -> dict:
        """The tuned module against the control (the same build, configurations unedited):
        kept only where it wins the race (dispatches measured alone do not add up to the
        module: docs/DESIGN.md §9.3)."""
        verdict = self._race(control, {"tuned": tuned}, "the untuned module")["tuned"]
        return {k: v for k, v in verdict.items() if k != "ratio"}

    def _race(self, reference: Path, others: dict[str, Path],
              against: str = "the start") -> dict[str, dict]:
        """Each module against the reference on the model's inputs: its outputs must match
        the reference's within the target's atol/rtol, and it must be faster in all but one
        of WHOLE_ROUNDS interleaved rounds (the reference timed first and last in each, the
        others' order alternating; each time the fastest of WHOLE_REPETITIONS runs) and by
        the noise floor in the median of its ratios to the reference's mean."""
        import numpy as np
        if not others:
            return {}
        args = {label: self._run_args(label, module)
                for label, module in [("reference", reference), *others.items()]}
        got = {"reference": run_module(self.work / "run.reference", args["reference"], None,
                                       self.ctx, [])[0]}
        failed = {}
        for label in others:   # (one that compiles and fails to run is out, not the stage)
            try:
                got[label] = run_module(self.work / f"run.{label}", args[label], None,
                                        self.ctx, [])[0]
            except StageError as err:
                if err.transient:   # (a hang: the machine's, not the module's)
                    raise
                failed[label] = str(err).splitlines()[0][:300]
        atol, rtol = self.ctx.target.atol, self.ctx.target.rtol
        same = {label: label in got and len(got[label]) == len(got["reference"]) and all(
            np.allclose(o, r, atol=atol, rtol=rtol, equal_nan=True)
            for o, r in zip(got[label], got["reference"])) for label in others}
        racing = [label for label in others if same[label]]
        ratios: dict[str, list[float]] = {label: [] for label in others}
        for i in range(WHOLE_ROUNDS if racing else 0):
            before = self._fastest_of(args["reference"])
            measured = {label: self._fastest_of(args[label])
                        for label in (racing if i % 2 == 0 else racing[::-1])}
            after = self._fastest_of(args["reference"])
            if before and after:
                for label, ms in measured.items():
                    if ms:
                        ratios[label].append(ms / ((before + after) / 2))
        verdicts = {}
        for label in others:
            r = ratios[label]
            faster = len(r) == WHOLE_ROUNDS and sum(x < 1 for x in r) >= WHOLE_ROUNDS - 1 \
                and statistics.median(r) <= 1 - NOISE_FLOOR
            verdicts[label] = {
                "kept": same[label] and faster, "outputs_match": same[label],
                "ratios": [round(x, 3) for x in r],
                "ratio": round(statistics.median(r), 3) if r else None,
                "checked": (f"outputs match {against}'s within the target's atol/rtol"
                            if same[label] else f"does not run: {failed[label]}"
                            if label in failed else f"outputs differ from {against}'s: "
                            "not kept")}
        return verdicts

    def _run_args(self, label: str, module: Path) -> list[str]:
        """iree-run-module's and iree-benchmark-module's arguments for the module on the
        model's inputs (the captured ones; a model file without a framework gets
        validate's own), its outputs' directory made. The inputs are read and written out
        once a tuning: every module of a race runs on the same files."""
        (self.work / f"run.{label}").mkdir(exist_ok=True)
        if self.run_args is None:
            from stages import frameworks
            emitted = self.ctx.inputs[EMIT.name]
            captured = self.ctx.inputs.get(CAPTURE.name)
            info = json.loads((emitted / "model.json").read_text())
            archive = emitted / "model.irpa"
            parameters = archive if archive.is_file() and archive.stat().st_size else None
            inputs = frameworks.load_arrays(captured / "inputs.npz") if captured else \
                frameworks.model_inputs(self.ctx.model, info["inputs"])
            (self.work / "inputs").mkdir(exist_ok=True)
            self.run_args = module_args(self.work / "inputs", module, parameters, self.driver,
                                        info["entry"], inputs)
        return [f"--module={module}" if a.startswith("--module=") else a
                for a in self.run_args]

    def _fastest_of(self, args: list[str]) -> float | None:
        """The whole module's fastest of WHOLE_REPETITIONS runs (args: module_args')."""
        times = self._bench(args, WHOLE_REPETITIONS, BENCH_TIMEOUT_S * 5)
        return min(times) if times else None

    # --- tools ---------------------------------------------------------------------------

    def _compile(self, src: Path, out: Path, flags: list[str], required: bool = False) -> bool:
        argv = [tool("iree-compile"), "-", *flags, "-o", str(out)]
        done = process.run(argv, COMPILE_TIMEOUT_S if not required else 1800,
                           tool="iree-compile", stdin=src)
        if done.returncode == 0:
            return True
        if required:
            self.ctx.log(f"$ {' '.join(argv)} < {src}")
            raise StageError(f"iree-compile {failure(done.returncode, done.stderr)}",
                             exit_code=done.returncode)
        return False

    def _bench(self, args: list[str], repetitions: int = REPETITIONS,
               timeout_s: float = BENCH_TIMEOUT_S) -> list[float]:
        """Per-call times (ms) of what args run (a dispatch's benchmark module, or the whole
        module on the model's inputs), repetitions of them."""
        argv = [tool("iree-benchmark-module"), *args,
                *timing.iree_benchmark_flags(repetitions, self.driver, self.threads)]
        for _ in range(2):   # a run that fails is tried once more before its times are lost
            self.benchmarks += 1
            done = process.run(argv, timeout_s, tool="iree-benchmark-module")
            try:
                if done.returncode == 0:
                    return timing.iree_times(json.loads(done.stdout))
            except (ValueError, KeyError):
                pass
            self.ctx.log(f"$ {done.command}\n{failure(done.returncode or 0, done.stderr)}")
        return []

    def _fastest(self, module: Path) -> float | None:
        """The fastest of a run's repetitions: on a shared machine other work only ever adds
        time, and the fastest repetition's ratios repeat where medians' do not
        (docs/DESIGN.md §9.6)."""
        times = self._bench(self._dispatch_args(module))
        return min(times) if times else None

    def _dispatch_args(self, module: Path) -> list[str]:
        return [f"--module={module}", f"--device={self.driver}"]

    def _past_deadline(self) -> bool:
        self.out_of_time = self.out_of_time or time.monotonic() > self.deadline
        return self.out_of_time

    # --- what tune.json says -------------------------------------------------------------

    def summary(self, dispatches: list[Dispatch], took: bool | None, seconds: float,
                how: str) -> dict:
        timed = [d for d in dispatches if d.ms]
        total = sum(d.ms * d.calls for d in timed) or 1.0
        rows = [_row(d, d.ms * d.calls / total) for d in sorted(timed, key=lambda d: -d.ms * d.calls)]
        rows += [_row(d, None) for d in dispatches if not d.ms]   # (their notes say why)
        before = sum(d.ms * d.calls for d in timed)
        after = sum(d.tuned_ms * d.calls for d in timed)
        return {"start": self.start.variant, "start_why": self.start.why, "flags": self.flags, "threads": self.threads,
                "budget_s": budget(self.ctx.target), "seconds": round(seconds, 1),
                "search_seconds": round(self.search_seconds, 1), "out_of_budget": self.out_of_time,
                "dispatches": rows, "dispatch_count": len(dispatches),
                "from_cache": sum(d.from_cache is not None for d in dispatches),
                "from_remote": sum(d.from_cache == "remote" for d in dispatches),
                "searched": sum(d.searched_now for d in dispatches),
                "candidates_compiled": self.compiled, "candidates_failed": self.failed,
                "benchmarks_run": self.benchmarks,
                "applied": sum(bool(d.outcome and d.outcome.edits) for d in dispatches)
                if not self.whole or self.whole["kept"] else 0,
                "whole_module": self.whole, "knobs": self.knobs,
                "substitution_took": took,
                "dispatch_sum_ms": {"before": round(before, 4), "after": round(after, 4)},
                "how": f"iree-benchmark-module per dispatch, {self.threads} threads, fastest of "
                       f"{REPETITIONS} repetitions; {ROUNDS} interleaved rounds per candidate; "
                       f"{how}"}


def carrying_the_time(dispatches: list[Dispatch]) -> list[Dispatch]:
    """The dispatches worth a search, largest share first: until SHARE_COVERED of the time,
    none below MIN_SHARE. Shares come from each dispatch's first time alone (alone_ms),
    which its search leaves as it was: from the re-measured times a second tuning would
    find another dispatch over the line and search it (ViT's and MobileNetV2's did)."""
    def ms(d):
        return d.outcome.alone_ms or d.outcome.default_ms

    timed = [d for d in dispatches if d.outcome is not None and ms(d)]
    total = sum(ms(d) * d.calls for d in timed) or 1.0
    chosen, covered = [], 0.0
    for d in sorted(timed, key=lambda d: -ms(d) * d.calls):
        share = ms(d) * d.calls / total
        if covered >= SHARE_COVERED or share < MIN_SHARE:
            break
        chosen.append(d)
        covered += share
    return chosen


def report_line(summary: dict) -> str:
    """What the console and report.md say under the case (pipeline.report.table's line)."""
    top = summary["dispatches"][:1]
    biggest = ""
    if top and top[0]["default_ms"]:
        t = top[0]
        biggest = (f"; largest {t['op'].split('_', 3)[-1]} ({t['share']:.0%} of the time) "
                   f"{t['default_ms']:.3g} -> {t['tuned_ms']:.3g} ms"
                   + (f" with {t['chosen']}" if t["chosen"] else ""))
    whole = summary.get("whole_module") or {}
    verdict = ""
    if whole.get("ratios"):
        verdict = (f"; as a whole {statistics.median(whole['ratios']):.2f}x the untuned module "
                   + ("(kept)" if whole["kept"] else "(not clearly faster: not kept)"))
    elif whole and not whole.get("outputs_match", True):
        verdict = "; outputs differ from the untuned module's: not kept"
    knobs = summary.get("knobs") or {}
    if knobs.get("chosen"):
        verdict += f"; {knobs['chosen']} {knobs['ratio']:.2f}x as a whole"
    elif knobs.get("tried"):
        verdict += f"; no whole-model knob faster ({len(knobs['tried'])} tried)"
    return (f"from {summary['start']}: {summary['applied']} of {summary['dispatch_count']} "
            f"dispatches re-tiled{biggest}{verdict}; {summary['from_cache']} answered from the cache, "
            f"{summary['searched']} searched ({summary['candidates_compiled']} candidates), "
            f"{summary['seconds']:.0f} s")


def _row(d: Dispatch, share: float | None) -> dict:
    o = d.outcome
    return {"dispatch": d.name, "op": d.export, "calls": d.calls,
            "share": None if share is None else round(share, 4),
            "default_ms": d.ms, "tuned_ms": d.tuned_ms,
            "config": o and o.default, "chosen": o and o.winner, "tried": o and o.tried,
            "failed": o and o.failed, "searched": bool(o and o.searched),
            "from_cache": d.from_cache, "notes": d.notes}


def _root_text(d: Dispatch) -> str:
    root = tune_space.root_config(d.configured)
    return root.text if root else ""


def _export(text: str, name: str) -> str:
    """The dispatch's function name, which says its root op and shapes."""
    marker = f"@{name}_"
    start = text.find(marker)
    return text[start + 1:text.find(" ", start)] if start >= 0 else name


STAGE = Tune()
