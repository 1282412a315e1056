"""A real browser on the demo: headless Debian Chromium, driven by Playwright. `.ci/run` installs Chromium and sets
VIDEOAR_REQUIRE_BROWSER=1, so CI fails rather than skips when the browser is missing."""

import os
import shutil
import socket

import pytest

pytest.importorskip("gradio")
playwright = pytest.importorskip("playwright.sync_api")

from videoar_hf.app import DemoLimits, build_demo  # noqa: E402
from videoar_hf.testing_utils import tiny_pipeline  # noqa: E402

CHROMIUM = os.environ.get("VIDEOAR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def chromium():
    if CHROMIUM is None:
        if os.environ.get("VIDEOAR_REQUIRE_BROWSER") == "1":
            pytest.fail("VIDEOAR_REQUIRE_BROWSER=1 but no chromium found (apt-get install chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_the_page_generates_a_video(chromium, tmp_path):
    demo = build_demo(tiny_pipeline(), DemoLimits(max_frames=9, max_resolution=32))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        page = chromium.new_page()
        page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
        page.get_by_label("Prompt", exact=True).fill("a blue square sliding to the right")
        page.get_by_role("button", name="Generate").click()
        video = page.locator("video[src]")
        video.first.wait_for(timeout=60_000)
        assert video.first.get_attribute("src")
        screenshot = tmp_path / "space.png"
        page.screenshot(path=str(screenshot), full_page=True)
        assert screenshot.stat().st_size > 10_000
        if os.environ.get("VIDEOAR_SCREENSHOT_DIR"):
            shutil.copy(screenshot, os.path.join(os.environ["VIDEOAR_SCREENSHOT_DIR"], "space.png"))
    finally:
        demo.close()
