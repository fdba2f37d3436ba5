"""A headless Debian `chromium` driven by Playwright (its Python package only: nothing is
downloaded; `playwright install` is never run). Absent chromium or playwright: the UI tests
skip with the reason. Screenshots go to `test-artifacts/ui/` at the repository root
(gitignored), for a human to look at."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..harness import REPO

ARTIFACTS = Path(os.environ.get("DSTACK_UI_ARTIFACTS", REPO / "test-artifacts" / "ui"))
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    explicit = os.environ.get("DSTACK_TEST_CHROMIUM")
    if explicit:
        return explicit
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


# Module scope: Playwright's sync API keeps an event loop running in this thread while it is
# open, and every later test that calls asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed (dev extra)"
    )
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/setup-system does)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"], headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser) -> Iterator[object]:  # noqa: ANN001
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors
    pg.on("dialog", lambda d: d.accept())  # confirm() of Stop/Delete
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture(scope="session")
def shots() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nUI screenshots: {ARTIFACTS}")
    return ARTIFACTS
