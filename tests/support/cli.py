"""The relay command-line, run the way a person runs it (no RELAY_ variable inherited): in this
process by :func:`relay` (the command's main(), as `python -m relay` runs it), in a new one by
:func:`process`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Callable


def process(
    *args: str, dsn: str | None = None, env: dict[str, str] | None = None, given: str = ""
) -> subprocess.CompletedProcess[str]:
    """``relay *args`` in a new process; ``dsn`` becomes RELAY_DSN, ``env`` is added to the
    environment and ``given`` is its standard input."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    environment["COLUMNS"] = "200"
    environment.update(env or {})
    if dsn is not None:
        environment["RELAY_DSN"] = dsn
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        input=given,
        capture_output=True,
        text=True,
        env=environment,
        check=False,
        timeout=60,
    )


def relay_env(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``relay *args`` with the keyword arguments as environment variables."""
    return relay(*args, env=env)


OWN_PROCESS = {"run", "demo", "receive"}
"""Commands that serve or wait (a relay, the demo, the receiver): :func:`relay` runs them in a
process of their own all the same."""


def _loop_running() -> bool:
    """Whether a coroutine calls: its event loop (a relay, a receiver) must go on turning while
    the command runs, as it does beside a process (a command in this thread would block it, and
    with it a relay holding locks the command waits for)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def relay(
    *args: str, dsn: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``relay *args`` as :func:`process` runs it, but in this process (a new Python and
    relay's imports cost about a second a command), unless it serves or waits (OWN_PROCESS) or
    a coroutine calls. The environment is the one :func:`process` gives, for the call; stdout
    and stderr are captured; the exit status is main()'s."""
    if (args[:1] and args[0] in OWN_PROCESS) or _loop_running():
        return process(*args, dsn=dsn, env=env)
    return in_process(*args, dsn=dsn, env=env)


def in_process(
    *args: str, dsn: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``relay *args`` by its main(), whatever the command and whoever calls: from a coroutine,
    in a thread of its own (a command may run an event loop of its own), the coroutine's loop
    waiting meanwhile (nothing it serves may be needed by the command, and no relay on it may
    hold locks the command waits for)."""
    from relay.cli.main import main

    environment = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    environment["COLUMNS"] = "200"
    environment.update(env or {})
    if dsn is not None:
        environment["RELAY_DSN"] = dsn
    saved_environ, saved_argv = dict(os.environ), sys.argv
    stdout, stderr = io.StringIO(), io.StringIO()
    os.environ.clear()
    os.environ.update(environment)
    sys.argv = ["relay", *args]
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            if _loop_running():
                with concurrent.futures.ThreadPoolExecutor(1) as thread:
                    code = thread.submit(_exit_status, main).result()
            else:
                code = _exit_status(main)
    finally:
        os.environ.clear()
        os.environ.update(saved_environ)
        sys.argv = saved_argv
    return subprocess.CompletedProcess(["relay", *args], code, stdout.getvalue(), stderr.getvalue())


def _exit_status(main: Callable[[], None]) -> int:
    try:
        main()
    except SystemExit as ended:
        return ended.code if isinstance(ended.code, int) else 1
    return 0
