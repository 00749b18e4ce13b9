import os

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
