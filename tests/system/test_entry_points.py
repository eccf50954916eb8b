"""The commands the README gives (./test, and .ci/run which runs it), run as they are run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN_DIRS = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]


def installed_version(package: str) -> str | None:
    shown = subprocess.run(
        ["dpkg-query", "--show", "--showformat=${Status} ${Version}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    words = shown.stdout.split()
    return words[-1] if shown.returncode == 0 and "installed" in words else None


def path_without(program: str, into: Path) -> str:
    """A PATH of links to every program on the usual one but ``program``: a machine where it
    was never installed, as far as the scripts can tell."""
    into.mkdir()
    for directory in BIN_DIRS:
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            link = into / name
            if name != program and not link.exists() and not link.is_symlink():
                link.symlink_to(os.path.join(directory, name))
    return str(into)


def test_test_with_systemd_installs_systemd_nspawn_where_missing(tmp_path: Path) -> None:
    """``./test --systemd`` on a machine without systemd-nspawn installs it (systemd-container
    at the installed systemd's version, as .ci/run does, by the same script) rather than skip
    the test it was asked for. Run where the package is already there at that version, so
    that apt-get has nothing to fetch: the install goes through apt and changes nothing."""
    if os.geteuid() != 0:
        pytest.skip("installing a package needs root")
    systemd = installed_version("systemd")
    if systemd is None or installed_version("systemd-container") != systemd:
        pytest.skip("needs systemd-container installed at systemd's version (nothing to fetch)")
    env = {**os.environ, "PATH": path_without("systemd-nspawn", tmp_path / "bin")}
    ran = subprocess.run(
        [
            str(REPO / "test"),
            "--systemd",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/system/test_entry_points.py",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr.splitlines()[0] == (
        f"installing systemd-container={systemd} for the systemd test (apt-get)"
    )
    assert "could not install" not in ran.stderr
    # CI installs it with the very same script, not a copy of its own.
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/ensure-systemd-nspawn" in ci and "systemd-container" not in ci


def test_test_without_systemd_installs_nothing(tmp_path: Path) -> None:
    """Only --systemd needs systemd-nspawn: plain ``./test`` never runs apt-get."""
    env = {**os.environ, "PATH": path_without("systemd-nspawn", tmp_path / "bin")}
    ran = subprocess.run(
        [
            str(REPO / "test"),
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/system/test_entry_points.py",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert "systemd-container" not in ran.stderr
