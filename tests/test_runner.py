"""The runner with small pure-Python stages: restore-or-run, early cutoff, failures."""

import errno
import json
import os
import subprocess

import pytest

from pipeline.cache.store import Store
from pipeline.plan.layout import Layout
from pipeline.plan.tasks import Job
from pipeline.run.decide import compute_key, decide, not_a_verdict
from pipeline.run.entry import RESULT_TEXT, StageEntry
from pipeline.run.runner import execute
from pipeline.stage import ModelSpec, Node, Stage, StageError
from pipeline.vocab import Status


class Source(Stage):
    name = "source"

    def __init__(self):
        self.calls = 0
        self.text = "hello"

    def outputs(self, model):
        return ("out.txt",)

    def key_params(self, model, target):
        return {"text": self.text}

    def run(self, ctx):
        self.calls += 1
        (ctx.out / "out.txt").write_text(self.text.upper()[:3])


class Upper(Stage):
    name = "upper"
    inputs = ("source",)

    def __init__(self):
        self.calls = 0

    def outputs(self, model):
        return ("up.txt",)

    def run(self, ctx):
        self.calls += 1
        (ctx.out / "up.txt").write_text((ctx.inputs["source"] / "out.txt").read_text() + "!")


class Broken(Stage):
    name = "broken"

    def outputs(self, model):
        return ("never.txt",)

    def run(self, ctx):
        (ctx.out / "never.txt").write_text("half")
        raise StageError("compiler said no", command="tool --flag < in")


MODEL = ModelSpec("toy", "none", {})


@pytest.fixture
def layout(tmp_path):
    return Layout(tmp_path, tmp_path / "build", tmp_path / "cache")


def job(stage, node=None, upstream=None, retry_failed=False) -> Job:
    return Job(node or Node(stage.name, "toy", None), stage, MODEL, None, upstream or {}, False,
               retry_failed)


def run(stage, layout, upstream=None):
    node = Node(stage.name, "toy", None)
    return execute(job(stage, node, upstream), layout), layout.node_dir(node)


def test_miss_runs_then_hit_restores_without_running(layout, tmp_path):
    source = Source()
    entry, out = run(source, layout)
    assert entry.status == "ran" and source.calls == 1
    (out / "out.txt").unlink()
    entry2, _ = run(source, layout)
    assert entry2.status == "cached" and source.calls == 1
    assert entry2.key == entry.key
    assert (out / "out.txt").read_text() == "HEL"


def test_same_upstream_bytes_give_the_same_downstream_key(layout):
    source, upper = Source(), Upper()
    _, src_dir = run(source, layout)
    key_before, _ = compute_key(upper, MODEL, None, {"source": (source, src_dir)}, False)
    source.text = "help"  # a different parameter, but the same output bytes ("HEL")
    entry, _ = run(source, layout)
    assert entry.status == "ran"
    key_after, _ = compute_key(upper, MODEL, None, {"source": (source, src_dir)}, False)
    assert key_after == key_before
    source.text = "world"  # different bytes: a different downstream key
    run(source, layout)
    key_changed, _ = compute_key(upper, MODEL, None, {"source": (source, src_dir)}, False)
    assert key_changed != key_before


def test_failure_is_recorded_and_leaves_no_output(layout):
    entry, out = run(Broken(), layout)
    assert entry.status == "failed"
    assert entry.error == "compiler said no" and entry.command == "tool --flag < in"
    assert not (out / "never.txt").exists()
    log = (layout.root / entry.log).read_text()
    assert "command: tool --flag < in" in log
    # what the cache keeps of it: a failure entry naming no output (tests below)
    (cached,) = [json.loads(p.read_text()) for p in layout.cache.rglob("*.json")]
    assert cached["failed"] is True and cached["outputs"] == {}


def test_corrupted_cache_blob_is_rebuilt(layout, caplog):
    source = Source()
    entry, out = run(source, layout)
    for blob in (layout.cache / "cas").rglob("*"):
        if blob.is_file():
            blob.write_text("XYZ")
    entry2, _ = run(source, layout)
    assert entry2.status == "ran" and source.calls == 2
    assert (out / "out.txt").read_text() == "HEL"
    assert "corrupted" in caplog.text
    assert "corrupted" in entry2.warnings[0]
    assert "warning: cache blob" in (layout.root / entry2.log).read_text()


def test_a_rerun_says_which_part_of_the_key_changed(layout):
    source = Source()
    entry, _ = run(source, layout)
    assert entry.why.startswith("no earlier build")
    source.text = "world"
    entry, _ = run(source, layout)
    assert entry.status == "ran" and entry.why == "changed params: text"


class Escaping(Source):
    name = "escaping"

    def outputs(self, model):
        return ("../sibling.txt",)

    def run(self, ctx):
        (ctx.out / "../sibling.txt").write_text("x")


def test_install_never_touches_anything_outside_its_output_directory(layout, tmp_path):
    """A model named '../../x' (config checks stop it earlier; this is the last guard) or an
    output path with '..' must not write, nor delete the 'stale' files, outside build/."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    node = Node("source", "../../victim", None)
    entry = execute(job(Source(), node), layout)
    assert entry.status == "failed" and "refusing to write" in entry.error
    assert (victim / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    entry, _ = run(Escaping(), layout)
    assert entry.status == "failed" and "outside" in entry.error
    assert not (layout.build / "toy" / "sibling.txt").exists()


def test_an_output_damaged_in_build_is_restored_with_a_warning(layout):
    source = Source()
    entry, out = run(source, layout)
    from pipeline.run.intact import changed_outputs
    recorded = json.loads(layout.entry_file(Node("source", "toy", None)).read_text())["outputs"]
    assert changed_outputs(out, recorded)[0] == []
    (out / "out.txt").write_text("BAD")
    assert changed_outputs(out, recorded)[0] == ["out.txt"]
    entry, _ = run(source, layout)
    assert entry.status == "cached" and source.calls == 1
    assert (out / "out.txt").read_text() == "HEL"
    assert "build/toy/source/out.txt no longer matched what kiln wrote" in entry.warnings[0]


def test_touching_an_output_is_not_damage(layout):
    _, out = run(Source(), layout)
    recorded = json.loads(layout.entry_file(Node("source", "toy", None)).read_text())["outputs"]
    os.utime(out / "out.txt", (1, 1))     # stat differs, bytes do not: hashed, found equal
    from pipeline.run.intact import changed_outputs
    assert changed_outputs(out, recorded)[0] == []


class Big(Source):
    name = "big"

    def run(self, ctx):
        (ctx.out / "out.txt").write_bytes(b"x" * 4_000_000)


def test_a_full_build_disk_fails_the_stage_naming_path_and_errno(tmp_path, small_disk):
    disk = small_disk.mount("1m")
    layout = Layout(tmp_path, disk / "build", tmp_path / "cache")
    entry = execute(job(Big()), layout)
    assert entry.status == "failed"
    assert "No space left on device (ENOSPC)" in entry.error and str(disk) in entry.error
    assert not list((layout.build / ".tmp").iterdir())     # no half-written scratch left


def test_a_read_only_cache_builds_without_storing(tmp_path, small_disk):
    cache = small_disk.mount("1m")
    small_disk.read_only(cache)
    layout = Layout(tmp_path, tmp_path / "build", cache)
    source = Source()
    entry, out = run(source, layout)
    assert entry.status == "ran" and (out / "out.txt").read_text() == "HEL"
    assert len(entry.warnings) == 1 and "EROFS" in entry.warnings[0]


# --- decide: what happens to a node, for the runner and `doit explain` alike ----------------

class NoDevice(Source):
    name = "nodevice"

    def unavailable(self, model, target):
        return "skipped: no toy device"


def test_a_stage_that_cannot_run_here_is_skipped_without_running(layout):
    stage = NoDevice()
    assert decide(job(stage), layout, Store(layout.cache).find).action == "skip"
    entry, out = run(stage, layout)
    assert entry.status == "skipped" and entry.reason == "skipped: no toy device"
    assert stage.calls == 0 and not out.exists()


def test_an_absent_input_skips_unless_the_stage_takes_partial_inputs(layout):
    source = Source()
    upstream = {"source": (source, layout.node_dir(Node("source", "toy", None)))}
    decision = decide(job(Upper(), upstream=upstream), layout, Store(layout.cache).find)
    assert decision.action == "skip" and decision.why.startswith("skipped: source has no out.txt")

    class Partial(Upper):
        partial_inputs = True

        def run(self, ctx):
            (ctx.out / "up.txt").write_text("none")

    decision = decide(job(Partial(), upstream=upstream), layout, Store(layout.cache).find)
    assert decision.action == "run" and decision.parts["inputs"] == {"source/out.txt": "absent"}


def test_a_key_that_cannot_be_computed_fails_the_stage_without_running_it(layout, tmp_path):
    model = ModelSpec("toy", "none", {"model": tmp_path / "gone.onnx"})   # a model file gone
    source = Source()
    entry = execute(Job(Node("source", "toy", None), source, model, None, {}, True), layout)
    assert entry.status == "failed" and source.calls == 0
    assert entry.error.startswith("cannot compute its key: FileNotFoundError")
    assert "Traceback" in (layout.root / entry.log).read_text()


def test_decide_says_restore_with_the_entry_the_run_then_restores(layout):
    source = Source()
    first, out = run(source, layout)
    (out / "out.txt").unlink()
    decision = decide(job(source), layout, Store(layout.cache).find)
    assert (decision.action, decision.why, decision.key) == ("restore", "key in the cache",
                                                            first.key)
    assert decision.found.where == "local" and set(decision.found.entry["outputs"]) == {"out.txt"}
    source.text = "world"
    decision = decide(job(source), layout, Store(layout.cache).find)
    assert (decision.action, decision.why) == ("run", "changed params: text")
    assert run(source, layout)[0].why == decision.why


# --- failures remembered under their key ---------------------------------------------------

class Failing(Source):
    """Logs what its tool said, then raises `error` (None: writes its output and passes)."""
    name = "failing"

    def __init__(self, error):
        super().__init__()
        self.error = error

    def run(self, ctx):
        self.calls += 1
        ctx.log("the tool said: no")
        if self.error is not None:
            raise self.error
        (ctx.out / "out.txt").write_text("ok")


def log_of(layout, entry) -> str:
    return (layout.root / entry.log).read_text()


def test_a_failure_is_remembered_and_the_next_run_reports_it_without_running(layout):
    stage = Failing(StageError("compiler said no", command="tool < in", exit_code=1,
                               result={"passed": False}))
    first, out = run(stage, layout)
    assert first.status == "failed" and "failure remembered under its key" in log_of(layout, first)
    decision = decide(job(stage), layout, Store(layout.cache).find)
    assert decision.action == "fail" and decision.remembered and decision.key == first.key
    assert decision.why == ("failed with this same key before: its failure is remembered in the "
                            "cache (retry=failed runs it again)")
    again, _ = run(stage, layout)
    assert stage.calls == 1 and again.status == Status.CACHED_FAILURE == "failed (cached)"
    assert (again.error, again.command, again.result, again.key) == \
        (first.error, first.command, first.result, first.key)
    assert again.why == decision.why and not out.exists()
    log = log_of(layout, again)   # that run's log, under this run's header
    assert "status: failed (cached)" in log and "the tool said: no" in log
    assert StageEntry.load(layout.entry_file(Node("failing", "toy", None))) == again


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EROFS, "Read-only file system"),
    subprocess.TimeoutExpired("iree-compile", 1800),
    MemoryError(),
    ValueError("a bug in a stage"),
    StageError("iree-compile exited with -9", exit_code=-9),            # killed
    StageError("iree-compile exited with 247", exit_code=247),          # its launcher's -9
    StageError("iree-run-module exited with 1 (it lost its device on all 3 runs)", exit_code=1,
               transient="the device was lost (VK_ERROR_DEVICE_LOST)"),
    StageError("iree-compile exited with 1: LLVM ERROR: out of memory", exit_code=1),
    StageError("cannot write out.txt: No space left on device (ENOSPC)"),
], ids=["ENOSPC", "EROFS", "timeout", "MemoryError", "bug", "signal", "launcher-signal",
        "device-lost", "tool-out-of-memory", "disk-full-message"])
def test_a_failure_that_is_no_verdict_on_the_inputs_is_never_remembered(layout, error):
    stage = Failing(error)
    for calls in (1, 2):
        entry, _ = run(stage, layout)
        assert entry.status == "failed" and stage.calls == calls
    assert "failure not remembered" in log_of(layout, entry)
    assert not list(layout.cache.rglob("*.json"))
    assert entry.why.startswith("its last run failed with this same key, and the cache "
                                "remembers no failure for it")


def test_what_is_a_verdict_on_the_inputs():
    assert not_a_verdict(StageError("outputs differ from the reference", result={})) is None
    assert not_a_verdict(StageError("iree-compile exited with 1: 'x' op illegal",
                                    exit_code=1)) is None
    assert not_a_verdict(StageError("x", exit_code=1), log="VK_ERROR_DEVICE_LOST") is not None
    assert not_a_verdict(KeyboardInterrupt()) == "KeyboardInterrupt is no verdict on the " \
                                                 "stage's inputs"
    # a compiler that crashes on its input (an LLVM assertion's abort, a segfault) crashes
    # again on it: remembered; a kill, a hang-up, a terminal's stop come from outside
    for crash in (-6, -11, 134):
        assert not_a_verdict(StageError("iree-compile crashed", exit_code=crash)) is None
    for kill in (-9, -15, -1, -2, 137):
        assert not_a_verdict(StageError("iree-compile killed", exit_code=kill)) is not None


def test_an_interrupted_stage_is_not_remembered(layout):
    with pytest.raises(KeyboardInterrupt):
        run(Failing(KeyboardInterrupt()), layout)
    assert not list(layout.cache.rglob("*.json"))


def test_retry_failed_runs_a_remembered_failure_again_and_keeps_the_new_outcome(layout):
    stage = Failing(StageError("compiler said no", exit_code=1))
    run(stage, layout)
    # without retry=failed a stage that did not fail is restored as ever, not run
    source = Source()
    run(source, layout)
    (layout.node_dir(Node("source", "toy", None)) / "out.txt").unlink()
    assert execute(job(source, retry_failed=True), layout).status == "cached"
    assert source.calls == 1
    # it fails again: the new failure replaces the one remembered
    stage.error = StageError("compiler said no again", exit_code=1)
    entry = execute(job(stage, retry_failed=True), layout)
    assert entry.status == "failed" and stage.calls == 2
    assert entry.why.startswith("retry=failed: it failed with this same key before")
    entry, _ = run(stage, layout)
    assert (entry.status, entry.error, stage.calls) == (Status.CACHED_FAILURE, "compiler said no again", 2)
    # it passes (a fixed machine): its outputs replace the failure, and are restored after
    stage.error = None
    entry = execute(job(stage, retry_failed=True), layout)
    assert entry.status == "ran" and stage.calls == 3
    (layout.node_dir(Node("failing", "toy", None)) / "out.txt").unlink()
    assert run(stage, layout)[0].status == "cached" and stage.calls == 3


def test_a_damaged_remembered_failure_runs_the_stage(layout):
    stage = Failing(StageError("compiler said no"))
    run(stage, layout)
    for blob in (layout.cache / "cas").rglob("*"):
        if blob.is_file():
            blob.write_text("XYZ")
    entry, _ = run(stage, layout)
    assert entry.status == "failed" and stage.calls == 2
    assert "missing or corrupted" in entry.warnings[0]


# --- the record entry -------------------------------------------------------------------

def test_the_entry_file_reads_back_whole_and_the_record_leaves_out_the_private_parts(layout):
    entry, _ = run(Source(), layout)
    node = Node("source", "toy", None)
    on_disk = json.loads(layout.entry_file(node).read_text())
    assert StageEntry.load(layout.entry_file(node)) == entry and on_disk == entry.to_dict()
    assert set(on_disk) == {"task", "stage", "model", "target", "key", "status", "why",
                            "seconds", "log", "fingerprint", "outputs"}
    assert on_disk["target"] is None    # (written even when None, as the key is)
    # (and the stage's role, which the report reads: from the plan, null for none)
    assert set(entry.to_record()) == set(on_disk) - {"fingerprint", "outputs"} | {"role"}
    assert set(entry.to_dict(fingerprint=False)) == set(on_disk) - {"fingerprint"}


def test_doits_values_keep_the_result_as_text_and_read_back_whole():
    """doit decodes every task's row on every run: the result (validate's nested numbers)
    is kept there as one string, read back only when the record needs it."""
    node = Node("validate", "m", "cpu")
    entry = StageEntry.of(node)
    entry.status, entry.key = "ran", "k"
    entry.result = {"passed": True, "outputs": [{"shape": [1, 2], "max_abs_error": 0.5}]}
    saved = json.loads(json.dumps(entry.to_dict(fingerprint=False, result_text=True)))
    assert "result" not in saved and json.loads(saved[RESULT_TEXT]) == entry.result
    assert StageEntry.from_dict(saved, node) == entry
    assert StageEntry.from_dict({**saved, RESULT_TEXT: "{"}, node).result is None   # damaged


def test_an_older_or_damaged_entry_reads_as_what_it_still_says(tmp_path):
    node = Node("lower", "m", "cpu")
    older = {"task": "lower:m@cpu", "stage": "lower", "model": "m", "target": "cpu",
             "status": "ran", "key": "k", "outputs": {"lowered.mlir": "ab" * 32},   # no stat
             "retired_field": 1, "warnings": None}
    entry = StageEntry.from_dict(older)
    assert (entry.status, entry.key, entry.outputs, entry.warnings) == ("ran", "k", None, [])
    assert StageEntry.from_dict({"status": "exploded"}, node) == StageEntry.of(node)
    assert StageEntry.from_dict(["not", "an", "entry"]) is None
    (tmp_path / "e.json").write_text("{")
    assert StageEntry.load(tmp_path / "e.json") is None
    assert StageEntry.load(tmp_path / "e.json", node).to_record() == {
        "task": "lower:m@cpu", "stage": "lower", "model": "m", "target": "cpu", "key": None,
        "role": None}


def test_a_stage_that_fails_after_passing_leaves_no_earlier_output(layout):
    """A stage that built its output once and now fails must not leave that output behind
    for what reads it where it exists (a pick among variants took an earlier validate's
    result.json for this run's)."""
    source = Source()
    _, out = run(source, layout)
    assert (out / "out.txt").read_text() == "HEL"

    class NowBroken(Source):
        def run(self, ctx):
            raise StageError("now it fails")

    broken = NowBroken()
    broken.text = "other"   # another key: it runs, and fails
    entry, _ = run(broken, layout)
    assert entry.status == "failed" and not (out / "out.txt").exists()


class Diagnose(Stage):
    """Follows source's failure, as bisect follows validate's."""
    name = "diagnose"
    inputs = ("source",)
    follows = "source"

    def outputs(self, model):
        return ("why.txt",)

    def reads(self, upstream, outputs, model, target):
        return ()   # its outcome, none of its files

    def needed(self, status, result):
        return None if status == "failed" else f"source {status}, nothing to diagnose"

    def run(self, ctx):
        (ctx.out / "why.txt").write_text("found it")


def test_a_stage_that_follows_a_failure_runs_only_after_one(layout):
    from pipeline.run.decide import NOT_NEEDED
    source_dir = layout.node_dir(Node("source", "toy", None))
    upstream = {"source": (Source(), source_dir)}
    diagnose = Diagnose()
    decision = decide(job(diagnose, upstream=upstream), layout, Store(layout.cache).find)
    assert decision.action == "skip" and decision.unneeded and decision.settles
    assert decision.why == NOT_NEEDED + "source:toy has no outcome here"
    run(Source(), layout)   # passed: nothing to diagnose
    decision = decide(job(diagnose, upstream=upstream), layout, Store(layout.cache).find)
    assert decision.why == NOT_NEEDED + "source ran, nothing to diagnose"

    class Failing(Source):
        def run(self, ctx):
            raise StageError("wrong numbers", result={"passed": False})

    failing = Failing()
    failing.text = "off"   # another key: it runs, and fails
    assert run(failing, layout)[0].status == "failed"
    entry, out = run(diagnose, layout, upstream)
    assert entry.status == "ran" and (out / "why.txt").read_text() == "found it"


class Warning_(Source):
    """Writes its output after a library-style warning, as numpy's RuntimeWarning is raised."""
    name = "warns"

    def run(self, ctx):
        import warnings
        warnings.warn("invalid value encountered in subtract", RuntimeWarning, stacklevel=1)
        return super().run(ctx)


def test_a_warning_raised_in_a_stage_goes_to_its_log_not_the_console(layout, capfd):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("always")   # (pytest's own filter would record, not print)
        warnings.showwarning = warnings._showwarning_orig   # noqa: SLF001 (as Python's own)
        entry, _ = run(Warning_(), layout)
    assert entry.status == "ran"
    assert "warning: RuntimeWarning: invalid value encountered in subtract" in log_of(layout, entry)
    out, err = capfd.readouterr()
    assert "invalid value" not in out + err
