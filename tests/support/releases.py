"""Earlier releases of relay, unpacked from this checkout's git history, to run beside the
current one as an operator might have left them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def unpack(commit: str, into: Path) -> Path:
    """relay as released at ``commit`` (its sql/ beside its package), unpacked into ``into``;
    the test is skipped without git or that commit."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and this checkout's history, to unpack an earlier release")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "relay", "sql"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.skip(f"commit {commit} is not in this clone's history")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def command(release: Path, *args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    """``relay *args`` of an unpacked release, as a person runs it."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    environment.update(RELAY_DSN=dsn, PYTHONPATH=str(release), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        env=environment,
        cwd=release,  # python -m looks in the working directory first
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
