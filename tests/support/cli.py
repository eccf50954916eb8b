"""The relay command-line, run the way a person runs it (a new process, no RELAY_ variable
inherited)."""

from __future__ import annotations

import os
import subprocess
import sys


def relay(
    *args: str, dsn: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``relay *args``; ``dsn`` becomes RELAY_DSN and ``env`` is added to the environment."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    environment["COLUMNS"] = "200"
    environment.update(env or {})
    if dsn is not None:
        environment["RELAY_DSN"] = dsn
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
        timeout=60,
    )


def relay_env(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``relay *args`` with the keyword arguments as environment variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        env={**base, "COLUMNS": "200", **env},
        check=False,
        timeout=60,
    )
