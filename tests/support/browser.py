"""The console's browser tests' set-up: Debian's chromium driven by Playwright, each test module
skipped, saying why, where either is missing (./test and .ci/run install both where they can:
scripts/ensure-chromium), and what a person does first."""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import TYPE_CHECKING

import pytest

from support.console import PASSWORD

if TYPE_CHECKING:
    from playwright.async_api import Dialog, Page

CHROMIUM = os.environ.get("RELAY_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def _missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:  # pragma: no cover - the test extras
        return "Playwright is not installed (pip install -e '.[test]')"
    if not os.path.exists(CHROMIUM):
        return f"no chromium at {CHROMIUM}: apt-get install chromium (scripts/ensure-chromium)"
    return None


MISSING = _missing()

#: A browser test module's ``pytestmark``: skipped, saying why, without chromium or Playwright.
needs_browser = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


async def sign_in(page: Page, base: str, role: str) -> None:
    """The sign-in form filled and sent as a person does."""
    await page.goto(f"{base}/login")
    await page.fill("input[name=role]", role)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")


def watch(page: Page) -> list[str]:
    """Every dialog a script opens and every message on the console (but the browser's own
    notes: a resource answered 4xx, chromium's [DOM] advice on the secret's password field):
    a script that ran."""
    seen: list[str] = []

    async def dismiss(dialog: Dialog) -> None:
        seen.append(f"dialog: {dialog.message}")
        await dialog.dismiss()

    page.on("dialog", dismiss)
    page.on(
        "console",
        lambda message: (
            None
            if message.text.startswith(("Failed to load resource", "[DOM]"))
            else seen.append(f"console: {message.text}")
        ),
    )
    return seen
