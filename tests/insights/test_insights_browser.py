"""Captum Insights in a real browser: headless Chromium picks the subunit method and fetches.

Needs Debian's ``chromium`` and ``chromedriver`` at /usr/bin (CI installs them); Selenium is
pointed at both so that selenium-manager never tries to download a browser or driver.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)",
    ),
    pytest.mark.filterwarnings("ignore:It looks like that the attribution"),
]

pytest.importorskip("captum.insights", reason="needs the insights extra (captum==0.8.0 + flask)")
pytest.importorskip("selenium", reason="needs selenium (dev extra)")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from neuronsplit.demo import get_demo_model  # noqa: E402
from neuronsplit.insights import InsightsApp, make_visualizer, serve  # noqa: E402
from neuronsplit.plan import SplitPlan, UnitSplit  # noqa: E402

METHOD = "Disentangle (browser test)"
CHOICE = "fc2/u2/k1"
IMAGES = 'img[src^="data:image/png;base64,"]'


@pytest.fixture()
def app() -> Iterator[InsightsApp]:
    model = get_demo_model()
    w = model.fc2.weight.detach()
    pos = [i for i in range(64) if w[2, i] > 0]
    neg = [i for i in range(64) if w[2, i] <= 0]
    plan = SplitPlan([UnitSplit("fc2", 2, [pos, neg], merge="disjoint")])
    with make_visualizer(model, plan, method_name=METHOD) as made:
        yield made


@pytest.fixture()
def driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[webdriver.Chrome]:
    # selenium-manager must not go online: explicit binaries, offline mode, no statistics
    monkeypatch.setenv("SE_OFFLINE", "true")
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1200",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    service = Service(str(CHROMEDRIVER), log_output=os.devnull)
    browser = webdriver.Chrome(service=service, options=options)
    try:
        yield browser
    finally:
        browser.quit()


def test_subunit_method_in_the_browser(
    app: InsightsApp, driver: webdriver.Chrome, tmp_path: Path
) -> None:
    with serve(app) as running:
        driver.get(running.url)
        wait = WebDriverWait(driver, 60)
        method = wait.until(
            ec.presence_of_element_located((By.CSS_SELECTOR, 'select[name="selected_method"]'))
        )
        options = [o.text for o in Select(method).options]
        assert METHOD in options and "Integrated Gradients" in options
        Select(method).select_by_visible_text(METHOD)
        # the method's argument drop-down appears once the method is selected
        subunit = wait.until(
            ec.presence_of_element_located((By.CSS_SELECTOR, 'select[name="subunit"]'))
        )
        assert [o.text for o in Select(subunit).options] == list(app.choices)
        Select(subunit).select_by_visible_text(CHOICE)
        fetch = driver.find_element(By.XPATH, "//button[normalize-space()='Fetch']")
        fetch.click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, IMAGES)) > 0)
        images = driver.find_elements(By.CSS_SELECTOR, IMAGES)
        assert len(images) > 0
        # the server really computed our method with the chosen subunit
        assert app.visualizer._config.attribution_method == METHOD
        assert app.visualizer._config.attribution_arguments == {"subunit": CHOICE}
        shot = tmp_path / "insights.png"
        assert driver.save_screenshot(str(shot))
    assert shot.exists() and shot.stat().st_size > 10_000
    assert shot.read_bytes().startswith(b"\x89PNG")
