"""kiln's doit entry point: read the command line, ask pipeline/ for the tasks.

    doit compile model=resnet target=vulkan   # build what is missing, nothing else
    doit validate model=mlp target=cpu,vulkan
    doit                                       # the default matrix: compile, validate, report
"""
import signal
import sys
from pathlib import Path

from doit import get_var

import stages
from pipeline.config import ConfigError
from pipeline.record import write_failed_run
from pipeline.tasks import doit_config, group_tasks, make_plan, prune_task, stage_tasks


def _interrupt(signum, frame):
    # doit saves its database only at the end of a run; a KeyboardInterrupt lets it save
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, _interrupt)

try:
    PLAN = make_plan(get_var, stages.pipeline(), stages.detect, stages.resolve_target,
                     [Path(__file__).parent / "models"], companions=stages.companions)
except ConfigError as err:
    write_failed_run(Path.cwd() / "build" / "run.json", str(err))   # never leave a stale record
    sys.exit(f"kiln: {err}")

DOIT_CONFIG = doit_config(PLAN)


def task_stages():
    yield from stage_tasks(PLAN)
    yield from group_tasks(PLAN)
    yield from prune_task(PLAN, get_var("days"))
