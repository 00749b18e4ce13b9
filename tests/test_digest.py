from pipeline.cache import digest


def test_key_changes_with_each_part():
    base = dict(code={"s/a.py": "1"}, params={"f": [1]}, inputs={"x": "d"}, tools={"t": "1"})
    key = digest.stage_key("s", **base)
    assert key == digest.stage_key("s", **{k: dict(v) for k, v in base.items()})
    for part, changed in [("code", {"s/a.py": "2"}), ("params", {"f": [2]}),
                          ("inputs", {"x": "e"}), ("tools", {"t": "2"})]:
        assert digest.stage_key("s", **{**base, part: changed}) != key
    assert digest.stage_key("other", **base) != key


def test_directory_source_ignores_volatile_files(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"graph")
    before = digest.digest_source(tmp_path)
    (tmp_path / "fingerprint.pb").write_bytes(b"uuid-1234")
    assert digest.digest_source(tmp_path) == before
    (tmp_path / "variables").mkdir()
    (tmp_path / "variables" / "v.data").write_bytes(b"weights")
    assert digest.digest_source(tmp_path) != before
