"""What the stages' hooks say about a model file at plan time, remembered by the file's stat.

Making the plan asks the stages about each model file named by path: which framework reads
it (detect) and which files it brings along (companions: an ONNX model's external data and
test data). An answer may read the whole file (the ONNX hook parses the protobuf: seconds for
a 1 GB model with its weights inline), and the plan is made again whenever a stage runs or
the plan memo is stale. So each answer is kept in build/.kiln/model-facts.json with what it
was made from, and the hook is asked again only when that changed:

- the model file (or directory): its size and mtime_ns;
- each companion it named: size and mtime_ns;
- the directory holding the model and each companion: the names in it (a file appearing
  beside the model, e.g. a test-data set), compared only when the directory's mtime moved.

A folder of models (model=DIR, a matrix's `suite:`) is scanned once the same way: the list
of models found is kept while every directory looked in keeps its stat.

The engine knows nothing of what a hook reads beyond these: every framework's hooks go
through here alike. Errors are never remembered. A failed write (a read-only build/) only
means asking again next time.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from ..cache.files import atomic_write, read_only, stat_of

FORMAT = 1
FACTS_FILE = "model-facts.json"   # in build/.kiln/
PATH_TYPE = type(Path())   # (what Path(text) makes here: PosixPath)
FACTS_ENV = "KILN_MODEL_FACTS"    # "0": ask every hook every time (a check that this is not wrong)


def _listing(directory: str) -> str | None:
    """A digest of the names a directory holds (not their content)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return None
    return hashlib.sha256("\0".join(names).encode()).hexdigest()


def evidence(path: str | Path, named: list[str | Path]) -> dict:
    """What an answer about path that names these files was made from (see the docstring)."""
    files = [str(path), *(str(p) for p in named)]
    dirs = sorted({os.path.dirname(f) for f in files})
    return {"files": {f: stat_of(f) for f in files},
            "dirs": {d: [stat_of(d), _listing(d)] for d in dirs}}


def holds(made_from: dict) -> bool:
    """Whether everything an answer was made from is as it was."""
    if any(stat_of(f) != st for f, st in made_from["files"].items()):
        return False
    for directory, (st, names) in made_from["dirs"].items():
        if stat_of(directory) != st and _listing(directory) != names:
            return False
    return True


class ModelFacts:
    """The remembered answers of one plan: loaded once, asked through detect() and
    companions(), what changed written by save(). path None: nothing remembered (every hook
    asked), as KILN_MODEL_FACTS=0 asks."""

    def __init__(self, path: Path | None):
        self.path = None if os.environ.get(FACTS_ENV) == "0" else path
        self.entries = self._load()
        self.changed = False

    def _load(self) -> dict:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_bytes())
            return dict(data["entries"]) if data.get("format") == FORMAT else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}   # absent or damaged: every hook is asked, the file written again

    def answer(self, hook: str, path: str | Path, ask: Callable[[], object],
               named: Callable[[object], list[str | Path]] = lambda answer: []):
        """ask()'s answer (JSON data) about the file at path, remembered under hook while
        what it was made from holds; named(answer): the files the answer names (as text: a
        Path made for each was a tenth of a folder's facts)."""
        path = os.path.abspath(path)   # (as str(Path(...)) writes it: abspath normalizes)
        key = f"{hook} {path}"
        found = self.entries.get(key)
        try:
            if found is not None and holds(found["made_from"]):
                return found["answer"]
        except (KeyError, TypeError, ValueError, AttributeError):
            pass   # a damaged entry: asked again
        answer = ask()   # (an error is raised, never remembered)
        self.entries[key] = {"path": path, "answer": answer,
                             "made_from": evidence(path, named(answer))}
        self.changed = True
        return answer

    def detect(self, detect: Callable[[Path], str | None]) -> Callable[[Path], str | None]:
        """detect, asked only when the file changed."""
        return lambda path: self.answer("detect", path, lambda: detect(path))

    def companions(self, companions: Callable[[str, Path], dict[str, Path]]
                   ) -> Callable[[str, Path], dict[str, Path]]:
        """companions, asked only when the file or what it named changed."""
        def remembered(framework: str, path: Path) -> dict[str, Path]:
            asked: dict[str, Path] = {}

            def ask() -> dict[str, str]:
                asked.update(companions(framework, path))
                return {r: str(p) for r, p in asked.items()}

            roles = self.answer(f"companions:{framework}", path, ask,
                                lambda roles: list(roles.values()))
            if asked:   # (asked now: the hook's own Paths, not each made again from its text)
                return {role: p if type(p) is PATH_TYPE else Path(p) for role, p in asked.items()}
            return {role: Path(p) for role, p in roles.items()}
        return remembered

    def folder(self, scan: Callable[[Path], dict]) -> Callable[[Path], dict]:
        """scan (pipeline.plan.models.scan_folder), asked again only when a directory it
        looked in changed (an entry added, removed or renamed moves a directory's mtime)."""
        return lambda path: self.answer("folder", path, lambda: scan(path),
                                        lambda found: found["dirs"])

    def save(self) -> None:
        """Write the answers when one is new (not in read-only mode), without those about
        files that are gone: the file holds what this project's plans still ask."""
        if not self.changed or self.path is None or read_only():
            return
        kept = {key: entry for key, entry in self.entries.items()
                if isinstance(entry, dict) and os.path.exists(str(entry.get("path")))}
        _write_facts(self.path, {"format": FORMAT, "entries": kept})
        self.changed = False


def _write_facts(path: Path, data: dict) -> None:
    try:
        # (no indent: json then writes with its C encoder, 4 MB for a 2,000-case suite)
        atomic_write(path, json.dumps(data, sort_keys=True, separators=(",", ":")).encode())
    except OSError:
        pass   # a full or read-only build/: the hooks are asked again next time, never wrongly
