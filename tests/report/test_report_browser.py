"""The demo report in a real browser, offline: headless Chromium with the network switched off
renders every section and every image, and the screenshot is not blank.

Needs Debian's ``chromium`` and ``chromedriver`` at /usr/bin (``.ci/run`` installs them);
Selenium is pointed at both so that selenium-manager never tries to download anything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)",
    ),
]

pytest.importorskip("selenium", reason="needs selenium (dev extra)")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

#: JavaScript: how many images there are, and which did not load (no pixels)
IMAGES = """
const imgs = Array.from(document.images);
return [imgs.length,
        imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt || i.src.slice(0, 40))];
"""
#: JavaScript: every resource the page asked the network for
FETCHED = """
return performance.getEntriesByType('resource').map(e => e.name)
    .filter(n => !n.startsWith('data:') && !n.startsWith('file:'));
"""
SECTIONS = ["contents", *(f"{p}-{s}" for p in ("cnn", "vit")
                          for s in ("provenance", "summary", "equivalence", "units", "notes"))]  # fmt: skip


@pytest.fixture()
def offline_browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[webdriver.Chrome]:
    """Headless Chromium that cannot reach any network: every request goes to a dead proxy,
    and DevTools emulates an offline network on top."""
    monkeypatch.setenv("SE_OFFLINE", "true")
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--window-size=1300,1600", "--proxy-server=127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>", f"--user-data-dir={tmp_path / 'profile'}",
    ):  # fmt: skip
        options.add_argument(arg)
    service = Service(str(CHROMEDRIVER), log_output=os.devnull)
    browser = webdriver.Chrome(service=service, options=options)
    try:
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd(
            "Network.emulateNetworkConditions",
            {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0},
        )
        yield browser
    finally:
        browser.quit()


def _not_blank(shot: Path) -> None:
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 50  # text, tables and plots, not one flat colour
    assert (pixels.min(1) < 200).mean() > 0.02  # a visible share of dark pixels


def test_the_report_renders_offline(offline_browser: webdriver.Chrome, demo_report: Path,
                                    tmp_path: Path) -> None:  # fmt: skip
    driver = offline_browser
    driver.get(demo_report.resolve().as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    assert driver.title == "neuronsplit report"
    for sid in SECTIONS:
        assert driver.find_element(By.ID, sid).is_displayed(), sid
    units = driver.find_elements(By.CSS_SELECTOR, "section[id^='cnn-unit-'], "
                                 "section[id^='vit-unit-']")  # fmt: skip
    assert len(units) == 4 * 6  # 2 units of each model, each with its 5 views
    count, broken = driver.execute_script(IMAGES)
    assert count > 20 and broken == []
    assert driver.execute_script(FETCHED) == []
    shot = tmp_path / "report.png"
    assert driver.save_screenshot(str(shot))
    _not_blank(shot)
    # further down: a unit's reference images and heatmaps are drawn too
    driver.find_element(By.ID, "vit-units").location_once_scrolled_into_view  # noqa: B018
    assert driver.save_screenshot(str(tmp_path / "vit.png"))
    _not_blank(tmp_path / "vit.png")


def test_the_checks_see_a_broken_or_remote_image(offline_browser: webdriver.Chrome,
                                                 demo_report: Path, tmp_path: Path) -> None:  # fmt: skip
    """Controls: the image check fails on a broken image and on one from the network (which
    the offline browser cannot fetch), so its passing above means something."""
    page = tmp_path / "control.html"
    page.write_text(
        '<!DOCTYPE html><html><body><img alt="ok" src="'
        + demo_report.read_text().split('<img src="', 1)[1].split('"', 1)[0]
        + '"><img alt="broken" src="data:image/png;base64,AAAA">'
        '<img alt="remote" src="http://example.com/x.png"></body></html>'
    )
    offline_browser.get(page.as_uri())
    count, broken = offline_browser.execute_script(IMAGES)
    assert count == 3 and sorted(broken) == ["broken", "remote"]
