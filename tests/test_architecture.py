"""The engine's shape, checked so it stays true: pipeline/ is a stack of packages, each
importing only from those below it, with no import circle anywhere, and none of it imports a
stage, a framework or IREE (those come through stages/)."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PIPELINE = Path(__file__).resolve().parent.parent / "pipeline"
# bottom first: the shared words (statuses, roles, kinds), the contract with stages/, the name
# syntax and how a process is started, then content addressing, the plan, running a stage,
# what a person reads, and doit's side
LAYERS = ["pipeline.errors", "pipeline.vocab", "pipeline.stage", "pipeline.names",
          "pipeline.process", "pipeline.cache", "pipeline.plan", "pipeline.run", "pipeline.report",
          "pipeline.driver"]
LEVEL = {"pipeline.errors": 0, "pipeline.vocab": 0, "pipeline.stage": 0, "pipeline.names": 0,
         "pipeline.process": 0, "pipeline.cache": 1,
         "pipeline.plan": 2, "pipeline.run": 3, "pipeline.report": 4, "pipeline.driver": 5}
FOREIGN = ("stages", "models", "torch", "jax", "tensorflow", "onnx", "onnxruntime", "iree")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PIPELINE.rglob("*.py"):
        parts = path.relative_to(PIPELINE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Every module name an import in path names (top level and inside functions alike)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names


def _graph() -> nx.DiGraph:
    modules = _modules()
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        for imported in _imports(name, path):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                graph.add_edge(name, imported)
    return graph


def _layer(module: str) -> str:
    return next(layer for layer in LAYERS if module == layer or module.startswith(layer + "."))


def test_every_engine_module_is_in_a_layer():
    loose = [m for m in _modules() if m != "pipeline" and not any(
        m == layer or m.startswith(layer + ".") for layer in LAYERS)]
    assert not loose, f"modules outside the engine's packages: {loose}"


def test_no_import_circles():
    cycles = list(nx.simple_cycles(_graph()))
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c + c[:1]) for c in cycles)


def test_imports_flow_down_the_layers_only():
    upward = [f"{a} imports {b}" for a, b in _graph().edges
              if a != "pipeline" and b != "pipeline" and LEVEL[_layer(b)] > LEVEL[_layer(a)]]
    assert not upward, "imports from a higher layer: " + "; ".join(upward)


def test_the_engine_imports_no_stage_framework_or_compiler():
    offending = [f"{name} imports {imported}" for name, path in _modules().items()
                 for imported in _imports(name, path) if imported.split(".")[0] in FOREIGN]
    assert not offending, offending


def test_each_package_says_what_it_owns():
    for package in ("cache", "plan", "run", "report", "driver"):
        init = PIPELINE / package / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) if init.exists() else None
        assert doc and len(doc.splitlines()) <= 4, f"pipeline/{package}/__init__.py: {doc!r}"


REPO = PIPELINE.parent
# kiln's own code: whose names another module of kiln may import only when they are public
OWN_TREES = ("pipeline", "stages", "models", "benchmarks", "tests")


def _own_modules() -> set[str]:
    """The bare and dotted names kiln's own modules are imported by (benchmarks and tests
    import their siblings by file name)."""
    names = set()
    for tree in OWN_TREES:
        for path in (REPO / tree).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            names |= {".".join(parts), path.stem}
    return names


def test_no_module_imports_another_modules_private_names():
    """A name with a leading underscore is its module's own: what another module needs is
    made public where it lives (stages/runtime.py: the runtime calls validate, bisect and
    the benchmarks share)."""
    own = _own_modules()
    offending = []
    for tree in OWN_TREES:
        for path in (REPO / tree).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.level or node.module in own):
                    offending += [f"{path.relative_to(REPO)}:{node.lineno} imports "
                                  f"{node.module or '.'}.{alias.name}" for alias in node.names
                                  if alias.name.startswith("_") and alias.name != "__version__"]
    assert not offending, offending


VOCABULARY = {"pipeline/vocab.py": ("Status", "Role", "Kind")}
# a word that is a member's value but means something else where it is written
NOT_VOCABULARY = {
    ("pipeline/report/junit.py", "skipped"): "JUnit XML's <skipped> element and attribute",
    ("pipeline/plan/options.py", "xfail"): "the xfail= option's name",
    ("pipeline/plan/options.py", "failed"): "retry=failed: the retry= option's value",
    ("pipeline/report/diff.py", "xfail"): "a record row's xfail field, among its field names",
    ("pipeline/report/timesplit.py", "ran"): "the stage-times column of the tasks that ran",
}


def _vocabulary() -> dict[str, set[str]]:
    """Each vocabulary word (a Status, Role or Kind value) -> the modules that may spell it."""
    import importlib
    import sys
    sys.path.insert(0, str(REPO))
    words: dict[str, set[str]] = {}
    for rel, enums in VOCABULARY.items():
        module = importlib.import_module(rel.removesuffix(".py").replace("/", "."))
        for name in enums:
            for member in getattr(module, name):
                words.setdefault(member.value, set()).add(rel)
    return words


def _field_names(tree: ast.AST) -> set[int]:
    """The string constants that name a field, not a value: a dict key, a subscript, the key
    .get/.pop/.setdefault takes, a docstring ("failed" the field of a row, "failed" its kind)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            names |= {id(k) for k in node.keys if k is not None}
        elif isinstance(node, ast.Subscript):
            names.add(id(node.slice))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("get", "pop", "setdefault") and node.args:
            names.add(id(node.args[0]))
        elif isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = node.body[0] if node.body else None
            if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
                names.add(id(doc.value))
    return names


def test_statuses_roles_and_kinds_are_spelled_by_their_enums_only():
    """A status, role or row kind is written as its enum's member (pipeline.vocab's Status,
    Role, Kind) everywhere but where the enum is defined: a typo is
    then an AttributeError, and a reader finds every use by name."""
    words = _vocabulary()
    offending = []
    for tree in ("pipeline", "stages"):
        for path in sorted((REPO / tree).rglob("*.py")):
            rel = str(path.relative_to(REPO))
            parsed = ast.parse(path.read_text())
            fields = _field_names(parsed)
            offending += [f"{rel}:{node.lineno} {node.value!r}" for node in ast.walk(parsed)
                          if isinstance(node, ast.Constant) and node.value in words
                          and rel not in words[node.value] and id(node) not in fields
                          and (rel, node.value) not in NOT_VOCABULARY]
    assert not offending, "spelled as strings:\n" + "\n".join(offending)
