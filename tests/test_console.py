"""Console routing (selfplay.console): selfplay's own lines and errors from anyone reach the
console; library INFO/WARNING lines and forwarded actor output go to <run>/logs/driver.log,
and to the console too with --verbose."""

import logging

import pytest

from selfplay import console

VLLM_INFO = "(MainProcess pid=7) INFO 11-27 18:44:08 [core.py:133] Initializing a V1 LLM engine with config: ..."
VLLM_ERROR = "(MainProcess pid=7) ERROR 11-27 18:44:09 [core.py:900] EngineCore failed to start."


@pytest.fixture
def routed(tmp_path, capsys):
    def route(verbose: bool):
        # as a fresh driver has them: a test run earlier in this process may have set their levels
        for name in console.LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        console.setup(verbose=verbose)
        path = console.log_to_run_dir(tmp_path)
        logging.getLogger("selfplay").info("iter 1 generate  running")
        logging.getLogger("ray._private.worker").info("Started a local Ray instance.")
        logging.getLogger("vllm").warning("Triton is not installed.")
        console._forward_actor_lines({"pid": 7, "actor_name": "VLLMEngine", "is_err": False,
                                      "lines": [VLLM_INFO, VLLM_ERROR, "RuntimeError: CPU Generator does not use offset"]})
        console._forward_actor_lines({"pid": "autoscaler", "is_err": False, "lines": ["Node status", "Active:"]})
        return capsys.readouterr().err, path.read_text()

    yield route
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "selfplay_console", False) or h is console._state["file_handler"]]:
        root.removeHandler(handler)
    console._state.update(verbose=False, file_handler=None, actors_quiet=False)


def test_console_shows_selfplay_lines_and_errors_and_the_log_file_has_everything(routed):
    shown, logged = routed(verbose=False)
    assert "iter 1 generate  running" in shown
    assert "(VLLMEngine pid=7) " + VLLM_ERROR in shown and "CPU Generator does not use offset" in shown
    assert "Initializing a V1 LLM engine" not in shown and "Started a local Ray" not in shown
    assert "Triton is not installed" not in shown
    for line in ("iter 1 generate  running", "Started a local Ray instance.", "Triton is not installed.",
                 "(VLLMEngine pid=7) " + VLLM_INFO, VLLM_ERROR):
        assert line in logged
    assert "Node status" not in logged   # the autoscaler's periodic dump is dropped, as Ray's printer does


def test_verbose_shows_library_and_actor_lines_too(routed):
    shown, _ = routed(verbose=True)
    assert "Initializing a V1 LLM engine" in shown and "Started a local Ray instance." in shown
    assert "Triton is not installed." in shown


def test_error_line_pattern():
    assert console.ERROR_LINE.search(VLLM_ERROR) and console.ERROR_LINE.search("Traceback (most recent call last):")
    assert console.ERROR_LINE.search("ValueError: There is no module or parameter named 'lm_head'")
    for harmless in (VLLM_INFO, "WARNING 11-27 [rotary.py:1] RotaryEmbedding: Failed to load weights",
                     "Loading weights: 100%|██████████| 21/21", "errors=0 in the last step"):
        assert not console.ERROR_LINE.search(harmless), harmless


@pytest.mark.parametrize("recorded", [True, False])
def test_a_stop_advises_resume_only_when_the_run_was_recorded(recorded, tmp_path, capsys):
    """Issue 19 finding 12: Ctrl-C at start-up, before run.json exists, cannot be resumed
    (`selfplay resume` refuses a folder without run.json): the line says to run the command again."""
    import signal
    from types import SimpleNamespace

    from selfplay import cli

    if recorded:
        (tmp_path / "run.json").write_text("{}")
    cli._signals_received[:] = [signal.SIGTERM]
    try:
        code = cli._report_interrupt(SimpleNamespace(running=None), tmp_path)
    finally:
        cli._signals_received.clear()
    line = capsys.readouterr().err.strip()
    assert code == 143 and line.startswith("selfplay: interrupted by SIGTERM during start-up; ")
    if recorded:
        assert line.endswith(f"`selfplay resume {tmp_path}` continues")
    else:
        assert line.endswith("no run was recorded yet: run the same command again to start it")
