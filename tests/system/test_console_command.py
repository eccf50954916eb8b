"""`relay console` run as a person runs it, in a process of its own: it serves until SIGTERM
and says in one line what is wrong with where it is told to listen."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request

from support.receivers import free_port


def test_relay_console_serves_until_sigterm_and_says_what_is_wrong(dsn: str) -> None:
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    command = [sys.executable, "-m", "relay", "console", "--dsn", dsn]
    with subprocess.Popen(
        [*command, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    ) as served:
        assert served.stdout is not None
        assert served.stdout.readline() == f"relay console listening on http://127.0.0.1:{port}\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5) as page:
            assert page.status == 200 and "Sign in" in page.read().decode()
        served.send_signal(signal.SIGTERM)
        assert served.wait(10) == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        for listen, says in [
            ("nonsense", "error: --listen (or RELAY_CONSOLE_LISTEN): 'nonsense' is not host:port"),
            (f"127.0.0.1:{busy}", f"error: cannot listen on 127.0.0.1:{busy}: "),
        ]:
            done = subprocess.run(
                [*command, "--listen", listen],
                capture_output=True,
                text=True,
                env=environment,
                timeout=30,
                check=False,
            )
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 2 and len(lines) == 1, done.stderr
            assert lines[0].startswith(says), lines
