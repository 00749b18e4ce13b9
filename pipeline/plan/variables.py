"""The command line's key=value options as given: every option kiln reads, and what doit
handed in through get_var (what the plan memo compares and what a Dask worker is handed).

Apart from pipeline.plan.options (which types them) because a no-op run needs only this: the
Options dataclass costs more to define than the rest of what the run reads here.
"""
from __future__ import annotations

from typing import Callable, Iterable

# every option kiln reads, with what it does (for `doit help`, errors and the plan memo)
VARIABLES = {
    "config": "the configuration file (default: targets.yaml, or KILN_CONFIG)",
    "matrix": "a matrix of targets.yaml (default: 'default')",
    "model": "models by name, comma-separated, 'all', or a path to a model file or a folder of them",
    "target": "targets by name, comma-separated, or 'all'",
    "variants": "the flag variants to try, e.g. variants=default (default: every variant)",
    "shapes": "input shapes, e.g. shapes=x:1x3x224x224;y:4",
    "inputs": "the one selected model's inputs: a .npz or .npy file",
    "shard": "build the I-th of N shards of the selection, e.g. shard=2/4",
    "executor": "run stages on Dask: local:N (a LocalCluster) or tcp://host:port",
    "against": "the target bisect compares a failing target's build with (default: the "
               "first llvm-cpu or vmvx target declared whose build matches the framework)",
    "retry": "retry=failed: run again the stages whose failure with the same key is "
             "remembered (otherwise reported as 'failed (cached)' without running)",
    "days": "doit prune: drop cache entries unused for this many days (default 30)",
    "timing": "timing=off: validate checks the numbers, timing neither module nor framework "
              "(default: the matrix's timing:, else on)",
    "xfail": "a YAML file of expected failures, {target: {model: reason}} ('*': any target)",
    "strict": "strict=1: a listed expected failure that passes fails the run too",
    "tune": "tune=on: add each llvm-cpu target's 'tuned' variant (its dispatches' tiles "
            "searched, from its fastest validated variant; tune=<variant> from that one's "
            "flags); tune=off: none (default: targets.yaml's tune:)",
    "tune_budget": "seconds a model's tuning may take, its builds included (default 600)",
    "iree": "IREE releases to build each target with, comma-separated, e.g. iree=3.12.0,3.13.0 "
            "(each provisioned once into the cache; default: the matrix's iree:, else the "
            "release kiln is installed with); the run then says what changed from the oldest "
            "to the newest (doit upgrade)",
    "baseline": "an earlier run's run.json or build directory: the run's reports (and doit "
                "diff) say which model x target changed outcome, error or speed since it",
    "factor": "with baseline=: how many times an error against its tolerance must grow (or "
              "shrink) to count as a change (default 2)",
}
# options only the run's reports read (pipeline.report.diff): no part of the plan, so a new
# baseline neither makes the plan again nor reaches a Dask worker
REPORT_ONLY = ("baseline", "factor")

# the options only some tasks read (every other option is read by every stage's tasks): what
# `doit help <task>` lists (pipeline.driver.cmd_help)
ONLY_FOR = {"days": ("prune",)}


def read_variables(get_var: Callable[[str], str | None]) -> dict[str, str]:
    """The options given on the command line, as given (an absent one is left out)."""
    return {name: value for name in VARIABLES if (value := get_var(name)) is not None}


def plan_variables(variables: dict[str, str]) -> dict[str, str]:
    """The options the plan is made from: all but REPORT_ONLY."""
    return {name: value for name, value in variables.items() if name not in REPORT_ONLY}


def given_variables() -> dict[str, str]:
    """Every key=value word of the command line, kiln's or not. doit keeps them in a module
    global and get_var answers only for a name asked: a misspelt one is never asked for."""
    from doit import doit_cmd
    return dict(doit_cmd._CMDLINE_VARS or {})


def refuse_unknown(given: dict[str, str], known: Iterable[str] = tuple(VARIABLES),
                   usage: str | None = None) -> None:
    """A ConfigError for the first option given that is not known (`tragets=cpu` would
    otherwise build the default matrix and pass), naming the nearest known one, and the
    usage (None: every option kiln reads)."""
    known = list(known)
    unknown = [name for name in given if name not in known]
    if not unknown:
        return
    import difflib

    from ..stage import ConfigError
    name = unknown[0]
    nearest = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {nearest[0]}=?)" if nearest else ""
    usage = usage or (f"kiln's options: {', '.join(known)} (doit help <task> says what each "
                      "does)")
    raise ConfigError(f"unknown option {name}={given[name]}{hint}; {usage}")
