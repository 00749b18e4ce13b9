import os
import time

from pipeline.keys import digest_file
from pipeline.store import Store


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
    entry = store.lookup("k" * 64)
    assert entry["meta"] == {"result": {"passed": True}}
    dest = tmp_path / "dest"
    assert store.restore("k" * 64, entry, dest)
    assert (dest / "a.bin").read_bytes() == b"alpha" and (dest / "b.txt").read_bytes() == b"beta"


def test_identical_outputs_share_one_blob(tmp_path):
    store = Store(tmp_path / "cache")
    src, outputs = make_outputs(tmp_path, {"a": b"same"})
    store.save("1" * 64, src, outputs, {})
    store.save("2" * 64, src, outputs, {})
    assert len(list((tmp_path / "cache" / "cas").rglob("*"))) == 2  # one shard dir + one blob


def test_corrupted_blob_is_discarded_and_reported_as_a_miss(tmp_path, caplog):
    store = Store(tmp_path / "cache")
    src, outputs = make_outputs(tmp_path, {"a": b"good bytes"})
    store.save("c" * 64, src, outputs, {})
    blob = tmp_path / "cache" / "cas" / outputs["a"][:2] / outputs["a"]
    blob.write_bytes(b"bad bytes!")
    entry = store.lookup("c" * 64)
    assert not store.restore("c" * 64, entry, tmp_path / "dest")
    assert "corrupted" in caplog.text
    assert not blob.exists() and store.lookup("c" * 64) is None
    assert not (tmp_path / "dest" / "a").exists()


def test_damaged_entry_is_a_miss(tmp_path):
    store = Store(tmp_path / "cache")
    src, outputs = make_outputs(tmp_path, {"a": b"x"})
    store.save("d" * 64, src, outputs, {})
    entry_file = tmp_path / "cache" / "ac" / "dd" / ("d" * 64 + ".json")
    entry_file.write_text('{"outputs": ')
    assert store.lookup("d" * 64) is None
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
    leftover = tmp_path / "cache" / "cas" / "ff" / ".x.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a blob")
    os.utime(leftover, (month_ago, month_ago))

    result = store.prune(max_age_days=7)
    assert (result.entries_removed, result.blobs_removed, result.entries_kept) == (1, 1, 1)
    assert store.lookup("a" * 64) is None and not leftover.exists()
    entry = store.lookup("b" * 64)
    assert store.restore("b" * 64, entry, tmp_path / "dest")
    assert (tmp_path / "dest" / "shared").read_bytes() == b"both use me"


def test_lookup_marks_an_entry_as_used(tmp_path):
    store = Store(tmp_path / "cache")
    src, outputs = make_outputs(tmp_path, {"a": b"x"})
    store.save("c" * 64, src, outputs, {})
    entry_file = tmp_path / "cache" / "ac" / "cc" / ("c" * 64 + ".json")
    os.utime(entry_file, (0, 0))
    store.lookup("c" * 64)
    assert store.prune(max_age_days=7).entries_removed == 0
