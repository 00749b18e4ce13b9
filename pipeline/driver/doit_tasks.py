"""doit's Task objects for kiln's task specs, made as doit 0.37's loader makes them from task
dicts (doit.loader.generate_tasks), for two thirds of the cost.

A 2,000-case plan hands doit 20,000 stage tasks; from dicts, doit checks every field of each
against its table of valid types and values (19 checks a task) and then builds the Task:
0.25 s, an eighth of a cold plan and half of a run from the plan memo (docs/DESIGN.md
§10.6). A stage task is plain data of known types, so it is made here from the attributes
doit's own constructor gives a bare Task, with its fields set as that constructor sets them;
a Task is its attributes (doit restores one sent to a worker process from them:
Task.update_from_pickle). tests/test_memo.py checks that each task made here equals the one
doit makes of the dict.
"""
from __future__ import annotations

import copy

from doit.task import IOConfig, Task, dict_to_task, first_line

# the fields of a task dict made here; a dict with any other is left to doit
FIELDS = frozenset({"basename", "name", "actions", "uptodate", "file_dep", "task_dep", "targets",
                    "doc", "meta"})

# the attributes _task sets for each task
SET_PER_TASK = frozenset({"name", "_actions", "file_dep", "task_dep", "wild_dep", "targets",
                          "uptodate", "doc", "meta", "subtask_of"})


class TaskMaker:
    """doit's tasks for the task dicts of one generator (task_stages), in the order it yields
    them: a dict of a task within a group (a name that is not None) whose fields are all in
    FIELDS is made a Task here (its lists holding str, as the plan's specs do: they are
    marshal's plain data), a group (name None) too, as each task made here joins its group's
    task_dep as doit's loader adds it; any other dict is handed to doit as it is."""

    def __init__(self):
        # a bare Task's attributes, as doit's constructor sets them: the immutable ones
        # shared, the containers (and IOConfig) made anew for each task
        bare = vars(Task("bare", None))
        self.shared = {k: v for k, v in bare.items()
                       if v is None or isinstance(v, (bool, int, str, tuple))}
        # (less those every task sets below)
        self.containers = [(k, v) for k, v in bare.items() if k not in self.shared
                           and k not in SET_PER_TASK and isinstance(v, (list, dict, set))]
        self.objects = [(k, v) for k, v in bare.items()
                        if k not in self.shared and not isinstance(v, (list, dict, set))]
        self.groups: dict[str, Task] = {}

    def make(self, fields: dict) -> Task | dict:
        if "name" not in fields or not FIELDS.issuperset(fields):
            return fields
        if fields["name"] is None:
            return self._group(fields)
        return self._task(fields)

    def _group(self, fields: dict) -> Task:
        """As doit's loader makes a group from a dict whose name is None."""
        basename = fields["basename"]
        task = dict_to_task({**{k: v for k, v in fields.items() if k != "basename"},
                             "name": basename, "actions": None})
        task.has_subtask = True
        self.groups[basename] = task
        return task

    def _task(self, fields: dict) -> Task | dict:
        """As doit.task.dict_to_task makes basename:name, joined to its group."""
        basename = fields["basename"]
        group = self.groups.get(basename)
        checks = fields.get("uptodate", ())
        if group is None or not all(callable(c) and not hasattr(c, "configure_task")
                                    for c in checks):
            return fields   # (a group doit's loader makes, a check it configures: left to it)
        task = Task.__new__(Task)
        attrs = task.__dict__
        attrs.update(self.shared)
        for key, empty in self.containers:
            attrs[key] = empty.copy()
        for key, value in self.objects:   # (IOConfig: made as doit makes it, copy.copy is slow)
            attrs[key] = IOConfig({"capture": value.capture}) if type(value) is IOConfig \
                else copy.copy(value)
        name = f"{basename}:{fields['name']}"
        task_dep = fields.get("task_dep", ())   # (as Task._expand_task_dep)
        attrs.update(name=name, _actions=list(fields["actions"]),
                     file_dep=set(fields.get("file_dep", ())),
                     task_dep=[d for d in task_dep if "*" not in d],
                     wild_dep=[d for d in task_dep if "*" in d],
                     targets=list(fields.get("targets", ())),
                     uptodate=[(check, [], {}) for check in checks],
                     doc=first_line(fields.get("doc")), meta=fields.get("meta"),
                     subtask_of=basename)
        group.task_dep.append(name)
        return task
