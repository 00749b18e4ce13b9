"""How a stage, the plan or a tool says it failed: the exceptions the engine and stages/
share. Their own module, of nothing but them: what every run imports (the process runner's
timeout and stop are StageErrors) costs no dataclass of the stage contract."""
from __future__ import annotations


class ConfigError(Exception):
    """Bad configuration or command-line value; the message is meant for the user as is."""


class StageError(Exception):
    """A stage failed for a reason the user must see: the record and the log carry the
    message, the command that failed (if any) and a result (e.g. the numbers that were off).

    A StageError is a verdict on the stage's inputs, remembered under its key (the next run
    reports it without running the stage: pipeline.run.decide.not_a_verdict), unless it
    says otherwise: exit_code, the status a tool exited with (one killed by a signal is no
    verdict), or transient, why this failure may not recur (a lost device)."""

    def __init__(self, message: str, command: str | None = None, result: dict | None = None,
                 log: str = "", exit_code: int | None = None, transient: str | None = None):
        super().__init__(message)
        self.command = command
        self.result = result
        self.log = log
        self.exit_code = exit_code
        self.transient = transient


class StageSkipped(Exception):
    """The stage cannot run here (e.g. no device for its driver); not a failure, never cached."""
