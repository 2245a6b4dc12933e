"""The operator console in a real browser: Debian's headless Chromium driven by Selenium, against a real
`restune serve` (uvicorn, a file store holding the 19 demo tuners and two style tuners, generation on).

One server and one browser for the module; the tests run in file order and leave the store as they found it.
Each state the docs show is saved as a screenshot: into a temporary folder, or, with
RESTUNE_CONSOLE_SCREENSHOTS=docs/assets/console, into the docs (how the committed pictures were made).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.helpers import MICRO, LiveServer, make_artifact

pytestmark = pytest.mark.e2e

TOKEN = "console-test-token"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SAMPLE = Path(__file__).resolve().parents[2] / "training" / "assets" / "sample.png"
HOSTILE_LABEL = '<img src=x onerror="window.__owned=1">'
WIDE, NARROW = (1280, 900), (390, 844)

if not (CHROMIUM and CHROMEDRIVER):  # make test installs both (scripts/system-deps.sh); a bare pytest may not
    pytest.fail("the console tests need Debian's chromium and chromium-driver: run `make system-deps` "
                "(or apt-get install chromium chromium-driver)", pytrace=False)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    where = os.environ.get("RESTUNE_CONSOLE_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("console-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from bench.generate import random_tuner
    from restuning.diffusion.pipeline import StylePipeline
    from training.demo import DemoSizes, run_demo
    from training.style import style_artifact
    from tuner_store.urls import open_store

    root = tmp_path_factory.mktemp("console")
    store_url = f"file://{root / 'store'}"
    # the 19 demo tuners, trained briefly on the micro backbone (their names, labels and structure are the demo's)
    run_demo(store_url, backbone=MICRO, weights="random:0", progress=False, sizes=DemoSizes.uniform(8, 4, epochs=1))
    pipe = StylePipeline.load("tiny-random", device="cpu")
    with open_store(store_url) as store:
        for seed, name in enumerate(["ink", "neon"], start=1):
            store.put(style_artifact(name, random_tuner(pipe, seed, 0.05), pipe, {"note": "random, untrained"}))
    live = LiveServer(store_url, root, extra=["--admin-token", TOKEN, "--diffusion-model", "tiny-random"])
    with live:
        yield live


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={WIDE[0]},{WIDE[1]}", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 60, what: str = "the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message=f"waiting for {what}")


def open_console(driver, server, size=WIDE):
    driver.set_window_size(*size)
    driver.get(f"{server.url}/")  # / leads to /ui/
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready") == "yes", what="the first render")
    driver.get_log("browser")  # start each test with an empty console log


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def by_id(driver, element_id):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def shot(driver, shots: Path, name: str, element_id: str | None = None, center: str | None = None) -> None:
    """A screenshot of the page: from its top, from a section's top (element_id), or around an element (a CSS
    selector, scrolled to the middle of the window)."""
    if element_id:
        driver.execute_script("document.getElementById(arguments[0]).scrollIntoView()", element_id)
    if center:
        driver.execute_script("document.querySelector(arguments[0]).scrollIntoView({block: 'center'})", center)
    path = shots / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 5000


def set_token(driver, token: str) -> None:
    """Typed as a person would (select all, delete, type), so the page sees every change."""
    from selenium.webdriver.common.keys import Keys

    field = by_id(driver, "admin-token")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    if token:
        field.send_keys(token)


def upload(driver, path: Path) -> None:
    by_id(driver, "upload-file").send_keys(str(path))
    by_id(driver, "upload-button").click()


def problems_in_log(driver) -> list[str]:
    """Console messages that mean the page broke a rule: a CSP refusal, a script error."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and "status of 4" not in entry["message"]]


def test_classify_shows_every_task_with_its_tuner_and_timings(server, browser, shots):
    open_console(browser, server)
    assert browser.current_url.endswith("/ui/")
    by_id(browser, "classify-file").send_keys(str(SAMPLE))
    wait(browser, lambda d: len(css(d, "#classify-results article.task")) == 19, what="19 task results")
    cards = css(browser, "#classify-results article.task")
    tasks = {card.get_attribute("data-task") for card in cards}
    from training.demo_tasks import task_names

    assert tasks == set(task_names())
    for card in cards:
        task = card.get_attribute("data-task")
        assert card.find_element("css selector", ".ref").text == f"{task}@1"
        rows = card.find_elements("css selector", "li")
        # a bar under one pixel wide renders as 0 px: only scores below 1% may have no visible bar
        assert 1 <= len(rows) <= 3 and all(r.find_element("css selector", ".fill").size["width"] > 0 or
                                           float(r.find_element("css selector", ".score").text.rstrip("%")) < 1.0
                                           for r in rows)
    timings = by_id(browser, "classify-timings").text
    assert timings.startswith("19 task results") and all(f"{part} " in timings for part in ("queue", "backbone", "heads"))
    # the live-state panel reads /metrics: after a classify, a batch size and the request counter have moved
    wait(browser, lambda d: by_id(d, "stat-batch").text not in ("–", ""), timeout=15, what="the live state")
    assert by_id(browser, "stat-queue").text == "0"
    shot(browser, shots, "classify")
    assert problems_in_log(browser) == []


def test_the_page_fits_a_phone_and_every_control_has_a_label(server, browser, shots):
    open_console(browser, server, NARROW)
    by_id(browser, "classify-file").send_keys(str(SAMPLE))
    wait(browser, lambda d: len(css(d, "#classify-results article.task")) == 19, what="19 task results")
    overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a 390 px screen"
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('input, textarea, select, button')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())"
        ".map(e => e.id || e.outerHTML)")
    assert unlabelled == []
    # the keyboard reaches the controls in page order, starting with the admin token
    browser.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    reached = []
    for _ in range(8):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        reached.append(browser.execute_script("return document.activeElement.id || document.activeElement.tagName"))
    assert reached[0] == "admin-token" and "classify-file" in reached and "classify-topk" in reached, reached
    shot(browser, shots, "classify-390")
    browser.set_window_size(*WIDE)


def test_upload_shows_the_tuner_and_a_corrupt_one_shows_its_problems(server, browser, shots, tmp_path, micro_backbone):
    from tuner_store.artifact import encode_artifact

    open_console(browser, server)
    set_token(browser, TOKEN)
    good = tmp_path / "birds.safetensors"
    good.write_bytes(encode_artifact(make_artifact(micro_backbone, "birds", num_classes=4)))
    upload(browser, good)
    wait(browser, lambda d: css(d, 'tr[data-tuner="birds"] .serving'), what="the uploaded tuner serving")
    row = css(browser, 'tr[data-tuner="birds"]')[0]
    cells = [c.text for c in row.find_elements("css selector", "th, td")]
    assert cells[:3] == ["birds", "classification", "1"] and "serving" in cells[4] and cells[7] == MICRO
    wait(browser, lambda d: "birds-class0" in css(d, 'tr[data-tuner="birds"] td.labels')[0].text, what="labels")
    shot(browser, shots, "tuners", "tuners")

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(good.read_bytes()[:200] + b"\x00garbage" * 40)
    upload(browser, corrupt)
    wait(browser, lambda d: by_id(d, "tuners-error").is_displayed(), what="the error box")
    error = by_id(browser, "tuners-error").text
    assert error.startswith("400: invalid artifact") and css(browser, "#tuners-error ul.problems li"), error
    shot(browser, shots, "upload-corrupt", "tuners")
    httpx.delete(f"{server.url}/v1/tuners/birds", headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)


def test_a_wrong_token_is_refused_and_nothing_changes(server, browser, shots, tmp_path, micro_backbone):
    from tuner_store.artifact import encode_artifact

    open_console(browser, server)
    set_token(browser, "not-the-token")
    artifact = tmp_path / "nope.safetensors"
    artifact.write_bytes(encode_artifact(make_artifact(micro_backbone, "nope")))
    upload(browser, artifact)
    wait(browser, lambda d: by_id(d, "tuners-error").is_displayed(), what="the error box")
    assert by_id(browser, "tuners-error").text.startswith("403: the admin token is not valid")
    shot(browser, shots, "wrong-token", "tuners")
    # and without any token: 401, asking for one
    set_token(browser, "")
    upload(browser, artifact)
    wait(browser, lambda d: by_id(d, "tuners-error").text.startswith("401"), what="the 401")
    assert httpx.get(f"{server.url}/v1/tuners/nope", timeout=30).status_code == 404
    # a delete with a wrong token is refused too, and the tuner stays
    set_token(browser, "not-the-token")
    button = css(browser, 'tr[data-tuner="digits"] button.danger')[0]
    button.click()
    button.click()  # the second click confirms
    wait(browser, lambda d: by_id(d, "tuners-error").text.startswith("403"), what="the refused delete")
    assert httpx.get(f"{server.url}/v1/tuners/digits", timeout=30).json()["serving"] is True


def test_a_hostile_label_renders_as_text(server, browser, shots, tmp_path, micro_backbone):
    from restuning.bypass import BypassConfig, build_bypass
    from tuner_store.artifact import classification_artifact, encode_artifact

    config = BypassConfig.create(micro_backbone.info, num_classes=2, dim=4)
    artifact = classification_artifact("hostile", build_bypass(config, micro_backbone.embed_dim, seed=5),
                                       [HOSTILE_LABEL, "plain"], micro_backbone, {})
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(encode_artifact(artifact))
    open_console(browser, server)
    set_token(browser, TOKEN)
    upload(browser, path)
    wait(browser, lambda d: css(d, 'tr[data-tuner="hostile"] .serving'), what="the hostile tuner serving")
    wait(browser, lambda d: HOSTILE_LABEL in css(d, 'tr[data-tuner="hostile"] td.labels')[0].text, what="labels")
    by_id(browser, "classify-tasks").send_keys("hostile")
    by_id(browser, "classify-file").send_keys(str(SAMPLE))
    wait(browser, lambda d: css(d, '#classify-results article[data-task="hostile"]'), what="the hostile result")
    labels = [e.text for e in css(browser, '#classify-results article[data-task="hostile"] .label')]
    assert HOSTILE_LABEL in labels
    assert css(browser, "#tuners-body img, #classify-results img") == []  # text, never an element
    assert browser.execute_script("return window.__owned") is None
    shot(browser, shots, "hostile-label", center='tr[data-tuner="hostile"]')
    assert problems_in_log(browser) == []
    # delete it through the page: two clicks on its row's button
    button = css(browser, 'tr[data-tuner="hostile"] button.danger')[0]
    button.click()
    assert "Confirm" in button.text
    button.click()
    wait(browser, lambda d: not css(d, 'tr[data-tuner="hostile"]'), what="the deleted row gone")
    assert httpx.get(f"{server.url}/v1/tuners/hostile", timeout=30).status_code == 404


def test_generate_shows_the_prompt_by_style_grid(server, browser, shots):
    open_console(browser, server)
    assert by_id(browser, "generate").is_displayed()
    wait(browser, lambda d: len(css(d, "#generate-styles input[type=checkbox]")) == 3, what="the styles")
    styles = [e.get_attribute("value") for e in css(browser, "#generate-styles input[type=checkbox]")]
    assert styles == ["base", "ink", "neon"]
    steps = by_id(browser, "generate-steps")
    steps.clear()
    steps.send_keys("2")
    by_id(browser, "generate-button").click()
    wait(browser, lambda d: by_id(d, "generate-grid").is_displayed(), timeout=120, what="the grid")
    rows = css(browser, "#generate-grid tbody tr")
    assert [r.find_element("css selector", "th").text for r in rows] == ["a red boat", "a small house"]
    images = css(browser, "#generate-grid tbody img")
    assert len(images) == 2 * 3
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
               for img in images)
    shot(browser, shots, "generate", "generate")
    # a style that does not exist: the server's error, shown as its JSON error
    browser.execute_script("""
        const box = document.getElementById('generate-styles');
        const input = document.createElement('input');
        input.type = 'checkbox'; input.value = 'nosuchstyle'; input.checked = true; box.append(input);""")
    by_id(browser, "generate-button").click()
    wait(browser, lambda d: by_id(d, "generate-error").is_displayed(), what="the error box")
    assert by_id(browser, "generate-error").text.startswith("404: unknown style(s): nosuchstyle")
    assert problems_in_log(browser) == []


def test_the_page_loads_nothing_from_elsewhere_and_sends_its_security_headers(server, browser):
    open_console(browser, server)
    origins = browser.execute_script(
        "return [...new Set(performance.getEntriesByType('resource').map(e => new URL(e.name).origin))]")
    assert origins == [server.url], origins
    for path in ("/ui/", "/ui/app.js", "/ui/app.css"):
        r = httpx.get(f"{server.url}{path}", timeout=30)
        assert r.status_code == 200
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in httpx.get(f"{server.url}/ui/", timeout=30).text  # no inline script at all
    assert httpx.get(f"{server.url}/ui/../server/app.py", timeout=30).status_code == 404
