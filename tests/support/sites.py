"""The tests' Django sites (support/django_site.py, support/drf_site.py), each run in a process
of its own: Django's settings are once per process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

DJANGO_SITE = Path(__file__).resolve().with_name("django_site.py")
DRF_SITE = Path(__file__).resolve().with_name("drf_site.py")


def run_site(relay_dsn: str, scenario: str) -> tuple[dict[str, Any], str]:
    """What the Django REST Framework site's requests answered, and what it logged."""
    done = subprocess.run(
        [sys.executable, str(DRF_SITE), relay_dsn, scenario],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    *logged, last = done.stdout.splitlines()
    result: dict[str, Any] = json.loads(last)
    return result, "\n".join(logged)
