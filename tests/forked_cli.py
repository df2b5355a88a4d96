"""Run many `selfplay` command lines from one interpreter that has imported the CLI once: each
command runs `selfplay.cli.main` in a forked child of its own (its own exit code, stderr, stdout
and working directory; nothing shared with the other commands).

For the tests that try dozens of bad inputs (tests/test_bad_inputs.py): in a fresh interpreter
per command, importing torch and transformers is most of each command's ~2.5 s of CPU.

Usage: python tests/forked_cli.py CWD < commands.json > results.json, where commands.json is
[[argv...], ...] and results.json is [{"returncode", "stdout", "stderr"}, ...] in the same order.
"""

import json
import os
import sys
import tempfile
import traceback


def run_forked(argv: list[str], cwd: str) -> dict:
    from selfplay.cli import main

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: as `python -m selfplay.cli ARGV` would run, then exit at once
            code = 1
            try:
                os.chdir(cwd)
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                code = main(argv)
            except SystemExit as stop:  # as the interpreter ends: an int is the code, else it is printed
                code = stop.code if isinstance(stop.code, int) or stop.code is None else 1
                if code == 1 and not isinstance(stop.code, int):
                    print(stop.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code or 0)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return {"returncode": os.waitstatus_to_exitcode(status),
                "stdout": out.read().decode(errors="replace"), "stderr": err.read().decode(errors="replace")}


if __name__ == "__main__":
    import selfplay.cli  # noqa: F401  (imported once, before the forks)

    commands = json.load(sys.stdin)
    print(json.dumps([run_forked(argv, sys.argv[1]) for argv in commands]))
