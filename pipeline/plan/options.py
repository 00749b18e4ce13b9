"""The command line's key=value options, parsed in one place into one typed object.

    doit validate model=mlp,resnet target=cpu variants=default shapes=x:1x3x224x224 shard=2/4
    doit validate retry=failed

doit hands kiln its `key=value` words through get_var; `read_variables` (pipeline.plan.variables)
takes them as given (what the plan memo compares and what a Dask worker is handed),
`Options.parse` checks and types them (a bad value is a ConfigError naming the option and
what is valid).
"""
from __future__ import annotations

from dataclasses import dataclass, field


def _bad(message: str) -> Exception:
    """The ConfigError for a bad option value. pipeline.stage (a third of what a no-op run
    imports of kiln, for its dataclasses) is imported only here: a no-op run reads its
    options as given and never parses them."""
    from ..stage import ConfigError
    return ConfigError(message)


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(v.strip() for v in text.split(",") if v.strip())


@dataclass(frozen=True)
class Options:
    variables: dict[str, str] = field(default_factory=dict)   # as given: for memo and workers
    config: str | None = None
    matrix: str = "default"
    models: tuple[str, ...] | None = None      # None: the matrix's
    targets: tuple[str, ...] | None = None     # None: the matrix's
    variants: tuple[str, ...] | None = None    # None: the matrix's, else every one
    shapes: dict[str, list[int]] = field(default_factory=dict)
    inputs: str | None = None
    shard: tuple[int, int] | None = None
    executor: int | str | None = None          # LocalCluster size or scheduler address
    days: float = 30.0
    retry_failed: bool = False                 # retry=failed: run remembered failures again
    timing: bool | None = None                 # None: the matrix's
    xfail: str | None = None                   # None: the matrix's
    strict: bool = False
    against: str | None = None                 # bisect's reference target (None: its choice)
    # tune=on|off|<variant>: per-dispatch tuning of llvm-cpu targets (None: targets.yaml's;
    # True: from each target's fastest validated variant), tune_budget= its seconds per model
    tune: str | bool | None = None
    tune_budget: float | None = None
    releases: tuple[str, ...] | None = None    # iree=: each target built with each release

    @classmethod
    def parse(cls, variables: dict[str, str]) -> Options:
        get = variables.get
        return cls(dict(variables), get("config"), get("matrix") or "default",
                   _names(get("model")), _names(get("target")), _names(get("variants")),
                   parse_shapes(get("shapes")), get("inputs"),
                   parse_shard(get("shard")) if get("shard") else None,
                   parse_executor(get("executor")), parse_days(get("days")),
                   parse_retry(get("retry")), parse_switch("timing", get("timing")),
                   get("xfail"), bool(parse_switch("strict", get("strict"))), get("against"),
                   parse_tune(get("tune")), parse_budget(get("tune_budget")),
                   parse_releases(get("iree")))

    def for_worker(self) -> dict[str, str]:
        """The options a Dask worker's kiln process is given: the same plan, run here."""
        return {k: v for k, v in self.variables.items()
                if k not in ("executor", "days", "xfail", "strict")}


def parse_shapes(text: str | None) -> dict:
    """'x:1x3x224x224;y:4' -> {'x': [1, 3, 224, 224], 'y': [4]}. Input names may hold ':'
    (TFLite's 'serving_default_x:0'), dims never do: split at the last one."""
    shapes = {}
    for item in filter(None, (text or "").split(";")):
        name, _, dims = item.rpartition(":")
        try:
            shapes[name.strip()] = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            raise _bad(f"shapes={text}: expected 'input:1x3x224x224;other:4'") from None
    return shapes


def parse_shard(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4): this CI job builds the second of four shards of the selection."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise _bad(f"shard={text}: expected I/N with 1 <= I <= N, e.g. shard=2/4")
    return int(index), int(count)


def parse_executor(text: str | None) -> int | str | None:
    """executor= -> None (run in the doit process) or the Dask address / LocalCluster size."""
    if not text:
        return None
    if text.startswith("local:") and text[6:].isdigit() and int(text[6:]) > 0:
        return int(text[6:])
    if text.startswith("tcp://"):
        return text
    raise _bad(f"executor={text}: expected local:N (a LocalCluster of N worker "
                      "processes) or tcp://host:port (an existing Dask scheduler)")


def parse_retry(text: str | None) -> bool:
    """retry=failed -> True: the stages whose failure is remembered run again."""
    if text is None or text == "":
        return False
    if text.strip() != "failed":
        raise _bad(f"retry={text}: expected retry=failed (run again the stages whose failure "
                   "with the same key is remembered)")
    return True


SWITCH = {"on": True, "1": True, "true": True, "yes": True,
          "off": False, "0": False, "false": False, "no": False}


def parse_switch(name: str, text: str | None) -> bool | None:
    """timing=off, strict=1: on/off, 1/0, true/false, yes/no (None when not given)."""
    if text is None:
        return None
    if text.strip().lower() not in SWITCH:
        raise _bad(f"{name}={text}: expected on or off (or 1/0, true/false, yes/no)")
    return SWITCH[text.strip().lower()]


def parse_tune(text: str | None) -> str | bool | None:
    """tune=on / off (a switch), or tune=<variant>: tune starting from that variant's flags."""
    if text is None or text.strip().lower() in SWITCH:
        return parse_switch("tune", text)
    if not text.strip():
        raise _bad("tune=: expected on, off or a variant's name (e.g. tune=im2col-mmt4d)")
    return text.strip()


def parse_budget(text: str | None) -> float | None:
    try:
        budget = None if text is None else float(text)
    except ValueError:
        budget = -1.0
    if budget is not None and not 0 < budget < float("inf"):
        raise _bad(f"tune_budget={text}: expected the seconds a model's tuning may take (> 0)")
    return budget


def parse_releases(text: str | None) -> tuple[str, ...] | None:
    """iree=3.12.0,3.13.0 -> ('3.12.0', '3.13.0')."""
    if text is None:
        return None
    from .config import check_releases
    return check_releases(list(_names(text)), f"iree={text}")


def parse_days(text: str | None) -> float:
    try:
        return float(text if text is not None else 30)
    except ValueError:
        raise _bad(f"days={text}: expected a number of days") from None
