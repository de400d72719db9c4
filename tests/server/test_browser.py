"""The search page in a real browser: headless Chromium (Debian's package) driven by Playwright.

It loads the page from a `lodestore serve` process, types a query, presses Enter,
and checks that the ids shown, in order, are Index.search's. The screenshot it
takes is the README's (docs/serve.png).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[test,serve]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")

import lodestore  # noqa: E402

from .serving import REPO, SAMPLE, start_server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = REPO / "docs" / "serve.png"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no browser: {CHROMIUM} is missing (apt-get install chromium; CI installs it)")


def test_page_shows_what_index_search_returns(text_index_path: Path, tmp_path: Path) -> None:
    query = json.loads((SAMPLE / "queries.jsonl").read_text().splitlines()[0])["text"]
    with lodestore.Index.open(text_index_path) as index:
        expected = index.search(query, k=5)
        generation = index.store.generation
    with start_server(text_index_path, log_dir=tmp_path) as server, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")
            box = page.locator("#q")
            assert box.evaluate("e => e === document.activeElement")  # the search box has the focus on load
            page.fill("#k", "5")
            box.click()
            page.keyboard.type(query)
            page.keyboard.press("Enter")
            page.wait_for_function("document.body.dataset.state === 'done' || document.body.dataset.state === 'error'",
                                   timeout=60_000)
            status = page.locator("#status").inner_text()
            shown = page.locator("li.hit").evaluate_all("items => items.map(i => i.dataset.id)")
            assert shown == [h.id for h in expected], status
            assert f"generation {generation}" in status and "ms" in status
            first = page.locator("li.hit").first
            assert expected[0].title in first.inner_text()
            assert f"{expected[0].score:.3f}" in first.inner_text()
            for key in expected[0].metadata:
                assert key in first.inner_text()
            page.keyboard.press("ArrowDown")  # keyboard: from the box into the results
            assert page.evaluate("document.activeElement.dataset.id") == expected[0].id
            assert not errors, errors
            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot), full_page=False)
            if os.environ.get("LODESTORE_UPDATE_SCREENSHOT") or not SCREENSHOT.exists():
                SCREENSHOT.parent.mkdir(exist_ok=True)
                shutil.copyfile(shot, SCREENSHOT)
        finally:
            browser.close()
