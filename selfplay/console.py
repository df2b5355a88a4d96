"""What a person sees on the console, and where everything else goes.

The console shows selfplay's own progress lines, the final table, and errors from any
component. What the libraries say at INFO/WARNING (Ray, vLLM, DeepSpeed, transformers), in the
driver and in the Ray actors, goes to `<run>/logs/driver.log`; `--verbose` shows it on the
console as well.

Actor output reaches the driver through Ray's log forwarding (`log_to_driver`). Ray's printer
is replaced by one that hands each line to the `actors` logger: ERROR-looking lines at ERROR
(so they reach the console), the rest at INFO (log file only). Doing this in the driver keeps
it working on a multi-node cluster, where the run directory may not exist on the actors' nodes.
"""

import logging
import os
import re
import sys
import time
from pathlib import Path

FORMAT = "%(asctime)s %(name)s %(message)s"
# vLLM ("ERROR 11-27 ..."), Python logging ("ERROR:root:..."), glog ("E1127 ..." is not matched
# on purpose: Ray's C++ layer prints those for harmless shutdowns), tracebacks and their last line.
ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL|FATAL)\b|^Traceback \(most recent call last\)|^\w*(Error|Exception): ")

_state = {"verbose": False, "file_handler": None, "actors_quiet": False}
actor_log = logging.getLogger("actors")


def printable(text: str) -> str:
    """`text` with each control or invisible format character escaped as Python writes it
    (\\x1b, \\u202e; a newline as \\n): a prompt, a response or a run name that reaches the
    terminal cannot clear the screen, retitle the window or reorder what follows."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


class _PrintableFormatter(logging.Formatter):
    """Console lines with `printable` text, line by line (a multi-line record keeps its lines)."""

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(printable(line) for line in super().format(record).split("\n"))


class _ConsoleFilter(logging.Filter):
    """selfplay's own records and errors from anyone; everything with --verbose."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "actors" and _state["actors_quiet"]:
            return False
        if _state["verbose"] or record.levelno >= logging.ERROR:
            return True
        return record.name == "selfplay" or record.name.startswith("selfplay.")


def setup(verbose: bool = False) -> None:
    """The console handler (stderr); the CLI calls it once before any command."""
    _state["verbose"] = verbose
    root = logging.getLogger()
    root.setLevel(os.environ.get("SELFPLAY_LOG", "INFO"))
    for handler in [h for h in root.handlers if getattr(h, "selfplay_console", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter(FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(_ConsoleFilter())
    handler.selfplay_console = True
    root.addHandler(handler)
    logging.captureWarnings(True)  # Python warnings become WARNING records: log file only


def log_to_run_dir(run_dir: Path) -> Path:
    """Every record, from any logger, also goes to <run>/logs/driver.log (appended per start)."""
    path = Path(run_dir) / "logs" / "driver.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    if _state["file_handler"] is not None:
        root.removeHandler(_state["file_handler"])
        _state["file_handler"].close()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    _state["file_handler"] = handler
    route_library_loggers()
    with open(path, "a", encoding="utf-8") as log_file:
        log_file.write(f"---- selfplay {' '.join(sys.argv[1:])} (pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    return path


# Libraries whose root logger prints with its own handler and does not propagate to ours.
LIBRARY_LOGGERS = ("ray", "vllm", "DeepSpeed", "transformers")


def route_library_loggers() -> None:
    """Send these libraries' records through our handlers (console filter, log file) instead of
    their own stderr handlers. Called again after imports that may configure them (ray.init)."""
    for name in LIBRARY_LOGGERS:
        library_logger = logging.getLogger(name)
        library_logger.handlers.clear()
        library_logger.propagate = True
        library_logger.disabled = False  # a logging.config call made by an import may have disabled it


def route_actor_output() -> bool:
    """After ray.init(log_to_driver=True): actor lines go to the `actors` logger instead of
    straight to the console. False if this Ray has no such hook (its own printer stays)."""
    try:
        from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    if "ray_print_logs" not in [name for name, _ in getattr(dispatcher, "handlers", [])]:
        return False
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", _forward_actor_lines)
    return True


def _forward_actor_lines(data: dict) -> None:
    source, lines = data.get("pid"), data.get("lines", [])
    if source == "autoscaler":  # its periodic status dump; Ray's printer keeps only the events too
        try:
            from ray._private.worker import filter_autoscaler_events

            lines = list(filter_autoscaler_events(lines))
        except Exception:  # no cluster to ask which autoscaler it is: status dumps are not events
            lines = []
    elif source != "raylet":
        source = f"{data.get('actor_name') or data.get('task_name') or 'worker'} pid={source}"
    for line in lines:
        actor_log.log(logging.ERROR if ERROR_LINE.search(line) else logging.INFO, "(%s) %s", source, line)


def quiet_actors() -> None:
    """After an interrupt the actors die noisily; their lines still go to the log file."""
    _state["actors_quiet"] = True
