"""The systemd units in deploy/: what the issue asks of them, and systemd's own verdict."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = {"relay.service": "relay.service", "relay@.service": "relay@orders.service"}


def settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("unit", UNITS)
def test_unit_is_a_hardened_notify_service(unit):
    found = settings((DEPLOY / unit).read_text())
    assert found["Type"] == ["notify"] and found["Restart"] == ["on-failure"]
    assert found["ExecStart"] == ["/opt/relay/bin/relay run"]
    assert found["EnvironmentFile"] == [
        "/etc/relay/relay.env" if unit == "relay.service" else "/etc/relay/%i.env"
    ]
    assert found["User"] == ["relay"] and found["WatchdogSec"] == ["30"]
    assert found["RestartPreventExitStatus"] == ["2"]  # configuration errors do not loop
    for hardening in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "RestrictNamespaces",
        "PrivateUsers",
        "RemoveIPC",
    ):
        assert found[hardening] == ["yes"], hardening
    assert found["ProtectSystem"] == ["strict"]
    assert found["ProcSubset"] == ["pid"] and found["DevicePolicy"] == ["closed"]
    assert found["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert found["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert found["CapabilityBoundingSet"] == [""]


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify_accepts_the_unit(unit, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    relay = Path(sys.executable).parent / "relay"  # verify checks that ExecStart exists
    text = (DEPLOY / unit).read_text().replace("/opt/relay/bin/relay", str(relay))
    path = tmp_path / UNITS[unit]
    path.write_text(text)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    complaints = [line for line in result.stderr.splitlines() if "relay" in line]
    assert complaints == []
