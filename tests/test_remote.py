"""The shared cache against a real server: nginx with its DAV module on loopback, speaking
the Bazel HTTP cache protocol. The store talks to it through pipeline.cache.remote."""

import pytest
from conftest import Project, copy_project, needs_torch

from pipeline.cache.digest import digest_file
from pipeline.cache.remote import RemoteSettings, connect, settings
from pipeline.cache.store import Store

KEY = "ab" * 32


def remote_store(root, server, mode="read", token=None, signing_key=None):
    connect.cache_clear()   # one client per settings and process: a fresh one per scenario
    remote = RemoteSettings(server.url, mode, token or server.token, signing_key)
    return Store(root, connect(remote))


def outputs_in(tmp_path, files):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for name, data in files.items():
        (src / name).write_bytes(data)
    return src, {name: digest_file(src / name) for name in files}


def test_a_write_uploads_blobs_and_entry_and_an_empty_cache_restores_from_it(tmp_path, cache_server):
    src, outputs = outputs_in(tmp_path, {"module.vmfb": b"\x00vmfb" * 1000, "log.txt": b"ok"})
    writer = remote_store(tmp_path / "ci-cache", cache_server, mode="write")
    assert writer.save(KEY, src, outputs, {"result": {"passed": True}})
    assert writer.remote_outcome == "stored"
    assert [p.name for p in cache_server.files("ac")] == [KEY]
    assert {p.name for p in cache_server.files("cas")} >= set(outputs.values())

    reader = remote_store(tmp_path / "laptop-cache", cache_server)
    entry = reader.lookup(KEY, outputs)
    assert reader.restore(KEY, entry, tmp_path / "out") == {"result": {"passed": True}}
    assert reader.remote_outcome == "hit" and reader.warnings == []
    assert (tmp_path / "out" / "module.vmfb").read_bytes() == b"\x00vmfb" * 1000
    # the hit filled the local cache: the next lookup needs no server
    cache_server.stop()
    local = Store(tmp_path / "laptop-cache")
    assert local.restore(KEY, local.lookup(KEY, outputs), tmp_path / "again") is not None


def test_a_tampered_remote_blob_is_a_miss_and_a_writer_replaces_it(tmp_path, cache_server):
    src, outputs = outputs_in(tmp_path, {"a": b"good bytes"})
    remote_store(tmp_path / "c1", cache_server, mode="write").save(KEY, src, outputs, {})
    blob = cache_server.dir / "data" / "cas" / outputs["a"]
    blob.write_bytes(b"evil bytes")

    reader = remote_store(tmp_path / "c2", cache_server, mode="write")
    entry = reader.lookup(KEY, outputs)
    assert reader.restore(KEY, entry, tmp_path / "out") is None
    assert reader.warnings == [f"remote cache blob {outputs['a'][:12]} did not match its "
                               "digest; ignored it (a writer replaces it)"]
    assert not (tmp_path / "out" / "a").exists()
    assert not list((tmp_path / "c2" / "cas").rglob(outputs["a"]))   # never kept locally
    reader.save(KEY, src, outputs, {})      # the rebuild's upload overwrites the bad blob
    assert blob.read_bytes() == b"good bytes"


def test_read_mode_never_puts(tmp_path, cache_server):
    src, outputs = outputs_in(tmp_path, {"a": b"x"})
    store = remote_store(tmp_path / "c", cache_server, mode="read")
    assert store.lookup(KEY, outputs) is None and store.remote_outcome == "miss"
    store.save(KEY, src, outputs, {})
    assert cache_server.requests("GET") == 1 and cache_server.requests("PUT") == 0
    assert cache_server.files("ac") == []


def test_a_stopped_server_costs_one_warning_and_misses(tmp_path, cache_server):
    cache_server.stop()
    src, outputs = outputs_in(tmp_path, {"a": b"x"})
    store = remote_store(tmp_path / "c", cache_server, mode="write")
    assert store.lookup(KEY, outputs) is None
    assert store.save(KEY, src, outputs, {})            # the local cache still works
    assert store.remote_outcome == "error"
    assert len(store.warnings) == 2 and len(set(store.warnings)) == 1   # same text: said once
    assert "unreachable" in store.warnings[0] and "building locally" in store.warnings[0]
    assert Store(tmp_path / "c").lookup(KEY, outputs) is not None


def test_a_wrong_token_is_reported_clearly(tmp_path, cache_server):
    src, outputs = outputs_in(tmp_path, {"a": b"x"})
    store = remote_store(tmp_path / "c", cache_server, mode="write", token="wrong")
    assert store.lookup(KEY, outputs) is None
    store.save(KEY, src, outputs, {})
    assert set(store.warnings) == {
        f"remote cache {cache_server.url} refused the token (HTTP 401): check "
        "KILN_REMOTE_TOKEN; building locally this run"}
    assert cache_server.requests("GET") == 1   # given up after the first refusal
    assert cache_server.files("ac") == []


def test_signed_entries_reject_unsigned_and_forged_ones(tmp_path, cache_server):
    src, outputs = outputs_in(tmp_path, {"a": b"x"})
    remote_store(tmp_path / "c1", cache_server, mode="write").save(KEY, src, outputs, {})
    signed_reader = remote_store(tmp_path / "c2", cache_server, signing_key="s3cret")
    assert signed_reader.lookup(KEY, outputs) is None
    assert "no valid signature" in signed_reader.warnings[0]

    remote_store(tmp_path / "c3", cache_server, mode="write", signing_key="s3cret").save(
        KEY, src, outputs, {})
    reader = remote_store(tmp_path / "c4", cache_server, signing_key="s3cret")
    assert reader.restore(KEY, reader.lookup(KEY, outputs), tmp_path / "out") is not None
    wrong_key = remote_store(tmp_path / "c5", cache_server, signing_key="other")
    assert wrong_key.lookup(KEY, outputs) is None


def test_a_remembered_failure_travels_through_the_remote_like_any_entry(tmp_path, cache_server):
    """CI (write mode) remembers a failure on the remote; a clone (read mode) reports it
    'failed (cached)' without running the stage, and puts none of its own failures there."""
    from test_runner import Failing, job

    from pipeline.plan.layout import Layout
    from pipeline.run.runner import execute
    from pipeline.stage import StageError

    def layout(name, mode):
        connect.cache_clear()
        return Layout(tmp_path / name, tmp_path / name / "build", tmp_path / name / "cache",
                      RemoteSettings(cache_server.url, mode, cache_server.token))

    stage = Failing(StageError("compiler said no", command="tool < in", exit_code=1))
    first = execute(job(stage), layout("ci", "write"))
    assert (first.status, first.remote) == ("failed", "stored")
    assert [p.name for p in cache_server.files("ac")] == [first.key]
    clone = layout("clone", "read")
    again = execute(job(stage), clone)
    assert (again.status, again.remote, stage.calls) == ("failed (cached)", "hit", 1)
    assert (again.error, again.command) == (first.error, first.command)
    assert "the tool said: no" in (clone.root / again.log).read_text()   # CI's log

    puts = cache_server.requests("PUT")
    stage.text = "another key"
    assert execute(job(stage), clone).status == "failed" and stage.calls == 2
    assert cache_server.requests("PUT") == puts        # a reader writes nothing there
    assert execute(job(stage), clone).status == "failed (cached)" and stage.calls == 2   # local


def test_settings_environment_wins_over_the_config():
    config = {"url": "http://config:1", "mode": "write"}
    assert settings(config, {}) == RemoteSettings("http://config:1", "write")
    chosen = settings(config, {"KILN_REMOTE": "http://env:2/", "KILN_REMOTE_MODE": "read",
                               "KILN_REMOTE_TOKEN": "SECRET"})
    assert (chosen.url, chosen.mode, chosen.token) == ("http://env:2", "read", "SECRET")
    assert "SECRET" not in repr(chosen)
    assert settings({}, {}) is None


@needs_torch
def test_a_fresh_clone_restores_everything_from_the_remote_and_runs_no_tool(project, tmp_path,
                                                                           cache_server):
    project.doit("validate", "model=mlp", "target=cpu", env_extra=cache_server.env("write"))
    assert all(t.get("remote") == "stored" for t in project.record()), project.record()
    clone = Project(copy_project(tmp_path / "clone"))
    puts = cache_server.requests("PUT")
    proc = clone.doit("validate", "model=mlp", "target=cpu", env_extra=cache_server.env("read"))
    record = clone.record()
    assert {t["status"] for t in record} == {"cached"} and all(t["remote"] == "hit" for t in record)
    assert f"remote cache: {len(record)} hits, 0 misses, 0 errors" in proc.stdout
    assert cache_server.requests("PUT") == puts
    validate = next(t for t in record if t["stage"] == "validate")
    assert validate["result"]["passed"]
    assert not list((clone.root / "build" / "logs").glob("*.log")) or all(
        "why:" not in p.read_text() for p in (clone.root / "build" / "logs").glob("*.log"))


def test_remote_section_in_targets_yaml_is_checked(tmp_path):
    from pipeline.plan.config import load_config
    from pipeline.stage import ConfigError
    base = "targets: {cpu: {backend: llvm-cpu}}\nmatrices: {default: {models: [], targets: [cpu]}}\n"
    path = tmp_path / "targets.yaml"
    path.write_text(base + "remote: {url: 'http://cache:9090', mode: write}\n")
    assert load_config(path).remote == {"url": "http://cache:9090", "mode": "write"}
    path.write_text(base + "remote: {url: 'http://cache:9090', mode: always}\n")
    with pytest.raises(ConfigError, match=r"targets.yaml:3: remote.mode: expected 'read' .*'always'"):
        load_config(path)
    path.write_text(base + "remote: {url: 'http://cache:9090', token: abc}\n")
    with pytest.raises(ConfigError, match="remote.token: unknown field"):
        load_config(path)


def test_the_ci_example_shards_the_matrix_and_writes_only_from_main():
    import yaml
    from conftest import REPO

    from pipeline.plan.options import parse_shard
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "kiln.yml").read_text())
    job = workflow["jobs"]["build"]
    shards = job["strategy"]["matrix"]["shard"]
    run = next(s["run"] for s in job["steps"] if "doit" in s.get("run", ""))
    count = int(run.split("shard=${{ matrix.shard }}/")[1].split()[0])
    assert [parse_shard(f"{i}/{count}") for i in shards] == [(i, count) for i in range(1, count + 1)]
    assert "refs/heads/main" in job["env"]["KILN_REMOTE_MODE"]
    assert job["env"]["KILN_REMOTE_TOKEN"] == "${{ secrets.KILN_REMOTE_TOKEN }}"
    assert any("GITHUB_STEP_SUMMARY" in s.get("run", "") for s in job["steps"])


@needs_torch
def test_shards_meet_in_the_remote_cache(project, tmp_path, cache_server):
    """Two CI jobs each build half the matrix (the front end where their half needs it);
    a third machine then finds every stage in the shared cache."""
    write = cache_server.env("write")
    project.doit("validate", "model=mlp", "target=cpu,vulkan", "shard=1/2", env_extra=write)
    first = {t["task"]: t["status"] for t in project.record()}
    assert {t.split("@")[-1] for t in first if "@" in t} == {"cpu"}
    assert first["capture:mlp"] == "ran"
    second_job = Project(copy_project(tmp_path / "job2"))
    second_job.doit("validate", "model=mlp", "target=cpu,vulkan", "shard=2/2", env_extra=write)
    second = {t["task"]: t["status"] for t in second_job.record()}
    assert {t.split("@")[-1] for t in second if "@" in t} == {"vulkan"}
    assert second["capture:mlp"] == "cached"           # built by job 1, found in the remote
    assert second["validate:mlp@vulkan"] == "ran"

    laptop = Project(copy_project(tmp_path / "laptop"))
    laptop.doit("validate", "model=mlp", "target=cpu,vulkan", env_extra=cache_server.env("read"))
    assert set(laptop.statuses().values()) == {"cached"}
