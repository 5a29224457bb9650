"""The Ray dashboard as its users meet it, in a real headless Chromium (Debian's chromium and
chromedriver, driven by Selenium).

`scripts/cluster.sh` turns on Ray's token authentication, so the dashboard first asks for the
cluster's token (`scripts/cluster.sh dashboard` prints it; it lives in RUN_DIR/ray_auth_token). The
test logs in with it as a person would (the password box and its Submit button), opens the Serve
tab, and checks that it lists every application and deployment of the running config. A wrong token
must be refused.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .cluster import RUN_DIR, skip_or_fail

pytestmark = [pytest.mark.slow]

DASHBOARD_URL = "http://127.0.0.1:8265"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PAGE_TIMEOUT_S = 60.0


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        skip_or_fail(
            "Debian's chromium and chromium-driver are not installed (scripts/setup.sh installs them)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",  # this machine reaches no other host
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _text_when(driver: Any, predicate: Any, what: str) -> str:
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    from selenium.webdriver.common.by import By

    text = ""
    while time.monotonic() < deadline:
        text = driver.find_element(By.TAG_NAME, "body").text
        if predicate(text):
            return text
        time.sleep(0.5)
    pytest.fail(f"the dashboard did not show {what} within {PAGE_TIMEOUT_S:.0f}s; it shows:\n{text[:2000]}")


def _log_in(driver: Any, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{DASHBOARD_URL}/#/serve")
    _text_when(driver, lambda t: "Authentication Token" in t, "its token prompt")
    driver.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(token)
    driver.find_element(
        By.XPATH, "//button[translate(normalize-space(), 'submit', 'SUBMIT')='SUBMIT']"
    ).click()


def test_serve_tab_lists_every_deployment_after_login(browser: Any, serve_config: dict[str, Any]) -> None:
    token_file = RUN_DIR / "ray_auth_token"
    if not token_file.is_file():
        skip_or_fail(f"no cluster token at {token_file}: the cluster was not started by scripts/cluster.sh")
    _log_in(browser, token_file.read_text().strip())
    apps = {app["name"]: app for app in serve_config["applications"]}
    expected = {"ingress", "ModelDirectory"}  # and one deployment per model of each app's preset
    text = _text_when(
        browser,
        lambda t: "Applications / Deployments" in t and all(name in t for name in apps) and "ingress" in t,
        f"applications {sorted(apps)}",
    )
    models = {"qwen2.5-7b", "deepseek-r1-7b"} if "inference" in apps else set()
    missing = sorted(name for name in expected | models if name not in text)
    assert not missing, f"Serve tab lacks {missing}:\n{text[:2000]}"
    assert "Authentication Token Required" not in text


def test_a_wrong_token_is_refused(browser: Any) -> None:
    _log_in(browser, "not-the-token")
    time.sleep(3)  # what the right token opens within a second; a slower machine only hides less
    text = _text_when(browser, lambda t: "Authentication" in t, "a refusal")
    assert "Applications / Deployments" not in text, "a wrong token opened the Serve tab"
