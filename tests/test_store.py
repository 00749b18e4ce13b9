import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback

from conftest import REPO

from pipeline.cache.digest import canonical, digest_bytes, digest_file
from pipeline.cache.store import Store


def make_outputs(tmp_path, files):
    src = tmp_path / "src"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    return src, {name: digest_file(src / name) for name in files}


def test_save_then_restore_round_trips(tmp_path):
    store = Store(tmp_path / "cache")
    src, outputs = make_outputs(tmp_path, {"a.bin": b"alpha", "b.txt": b"beta"})
    store.save("k" * 64, src, outputs, {"result": {"passed": True}})
    entry = store.lookup("k" * 64, outputs)
    dest = tmp_path / "dest"
    assert store.restore("k" * 64, entry, dest) == {"result": {"passed": True}}
    assert (dest / "a.bin").read_bytes() == b"alpha" and (dest / "b.txt").read_bytes() == b"beta"


def test_identical_outputs_share_one_blob(tmp_path):
    store = Store(tmp_path / "cache")
    src, outputs = make_outputs(tmp_path, {"a": b"same"})
    store.save("1" * 64, src, outputs, {})
    store.save("2" * 64, src, outputs, {})
    blobs = [p.name for p in (tmp_path / "cache" / "cas").rglob("*") if p.is_file()]
    assert sorted(blobs) == sorted([outputs["a"], digest_bytes(canonical({}).encode())])


def test_corrupted_blob_is_discarded_and_reported_as_a_miss(tmp_path, caplog):
    store = Store(tmp_path / "cache")
    src, outputs = make_outputs(tmp_path, {"a": b"good bytes"})
    store.save("c" * 64, src, outputs, {})
    blob = tmp_path / "cache" / "cas" / outputs["a"][:2] / outputs["a"]
    blob.write_bytes(b"bad bytes!")
    entry = store.lookup("c" * 64, outputs)
    assert store.restore("c" * 64, entry, tmp_path / "dest") is None
    assert "corrupted" in caplog.text
    assert not blob.exists() and store.lookup("c" * 64, outputs) is None
    assert not (tmp_path / "dest" / "a").exists()


def test_damaged_entry_is_a_miss(tmp_path):
    store = Store(tmp_path / "cache")
    src, outputs = make_outputs(tmp_path, {"a": b"x"})
    store.save("d" * 64, src, outputs, {})
    entry_file = tmp_path / "cache" / "ac" / "dd" / ("d" * 64 + ".json")
    entry_file.write_text('{"outputs": ')
    assert store.lookup("d" * 64, outputs) is None
    assert not entry_file.exists()


def test_writes_leave_no_temp_files(tmp_path):
    store = Store(tmp_path / "cache")
    src, outputs = make_outputs(tmp_path, {"a": b"x" * 1000})
    store.save("e" * 64, src, outputs, {})
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    assert all(os.path.getsize(p) > 0 for p in (tmp_path / "cache").rglob("*") if p.is_file())


def test_prune_drops_unused_entries_and_their_blobs_only(tmp_path):
    store = Store(tmp_path / "cache")
    src, outputs = make_outputs(tmp_path, {"shared": b"both use me", "old": b"only the old one"})
    store.save("a" * 64, src, outputs, {})
    store.save("b" * 64, src, {"shared": outputs["shared"]}, {})
    month_ago = time.time() - 30 * 86400
    os.utime(tmp_path / "cache" / "ac" / "aa" / ("a" * 64 + ".json"), (month_ago, month_ago))
    for blob in (tmp_path / "cache" / "cas").rglob("*"):   # saved long ago
        os.utime(blob, (month_ago, month_ago))
    leftover = tmp_path / "cache" / "cas" / "ff" / ".x.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a blob")
    os.utime(leftover, (month_ago, month_ago))

    result = store.prune(max_age_days=7)
    assert (result.entries_removed, result.blobs_removed, result.entries_kept) == (1, 1, 1)
    assert store.lookup("a" * 64, outputs) is None and not leftover.exists()
    entry = store.lookup("b" * 64, ["shared"])
    assert store.restore("b" * 64, entry, tmp_path / "dest") is not None
    assert (tmp_path / "dest" / "shared").read_bytes() == b"both use me"


def test_a_failure_entry_names_no_output_and_lives_like_any_entry(tmp_path, caplog):
    store = Store(tmp_path / "cache")
    failure = {"error": "no", "command": "tool < in", "result": None, "log": "tool: no"}
    assert store.remember_failure("e" * 64, failure)
    found = store.find("e" * 64, ["out.txt"], verify=True)   # whatever the stage declares
    assert found.failed and found.entry["outputs"] == {}
    assert store.recall_failure("e" * 64, found.entry) == failure
    assert store.prune(max_age_days=7).blobs_removed == 0           # its blob is named
    assert store.recall_failure("e" * 64, store.lookup("e" * 64, [])) == failure
    # a success later under the same key replaces it
    src, outputs = make_outputs(tmp_path, {"out.txt": b"ok"})
    store.save("e" * 64, src, outputs, {})
    assert not store.find("e" * 64, ["out.txt"]).failed
    # an entry that says failed but names outputs, or says it oddly, is damage
    entry_file = tmp_path / "cache" / "ac" / "ee" / ("e" * 64 + ".json")
    for odd in ({"failed": True}, {"failed": "yes", "outputs": {}}):
        store.save("e" * 64, src, outputs, {})
        entry_file.write_text(json.dumps({**json.loads(entry_file.read_text()), **odd}))
        assert store.lookup("e" * 64, ["out.txt"]) is None and "damaged" in caplog.text


def test_lookup_marks_an_entry_as_used(tmp_path):
    store = Store(tmp_path / "cache")
    src, outputs = make_outputs(tmp_path, {"a": b"x"})
    store.save("c" * 64, src, outputs, {})
    entry_file = tmp_path / "cache" / "ac" / "cc" / ("c" * 64 + ".json")
    os.utime(entry_file, (0, 0))
    store.lookup("c" * 64, outputs)
    assert store.prune(max_age_days=7).entries_removed == 0


def test_an_entry_that_does_not_name_every_output_is_discarded(tmp_path, caplog):
    store = Store(tmp_path / "cache")
    src, outputs = make_outputs(tmp_path, {"a": b"x", "b": b"y"})
    store.save("f" * 64, src, {"a": outputs["a"]}, {})      # an entry missing output b
    assert store.lookup("f" * 64, ["a", "b"]) is None
    assert "incomplete" in caplog.text
    assert not (tmp_path / "cache" / "ac" / "ff" / ("f" * 64 + ".json")).exists()


def test_the_result_comes_from_its_verified_blob_not_the_entry(tmp_path, caplog):
    store = Store(tmp_path / "cache")
    src, outputs = make_outputs(tmp_path, {"a": b"x"})
    store.save("9" * 64, src, outputs, {"result": {"passed": True, "max_abs_error": 1e-7}})
    entry_file = tmp_path / "cache" / "ac" / "99" / ("9" * 64 + ".json")
    entry = json.loads(entry_file.read_text())
    # an edited entry can only point elsewhere: at a blob that is not there, or at one whose
    # bytes do not hash to the name (both are a miss, and the entry goes)
    forged = {"passed": False, "max_abs_error": 0.6}
    entry["meta"] = digest_bytes(canonical({"result": forged}).encode())
    entry_file.write_text(json.dumps(entry))
    assert store.restore("9" * 64, store.lookup("9" * 64, outputs), tmp_path / "d1") is None
    store.save("9" * 64, src, outputs, {"result": {"passed": True, "max_abs_error": 1e-7}})
    entry = json.loads(entry_file.read_text())
    meta_blob = tmp_path / "cache" / "cas" / entry["meta"][:2] / entry["meta"]
    meta_blob.write_text(json.dumps({"result": forged}))
    assert store.restore("9" * 64, store.lookup("9" * 64, outputs), tmp_path / "d2") is None
    assert not entry_file.exists() and "corrupted" in caplog.text


def test_save_rewrites_a_corrupt_blob_sitting_at_the_digest_name(tmp_path):
    store = Store(tmp_path / "cache")
    src, outputs = make_outputs(tmp_path, {"a": b"the real bytes"})
    blob = tmp_path / "cache" / "cas" / outputs["a"][:2] / outputs["a"]
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"rotten")
    store.save("8" * 64, src, outputs, {})
    assert digest_file(blob) == outputs["a"]
    assert store.restore("8" * 64, store.lookup("8" * 64, outputs), tmp_path / "d") is not None


def test_files_honour_the_umask(tmp_path):
    """A cache shared by a group must be readable by the group: modes follow the umask."""
    script = (f"import os, sys; os.umask(0o002); sys.path.insert(0, {str(REPO)!r})\n"
              "from pathlib import Path\nfrom pipeline.cache.store import Store\n"
              "from pipeline.cache.digest import digest_file\n"
              f"src = Path({str(tmp_path)!r}) / 'f'; src.write_bytes(b'x')\n"
              f"Store(Path({str(tmp_path)!r}) / 'cache').save('7' * 64, src.parent, "
              "{'f': digest_file(src)}, {})\n")
    subprocess.run([sys.executable, "-c", script], check=True)
    modes = {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert modes == {oct(0o664)}


def test_a_build_survives_prune_removing_its_shard_directory(tmp_path, monkeypatch):
    store = Store(tmp_path / "cache")
    src, outputs = make_outputs(tmp_path, {"a": b"x"})
    real_mkstemp = tempfile.mkstemp
    raced = []

    def prune_between_mkdir_and_mkstemp(dir, **kwargs):
        if not raced:
            raced.append(dir)
            os.rmdir(dir)            # what prune does to an empty shard directory
        return real_mkstemp(dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", prune_between_mkdir_and_mkstemp)
    assert store.save("6" * 64, src, outputs, {})
    assert raced and store.lookup("6" * 64, outputs) is not None


def test_prune_and_builds_on_one_cache_both_succeed(tmp_path):
    """Builds save while prunes (days=0) sweep the same cache: no crash on either side."""
    root = tmp_path / "cache"
    src, outputs = make_outputs(tmp_path, {"a": b"x" * 10_000})
    errors, stop = [], threading.Event()

    def guard(fn):
        def loop():
            try:
                while not stop.is_set():
                    fn()
            except Exception:   # the test's point: nothing may escape either loop
                errors.append(traceback.format_exc())
                stop.set()
        return loop

    counter = iter(range(10**9))
    builder = guard(lambda: Store(root).save(f"{next(counter):064x}", src, outputs, {}))
    pruner = guard(lambda: Store(root).prune(0))
    threads = [threading.Thread(target=t) for t in (builder, builder, pruner, pruner)]
    for t in threads:
        t.start()
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    assert errors == [], errors[0]


def test_read_only_cache_is_read_and_not_written(tmp_path, small_disk):
    root = small_disk.mount("4m")
    src, outputs = make_outputs(tmp_path, {"a": b"x"})
    Store(root).save("5" * 64, src, outputs, {"result": 1})
    small_disk.read_only(root)
    store = Store(root)
    entry = store.lookup("5" * 64, outputs)
    assert store.restore("5" * 64, entry, tmp_path / "d") == {"result": 1}
    assert store.warnings == []                  # not "damaged"
    assert store.save("4" * 64, src, outputs, {}) is False
    assert len(store.warnings) == 1 and "EROFS" in store.warnings[0]
    assert "built without storing" in store.warnings[0]


def test_full_cache_disk_says_so_and_leaves_no_temp_file(tmp_path, small_disk):
    root = small_disk.mount("64k")
    src, outputs = make_outputs(tmp_path, {"big": os.urandom(256 * 1024)})
    store = Store(root)
    assert store.save("3" * 64, src, outputs, {}) is False
    assert "ENOSPC" in store.warnings[0]
    assert [p for p in root.rglob("*") if p.is_file()] == []


def test_read_only_mode_finds_without_marking_discarding_or_writing(tmp_path):
    """`doit explain`'s store: the same answers, no write (pipeline.cache.files.read_only)."""
    from pipeline.cache.files import set_read_only
    store = Store(tmp_path / "cache")
    src, outputs = make_outputs(tmp_path, {"a": b"x"})
    store.save("c" * 64, src, outputs, {})
    store.save("e" * 64, src, outputs, {})
    entry_file = tmp_path / "cache" / "ac" / "cc" / ("c" * 64 + ".json")
    os.utime(entry_file, (0, 0))
    damaged = tmp_path / "cache" / "ac" / "ee" / ("e" * 64 + ".json")
    damaged.write_text("{")
    set_read_only()
    try:
        assert store.find("c" * 64, outputs).where == "local"
        assert store.find("e" * 64, outputs) is None and damaged.read_text() == "{"
        blob = store.blob_path(outputs["a"])
        blob.write_bytes(b"y")                     # a bad blob: the run's restore rebuilds
        assert store.find("c" * 64, outputs) is not None
        assert store.find("c" * 64, outputs, verify=True) is None and blob.read_bytes() == b"y"
        assert not store.save("f" * 64, src, outputs, {})
        assert not (tmp_path / "cache" / "ac" / "ff").exists()
    finally:
        set_read_only(False)
    assert entry_file.stat().st_mtime == 0 and store.prune(max_age_days=7).entries_removed >= 1


def test_a_full_cache_is_named_in_the_warning_not_the_file_copied_into_it(tmp_path, small_disk):
    root = small_disk.mount("64k")
    src, outputs = make_outputs(tmp_path, {"big": os.urandom(256 * 1024)})
    store = Store(root)
    assert store.save("3" * 64, src, outputs, {}) is False
    assert f"cache {root} is not writable" in store.warnings[0], store.warnings
    assert str(src) not in store.warnings[0], store.warnings
