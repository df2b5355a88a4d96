"""`annotate.type: function`: a user's Python scoring function `fn(prompt, response) -> number`.

`prompt` is the prompt as the recipe gives it: a string, or for conversations the list of
{role, content} messages (the last one the user turn the response answers).

The contract: fn returns a real number (int, float, or a numpy integer/floating scalar); a
bool, NaN, inf or anything else is refused with one line naming the prompt and response.
Only the order and spread of the scores matter (annotate.temperature: auto).

The function runs in a child process (`python -m selfplay.judging.function`, with the
driver's sys.path and working directory, so it imports what the driver imports), one per
judge, fed one prompt at a time over a pipe. A call that runs past
`annotate.timeout_seconds` is ended by killing that process, which works whatever the function
is stuck in (a C loop holding the GIL, a lock, a blocking read). A thread could not do that: a
stuck thread cannot be stopped, and one that holds the GIL stalls the driver too. The child is
a plain subprocess, not multiprocessing's spawn, which would re-run the driver's main script.
The cost is one process start per run (numpy and the user's module, well under a second) and a
pipe round trip per prompt; the function cannot see state set up in the driver.
"""

import importlib
import math
import numbers
import os
import signal
import subprocess
import sys
import traceback
from multiprocessing.connection import Connection

import numpy as np

from selfplay.judging.base import Judge, JudgeTimeout, Judgment, ScoreError


class RemoteTraceback(Exception):
    """The scoring function's own traceback, chained to the error the driver raises."""


def check_score(value, spec: str, response_index: int) -> float:
    """A finite real number as float, else ScoreError (bool is refused: True is not a score)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ScoreError(f"annotate.function {spec} returned {value!r} ({type(value).__name__}) for response "
                         f"{response_index}; it must return a finite real number (int, float or a numpy scalar; "
                         f"not bool, NaN or inf)")
    return float(value)


def _serve(spec: str, requests: Connection, replies: Connection) -> None:
    """The child process: say ready, then score (prompt, responses) messages until None arrives.
    (The import mirrors selfplay.judging.registry.load_function, which the driver has already run
    on this spec; importing the recipe module here would load torch for nothing.)"""
    # A terminal's Ctrl-C reaches the whole process group: the driver stops this process itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    module_name, attr = spec.split(":", 1)
    fn = getattr(importlib.import_module(module_name), attr)
    replies.send(("ready",))
    while True:
        try:
            message = requests.recv()
        except EOFError:  # the driver is gone (killed): nothing is waiting for a score
            return
        if message is None:
            return
        prompt, responses = message
        try:
            replies.send(("ok", [check_score(fn(prompt, response), spec, k) for k, response in enumerate(responses)]))
        except ScoreError as error:
            replies.send(("error", str(error), ""))
        except Exception as error:  # the user's code failed: the driver fails the stage with it
            replies.send(("error", f"annotate.function {spec} raised {type(error).__name__}: {error}",
                          traceback.format_exc()))


class FunctionJudge(Judge):
    def __init__(self, spec: str, timeout: float | None = None):
        from selfplay.judging.registry import load_function

        load_function(spec)  # a broken module fails here, in the driver, with the recipe's error
        self.spec = spec
        self.timeout = timeout
        self.process = self.requests = self.replies = None

    def _wait(self, what: str):
        if not self.replies.poll(self.timeout):
            self._kill()
            raise JudgeTimeout.after(f"annotate.function {self.spec}", what, self.timeout, "its process was killed")
        try:
            return self.replies.recv()
        except EOFError:
            code = self.process.wait(5)
            self._kill()
            raise ScoreError(f"annotate.function {self.spec}: its process died (exit code {code})") from None

    def _start(self) -> None:
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen([sys.executable, "-m", "selfplay.judging.function", self.spec,
                                         str(to_child), str(from_child)],
                                        pass_fds=(to_child, from_child), env=env, cwd=os.getcwd())
        os.close(to_child)
        os.close(from_child)
        self.requests = Connection(from_parent, readable=False)
        self.replies = Connection(to_parent, writable=False)
        self._wait("start (import its module)")

    def _score(self, prompt: str, responses: list[str]) -> list[float]:
        if self.process is None:
            self._start()
        self.requests.send((prompt, responses))
        reply = self._wait("return")
        if reply[0] == "error":
            raise ScoreError(reply[1]) from (RemoteTraceback(reply[2]) if reply[2] else None)
        return reply[1]

    def judge(self, prompts, responses):
        return [Judgment(scores=np.array(self._score(prompt, group))) for prompt, group in zip(prompts, responses)]

    def _kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.requests.close()
        self.replies.close()
        self.process = self.requests = self.replies = None

    def shutdown(self):
        if self.process is not None:
            try:
                self.requests.send(None)  # a clean exit for a child that is waiting for work
                self.process.wait(2)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
            self._kill()


if __name__ == "__main__":
    _serve(sys.argv[1], Connection(int(sys.argv[2]), writable=False), Connection(int(sys.argv[3]), readable=False))
