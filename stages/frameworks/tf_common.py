"""What the TensorFlow and TFLite adapters share: TensorFlow loaded quietly, absl's log handler
kept off doit's captured stderr, and a tf.Module's entry function."""
from __future__ import annotations

import functools
import os
import sys

from pipeline.stage import StageError


def load_tf():
    """TensorFlow, its C++ start-up logging (warnings and info) kept quiet."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    return tf


def _absl_stream_fix() -> None:
    """TF's absl log handler keeps the sys.stderr of the moment it was created: under doit that
    is the task's capture object, which absl tries (and fails) to close at exit. Point it at the
    process's real stderr instead."""
    absl_logging = sys.modules.get("absl.logging")
    if absl_logging is not None:
        handler = absl_logging.get_absl_handler().python_handler
        if handler.stream not in (sys.__stderr__, sys.__stdout__):
            handler.stream = sys.__stderr__


def absl_safe(method):
    """Run a TF-loading adapter method, then put absl's log handler back on the real stderr."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        finally:
            _absl_stream_fix()
    return wrapper


def entry_function(module, name: str):
    """(attribute name, tf.function) of the function to export: __call__ if there are several."""
    candidates = {}
    for attr in dir(type(module)):
        value = getattr(module, attr, None)
        if getattr(value, "input_signature", None) is not None:
            candidates[attr] = value
    if "__call__" in candidates:
        return "__call__", candidates["__call__"]
    if len(candidates) != 1:
        raise StageError(f"model {name}: the tf.Module needs exactly one tf.function with an "
                         f"input_signature (or one named __call__); found "
                         f"{', '.join(sorted(candidates)) or 'none'}")
    return next(iter(candidates.items()))
