"""`doit help <task>`: what a kiln task builds, the stages it runs, and every key=value option
it takes, with an example.

doit's own help of a task prints the first line of its doc and its doit `params` (options
given as --name=value); kiln's tasks have none of those: kiln reads its options as doit's
command-line variables, key=value (pipeline.plan.variables), which doit's help cannot know.
So this replaces doit's `help` command, as a command plugin (pyproject.toml,
[tool.doit.plugins.command], as `doit explain` is): `doit help` alone, `doit help run` and
help on a task of a dodo.py that is not kiln's stay doit's.

    doit help validate        what validate builds, its stages, its options, an example
    doit help lower:mlp@cpu   the same for one task
"""
from __future__ import annotations

import textwrap

from doit.cmd_help import Help as DoitHelp

from ..names import base_target
from ..plan.variables import ONLY_FOR, VARIABLES

WIDTH = 100   # the width options' help text is wrapped at
NAME = "doit"  # (doit's bin_name is "-m" under python -m doit)


class Help(DoitHelp):
    def print_usage(self, cmds):
        super().print_usage(cmds)
        print(f"\nkiln: {NAME} help <task> lists the key=value options a task takes, e.g. "
              f"{NAME} help validate")

    def _execute(self, pos_args):
        session = self.loader.namespace.get("SESSION")   # kiln's dodo.py has one
        tasks = {t.name: t for t in self.task_list}
        task = tasks.get(pos_args[0])
        if session is None or task is None:
            return super()._execute(pos_args)
        stage_docs = {stage.name: stage.doc for stage in session.plan().stages}
        print("\n".join(describe(task, tasks, stage_docs)))
        return True


def describe(task, tasks: dict, stage_docs: dict[str, str]) -> list[str]:
    """The help of one of kiln's tasks (doit's Task; tasks: every task by name; stage_docs:
    each stage's doc, in pipeline order)."""
    lines = [f"{task.name}  {task.doc}".rstrip(), ""]
    members = _stage_tasks(task, tasks)
    held = {t.meta["kiln"]["stage"] for t in members}
    stages = [s for s in stage_docs if s in held]
    if stages and [task.doc] != [stage_docs[s] for s in stages]:
        width = max(map(len, stages))
        lines += [f"  {s:<{width}}  {stage_docs[s]}".rstrip() for s in stages]
        lines += ["  (after the stages they need, each restored from the cache where it can be)",
                  ""]
    lines += [f"usage: {NAME} {task.name} [key=value ...]",
              f"  e.g. {NAME} {task.name}{_example(task, members)}", "",
              "options (key=value, anywhere on the command line):"]
    options = options_of(task.name)
    width = max(map(len, options)) + 1
    for name in options:
        lines += textwrap.wrap(VARIABLES[name], WIDTH, initial_indent=f"  {name + '=':<{width}}  ",
                               subsequent_indent=" " * (width + 4))
    return lines


def options_of(task: str) -> list[str]:
    """The options a task reads: a task some options are only for (prune) reads those only;
    every other task every option but those."""
    only = [name for name, tasks in ONLY_FOR.items() if task in tasks]
    if only:
        return only
    return [name for name in VARIABLES if name not in ONLY_FOR]


def _stage_tasks(task, tasks: dict) -> list:
    """The stage tasks a task is or holds (a group: its members), in plan order."""
    if (task.meta or {}).get("kiln"):
        return [task]
    return [tasks[name] for name in task.task_dep
            if name in tasks and (tasks[name].meta or {}).get("kiln")]


def _example(task, members: list) -> str:
    """The options of an example run of the task: a model and target it holds."""
    if not members:   # (prune)
        return " days=7" if "days" in options_of(task.name) else ""
    if members == [task]:
        return " retry=failed"
    info = members[0].meta["kiln"]
    target = next((base_target(m.meta["kiln"]["target"]) for m in members
                   if m.meta["kiln"]["target"]), None)
    return f" model={info['model']}" + (f" target={target}" if target else "")
