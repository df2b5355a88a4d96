"""What a stage failure means: retry it, or report its cause in one line.

A Ray worker that died (preemption, OOM kill, a lost node) is worth a bounded retry. Anything
deterministic is not: an exception raised by the stage's code, or an actor whose constructor
raised (a model folder vLLM cannot load fails the same way every time, and Ray reports that
as a dead actor too, flagged `actor_init_failed`).

The one-line summary names the exception that started it, as `Type: first line`: through
Ray's wrappers to the user's exception, and, where only a remote traceback's text is left,
its last exception line, skipping pydantic's "For further information visit <url>" trailer.
"""

import re


class DeadEnd(ValueError):
    """A stage failure that running again cannot fix: the data or the recipe must change (a
    judge that ties every comparison leaves no pairs to train on). The run stops with one line
    that says what to change, exit code 2, and no advice to resume."""

# "ValueError: ...", "pydantic_core._pydantic_core.ValidationError: ...", "RayTaskError(ValueError): ..."
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt))(?:\([\w.]*\))?: "
                            r"(.*)$")
PYDANTIC_HEAD = re.compile(r"^\d+ validation errors? for ")
NOISE = re.compile(r"^\s*(For further information visit |$)")


def is_worker_failure(error: BaseException) -> bool:
    """A dead actor or worker process, not one whose constructor raised: worth a bounded retry."""
    import ray.exceptions

    if isinstance(error, ray.exceptions.RayActorError) and error.actor_init_failed:
        return False
    return isinstance(error, (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                              ray.exceptions.NodeDiedError))


def error_summary(error: BaseException) -> str:
    """'Type: message' of the exception that caused `error`, on one line."""
    import ray.exceptions

    while isinstance(error, ray.exceptions.RayTaskError) and isinstance(error.cause, BaseException) \
            and error.cause is not error:
        error = error.cause
    lines = str(error).splitlines()
    name = type(error).__name__
    if isinstance(error, ray.exceptions.RayError) or any(line.startswith("Traceback (most recent") for line in lines):
        for index in range(len(lines) - 1, -1, -1):  # a remote traceback as text: its last exception line
            match = EXCEPTION_LINE.match(lines[index])
            if match:
                name, lines = match.group(1), [match.group(2), *lines[index + 1:]]
                break
    meaningful = [line.strip() for line in lines if not NOISE.match(line)]
    if not meaningful:
        return name
    message = meaningful[0]
    if PYDANTIC_HEAD.match(message) and len(meaningful) > 1:
        message = _pydantic_detail(meaningful[1:])
    return f"{name}: {message}"


def _pydantic_detail(lines: list[str]) -> str:
    """A pydantic error's first entry, '<field>: <message>' without its [type=...] suffix."""
    entry = []
    for line in lines:
        entry.append(re.sub(r"\s*\[type=.*$", "", line).removeprefix("Value error, "))
        if "[type=" in line:
            break
    return ": ".join(part for part in entry if part)
