"""Shared fixtures: a throw-away copy of the kiln project, a way to run doit in it, and models
built once per session that tests copy rather than rebuild.

Every test runs without the user's KILN_* settings (a KILN_CACHE in the shell would send a
test's cache elsewhere) and with TEST_SETTINGS instead."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROJECT_FILES = ["dodo.py", "targets.yaml", "pipeline", "stages", "models"]
# what every test runs with: 3 timing repetitions rather than 10 (validate records and keys
# by it; tests/test_timing.py checks figures of at least 3 repetitions), and report.html
# without its matplotlib charts (a second or two per run; the page's own tests draw them)
# a second IREE release (tests/test_toolchains.py), provisioned once for every test and every
# run of the suite, outside the tree (a clean clone provisions it once): KILN_TOOLCHAINS names it
SHARED_TOOLCHAINS = Path(tempfile.gettempdir()) / "kiln-test-toolchains"
TEST_SETTINGS = {"KILN_TIMING_REPETITIONS": "3", "KILN_REPORT_CHARTS": "off"}


def without_kiln_settings(environ) -> dict:
    """environ without the user's KILN_* variables, with TEST_SETTINGS."""
    return {**{k: v for k, v in environ.items() if not k.startswith("KILN_")}, **TEST_SETTINGS}


@pytest.fixture(scope="session", autouse=True)
def isolated_from_kiln_settings():
    """The tests' own process (and what it starts, doit included) sees no KILN_* variable of
    the user's, only TEST_SETTINGS; a test that needs another sets it."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("KILN_")]:
            patch.delenv(name)
        for name, value in TEST_SETTINGS.items():
            patch.setenv(name, value)
        yield


# pytest-xdist (pyproject's addopts: -n 2) hands out whole files, so that a module fixture's
# build happens once, and the files whose tests share a session-built model as one unit: the
# frameworks run (test_frameworks, test_html, test_passrate) and mlp_built (test_models,
# test_pipeline, test_diff, test_bisect: flags_diff builds on it). (pytest 9.2 ignores
# xdist_group marks: xdist 3.8 renames the node ids.)
SHARED_BUILD_FILES = {"test_frameworks.py": "frameworks_run", "test_html.py": "frameworks_run",
                      "test_passrate.py": "frameworks_run",
                      "test_models.py": "mlp_built", "test_pipeline.py": "mlp_built",
                      "test_diff.py": "mlp_built", "test_bisect.py": "mlp_built"}


# the units that take longest, longest first (seconds of test time on 2 cores, 2026-12-03:
# 196, 144, 87, 86, 65, 51, 50, 40, 31, 28, 27; every other unit takes under 20): handed out
# in this order, no long unit starts last while the other worker idles. (xdist's own order,
# by number of tests, started ResNet's three and the cluster's four last: 70 s of the suite.)
SLOWEST_FIRST = ("mlp_built", "frameworks_run", "test_resnet.py", "test_executor.py",
                 "test_torch_files.py", "test_params.py", "test_bisect_rounding.py",
                 "test_explain.py", "test_memo.py",
                 "test_timing.py", "test_inputs.py", "test_remote.py")


def _unit(nodeid: str) -> str:
    """The unit of work a test belongs to: its file, or the shared build its file reads."""
    file = nodeid.split("::")[0].rsplit("/", 1)[-1]
    return SHARED_BUILD_FILES.get(file, file)


def pytest_collection_modifyitems(config, items):
    rank = {unit: place for place, unit in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(_unit(item.nodeid), len(rank)))   # (stable)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class SharedBuildScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    # units in the collection's order (SLOWEST_FIRST), not xdist's by number of tests
    config.option.loadscopereorder = False
    return SharedBuildScheduling(config, log)


def copy_project(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


class Project:
    def __init__(self, root: Path, variants: str | None = "default", timing: str | None = "off"):
        self.root = root
        # the flag variants to try: the default flags only, unless a test is about the search
        # (tests/test_variants.py sets None: what the config says, every variant)
        self.variants = variants
        # validate times the module and the framework only in tests about speed (timing=on;
        # None: what the config says): a framework's timing process costs seconds per model,
        # and the record says "timing": "off" where it was off
        self.timing = timing

    def doit(self, *args: str, check: bool = True, timeout: int = 900,
             env_extra: dict | None = None) -> subprocess.CompletedProcess:
        # (doit diff and doit upgrade read records: they take neither)
        builds = not {"diff", "upgrade"} & set(args)
        if builds and self.variants and not any(a.startswith("variants=") for a in args):
            args = (*args, f"variants={self.variants}")
        if builds and self.timing and not any(a.startswith("timing=") for a in args):
            args = (*args, f"timing={self.timing}")
        env = {**without_kiln_settings(os.environ), **(env_extra or {})}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        proc = subprocess.run([sys.executable, "-m", "doit", *args], cwd=self.root, env=env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"doit {' '.join(args)} exited {proc.returncode}\n"
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def record(self, everything: bool = False) -> list[dict]:
        """The last run's tasks, less the diagnoses that had nothing to do (bisect where
        validate passed: skipped as "not needed" in every run), unless everything."""
        tasks = json.loads((self.root / "build" / "run.json").read_text())["tasks"]
        return tasks if everything else [t for t in tasks if not unneeded(t)]

    def statuses(self) -> dict[str, str]:
        return {t["task"]: t["status"] for t in self.record()}

    def write_config(self, text: str) -> None:
        (self.root / "targets.yaml").write_text(text)


def unneeded(task: dict) -> bool:
    """A diagnosing stage's task skipped because there was nothing to diagnose."""
    from pipeline.run.decide import NOT_NEEDED
    return task["status"] == "skipped" and (task.get("reason") or "").startswith(NOT_NEEDED)


@pytest.fixture
def project(tmp_path) -> Project:
    return Project(copy_project(tmp_path / "proj"))


def has_torch() -> bool:
    import importlib.util
    return importlib.util.find_spec("torch") is not None


needs_torch = pytest.mark.skipif(not has_torch(), reason="needs kiln[torch]")


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a directory on its own tmpfs of that size (real ENOSPC, and EROFS after
    read_only()), unmounted afterwards. Needs root (as on the dev and CI machines): root
    ignores file permissions, so a real read-only or full disk needs a real filesystem."""
    mounts = []

    class Disk:
        def mount(self, size: str = "1m") -> Path:
            path = tmp_path / f"disk{len(mounts)}"
            path.mkdir()
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
            mounts.append(path)
            return path

        def read_only(self, path: Path) -> None:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)

    yield Disk()
    for path in reversed(mounts):
        subprocess.run(["umount", "-l", str(path)], check=False)


NGINX_CONF = """
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 0;
    map $http_authorization $kiln_ok {{ "Bearer {token}" 1; default 0; }}
    server {{
        listen 127.0.0.1:{port};
        root {dir}/data;
        location / {{
            if ($kiln_ok = 0) {{ return 401; }}
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
"""


class CacheServer:
    """Debian's nginx with its DAV module on a loopback port: a real Bazel-HTTP-cache server
    (GET/HEAD/PUT /ac/<key>, /cas/<sha256>) checking a bearer token."""
    token = "kiln-test-token"

    def __init__(self, root: Path):
        import shutil as _shutil
        import socket
        if _shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
            pytest.skip("nginx is not installed (setup.sh installs it with apt)")
        self.dir = root
        (root / "data").mkdir(parents=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # started by root, nginx's worker would run as nobody and could not write data/
        user = "user root;\n" if os.geteuid() == 0 else ""
        (root / "nginx.conf").write_text(NGINX_CONF.format(user=user, dir=root, port=self.port,
                                                           token=self.token))
        self.proc = None
        self.start()

    def start(self) -> None:
        import socket
        import time
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([nginx, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                                      "-g", "daemon off;"], stderr=subprocess.PIPE)
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx did not start: {self.proc.stderr.read().decode()}")
            time.sleep(0.05)
        raise RuntimeError("nginx did not open its port")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def requests(self, method: str) -> int:
        """How many requests of method the server has served (kiln's, not the probes)."""
        self._settle()
        lines = (self.dir / "access.log").read_text().splitlines()
        return sum(f'"{method} /' in line and "/settle-" not in line for line in lines)

    def _settle(self) -> None:
        # nginx logs a request after answering it: a probe of our own, once logged, means
        # every earlier request is in the log (one worker, served in order)
        import time
        import urllib.request
        if self.proc is None or self.proc.poll() is not None:
            return
        probe = f"/settle-{os.urandom(4).hex()}"
        request = urllib.request.Request(self.url + probe,
                                         headers={"Authorization": f"Bearer {self.token}"})
        try:
            urllib.request.urlopen(request, timeout=5)
        except OSError:
            pass   # 404: what is wanted is the log line
        log = self.dir / "access.log"
        for _ in range(200):
            if log.exists() and probe in log.read_text():
                return
            time.sleep(0.01)

    def files(self, kind: str) -> list[Path]:
        return sorted(p for p in (self.dir / "data" / kind).glob("*") if p.is_file())

    def env(self, mode: str = "read", token: str | None = None, **extra) -> dict:
        return {"KILN_REMOTE": self.url, "KILN_REMOTE_MODE": mode,
                "KILN_REMOTE_TOKEN": token or self.token, **extra}


@pytest.fixture
def cache_server(tmp_path):
    server = CacheServer(tmp_path / "nginx")
    yield server
    server.stop()


# --- the `frameworks` matrix plus one failing model, built once per test session -----------

# a model whose op IREE cannot legalize: fails at legalize (at capture without torch)
FAILING_MODEL = ("bessel", 'FRAMEWORK = "torch"\n\ndef build():\n    import torch\n\n'
                 '    class Bessel(torch.nn.Module):\n        def forward(self, x):\n'
                 '            return torch.special.bessel_j0(x)\n\n'
                 '    return Bessel(), (torch.randn(4, 4),)\n')


@pytest.fixture(scope="session")
def frameworks_run(tmp_path_factory) -> dict:
    """One real `doit validate` of targets.yaml's `frameworks` matrix plus FAILING_MODEL, in a
    project copy (test_frameworks goes on in it; test_html reads its report.html). A model
    whose framework is not installed fails at capture, so the run itself never skips."""
    import yaml
    matrix = yaml.safe_load((REPO / "targets.yaml").read_text())["matrices"]["frameworks"]
    name, text = FAILING_MODEL
    # timed: test_html's page draws the latency chart from it
    project = Project(copy_project(tmp_path_factory.mktemp("frameworks") / "proj"), timing="on")
    (project.root / "models" / f"{name}.py").write_text(text)
    models, targets = [*matrix["models"], name], matrix["targets"]
    proc = project.doit("validate", f"model={','.join(models)}", f"target={','.join(targets)}",
                        check=False, env_extra={"KILN_REPORT_CHARTS": "on"})   # test_html draws
    build = project.root / "build"
    assert (build / "run.json").exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    # the page stays in build/ (its log links are relative) under a name later runs keep
    page = build / "report.frameworks.html"
    shutil.copyfile(build / "report.html", page)
    # and its record, which test_passrate reads as a file (test_frameworks' later runs in the
    # project write build/run.json again)
    record_file = build / "run.frameworks.json"
    shutil.copyfile(build / "run.json", record_file)
    return {"project": project, "proc": proc, "models": models, "targets": targets,
            "failing": name, "record": project.record(), "page": page,
            "record_file": record_file}


# --- models built once per session, for tests whose first build is only their setting -------

@pytest.fixture(scope="session")
def mlp_built(tmp_path_factory) -> dict:
    """`doit validate model=mlp target=cpu,vulkan` from scratch, once per session: its project
    (which tests read and copy from, never change: a run in it must find everything up to
    date), the record of that first run (its tasks; "run": its whole run.json) and what it
    printed."""
    # timed: test_pipeline checks its figures (the framework timed once for both targets)
    project = Project(copy_project(tmp_path_factory.mktemp("mlp_built") / "proj"), timing="on")
    proc = project.doit("validate", "model=mlp", "target=cpu,vulkan")
    # (its run.json and console: later runs in the project rewrite the one and lose the other)
    return {"project": project, "record": project.record(), "stdout": proc.stdout,
            "run": json.loads((project.root / "build" / "run.json").read_text())}


@pytest.fixture(scope="session")
def resnet_front(tmp_path_factory) -> Project:
    """ResNet-18 captured, imported and emitted (the stages before the first per-target one:
    half a minute on 2 cores), once per session, for tests about later stages."""
    project = Project(copy_project(tmp_path_factory.mktemp("resnet_front") / "proj"))
    project.doit("emit", "model=resnet", "target=cpu")
    return project


def seed_cache(project: Project, built: Project) -> None:
    """Give project a copy of built's cache: what built ran, project's first run restores
    (status "cached") instead of building; what differs (an edit, another target) runs."""
    shutil.copytree(built.root / "cache", project.root / "cache")


# --- two builds of the mlp whose cpu flags differ, compared -----------------------------------

# matmul inputs demoted to bf16: the mlp's outputs then differ from torch's beyond cpu's atol
BF16_FLAGS = ("    flags: [--iree-global-opt-demote-contraction-inputs-type=bf16, "
              "--iree-global-opt-demote-contraction-inputs-operations=matmul]\n")


@pytest.fixture(scope="session")
def flags_diff(tmp_path_factory, mlp_built) -> dict:
    """mlp_built's record as the baseline, and a second build of the mlp on cpu and vulkan with
    BF16_FLAGS on cpu: `doit validate ... baseline=` (the front end and vulkan come from
    mlp_built's cache; cpu's lower, codegen and validate run). Its report.html is kept as
    build/report.diff.html (test_html opens it in chromium)."""
    root = tmp_path_factory.mktemp("flags_diff")
    baseline = root / "baseline-run.json"   # (mlp_built's own run.json is rewritten by its runs)
    shutil.copyfile(mlp_built["project"].root / "build" / "run.json", baseline)
    project = Project(copy_project(root / "proj"), timing="on")   # as mlp_built: vulkan restores
    seed_cache(project, mlp_built["project"])
    shutil.copy2(REPO / "pyproject.toml", project.root / "pyproject.toml")   # doit diff's plugin
    config = project.root / "targets.yaml"
    config.write_text(config.read_text().replace("    arch: host\n", "    arch: host\n" + BF16_FLAGS, 1))
    proc = project.doit("validate", "model=mlp", "target=cpu,vulkan", f"baseline={baseline}",
                        check=False)
    build = project.root / "build"
    assert (build / "run.json").exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    page = build / "report.diff.html"
    shutil.copyfile(build / "report.html", page)
    return {"project": project, "baseline": baseline, "validate": proc, "page": page,
            "record": json.loads((build / "run.json").read_text()),
            "markdown": (build / "report.md").read_text()}


# --- a real browser for report.html (test_html, test_diff) ---------------------------------

@pytest.fixture(scope="module")
def browser():
    """Headless chromium through chromedriver, both Debian's (found on PATH, so Selenium
    Manager never goes to the network)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no chromium and chromedriver on PATH (setup.sh installs Debian's chromium "
                    "and chromium-driver with apt when it runs as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000"):
        options.add_argument(arg)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")   # chromium refuses to run as root with it
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    yield chrome
    chrome.quit()
