"""Where a project's files go: build/<model>/[<target>/]<stage>/, its logs and record entries.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..cache.remote import RemoteSettings
from ..names import SCRATCH_DIR, file_stem
from ..stage import Node

NAME_MAX = 255   # bytes in one file name (Linux's file systems, macOS's)
# what a task's longest file name adds to its file_stem: ".json" (its record entry), then
# atomic_write's temp name around it, "." + name + ".XXXXXXXX.tmp" (pipeline.cache.files)
FILE_NAME_EXTRA = len(".json") + len("." + "." + "XXXXXXXX" + ".tmp")


def room_for_model(node: Node) -> int:
    """The longest model name (in bytes) the node's files can be named after: its record
    entry's and log's names hold its stage and target besides."""
    around = len(file_stem(node.task_name).encode()) - len(node.model.encode())
    return NAME_MAX - FILE_NAME_EXTRA - around


@dataclass(frozen=True)
class Layout:
    """Where a project's files go."""
    root: Path       # the project (where targets.yaml is)
    build: Path
    cache: Path
    remote: RemoteSettings | None = None   # the shared cache behind cache/, if any

    def node_dir(self, node: Node) -> Path:
        parts = [node.model] + ([node.target] if node.target else []) + [node.stage]
        return self.build.joinpath(*parts)

    def entry_file(self, node: Node) -> Path:
        return self.build / ".kiln" / "tasks" / f"{file_stem(node.task_name)}.json"

    def scratch(self) -> Path:
        """Temp space inside build/, so installing an output is a rename, never a copy."""
        path = self.build / SCRATCH_DIR
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log_file(self, node: Node) -> Path:
        return self.build / "logs" / f"{file_stem(node.task_name)}.log"
