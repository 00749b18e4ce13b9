"""kiln's doit entry point: read the command line, ask pipeline/ for the tasks.

    doit compile model=resnet target=vulkan   # build what is missing, nothing else
    doit validate model=mlp target=cpu,vulkan
    doit                                       # the default matrix: compile, validate, report
"""
from pathlib import Path

from doit import get_var

from pipeline import process
from pipeline.driver.session import Session

HERE = Path(__file__).parent


def make_plan(variables: dict[str, str]):
    """The whole plan (models, targets, graph) of the command line's key=value options: made
    only when the plan memo is stale or a stage has to run, so these imports stay out of a
    no-op run."""
    import stages
    from pipeline.plan.options import Options
    from pipeline.plan.tasks import make_plan
    # (a ConfigError stops the run in SESSION.plan, with a failed-run record)
    return make_plan(Options.parse(variables), stages.pipeline(), stages.detect, stages.resolve_target,
                     [HERE / "models"], companions=stages.companions)


# Ctrl-C and SIGTERM kill every tool kiln started, then end the run as doit ends one on a
# KeyboardInterrupt: its database saved, the stopped run's record written
process.stop_on_signals()
SESSION = Session(get_var, make_plan, [HERE / "dodo.py", HERE / "pipeline", HERE / "stages"])
DOIT_CONFIG = SESSION.doit_config()


def task_stages():
    yield from SESSION.tasks()
