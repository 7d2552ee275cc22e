"""The dashboard in a real browser (headless Chromium) against the real server.

One server for the module, with models ``two`` and ``three`` (copies of half_plus_two and
half_plus_three), ``flaky`` (gets a corrupt version), and a model named with HTML. Each test
waits for what the page shows (DOM state, with generous deadlines), never for time.
Skipped only when Chromium or chromedriver is not installed (``.ci/run`` installs both).

With ``PYSERVING_SCREENSHOTS=DIR`` the tests save the page as PNGs there (docs/ holds them).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from pyserving.server.dashboard.routes import CONTENT_SECURITY_POLICY
from pyserving.testing.browser import chromium_paths, start_chromium, stop_chromium
from tests.e2e.server import RunningServer

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        chromium_paths() is None, reason="chromium and chromedriver are not installed"
    ),
]

#: A model name that would run script if the page ever parsed it as HTML.
HOSTILE = "<img src=x onerror=window.__xss=1>"
DEADLINE = 90.0


def write_config(path: pathlib.Path, models: dict[str, pathlib.Path]) -> None:
    body = "".join(
        f"config {{ name: {json.dumps(name)} base_path: {json.dumps(str(base))} }}\n"
        for name, base in models.items()
    )
    path.write_text(f"model_config_list {{\n{body}}}\n")


@pytest.fixture(scope="module")
def repo(testdata: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("dashboard")
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu", root / "two")
    shutil.copytree(testdata / "saved_model_half_plus_three", root / "three")
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu", root / "flaky")
    shutil.copytree(testdata / "saved_model_half_plus_two_cpu", root / "hostile")
    return root


@pytest.fixture(scope="module")
def server(repo: pathlib.Path) -> Iterator[RunningServer]:
    config = repo / "models.config"
    write_config(
        config,
        {
            "two": repo / "two",
            "three": repo / "three",
            "flaky": repo / "flaky",
            HOSTILE: repo / "hostile",
        },
    )
    srv = RunningServer(
        [
            f"--model_config_file={config}",
            "--file_system_poll_wait_seconds=1",
            "--max_num_load_retries=0",
            "--model_memory_budget_bytes=200000000",
        ],
        repo / "server.log",
    )
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def browser(server: RunningServer) -> Iterator[Any]:
    driver = start_chromium(1280, 1000)
    driver.get(server.url + "/dashboard")
    yield driver
    stop_chromium(driver)


def wait_until(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.wait import WebDriverWait

    try:
        return WebDriverWait(driver, DEADLINE, poll_frequency=0.2).until(condition)
    except TimeoutException:
        raise AssertionError(f"the page never showed {what}") from None


#: The card of a model (found by its data attribute, compared in script: no selector quoting).
FIND_CARD = (
    "const c = [...document.querySelectorAll('article.model')]"
    ".find(a => a.dataset.model === arguments[0]) || null;"
)
CARD = FIND_CARD + " return c;"


def card(driver: Any, name: str) -> Any:
    return driver.execute_script(CARD, name)


def version_states(driver: Any, name: str) -> dict[int, str]:
    """``{version: state}`` of a model's card (state ERROR for a version with an error)."""
    rows = driver.execute_script(
        FIND_CARD
        + " if (!c) return null; return [...c.querySelectorAll('tr.version')]"
        + ".map(r => [r.dataset.version, r.dataset.state]);",
        name,
    )
    return {int(v): s for v, s in rows or []}


def screenshot(driver: Any, name: str, show: Any = None) -> None:
    """Save the page as ``$PYSERVING_SCREENSHOTS/name`` (when set), scrolled to ``show``."""
    directory = os.environ.get("PYSERVING_SCREENSHOTS")
    if directory:
        if show is not None:
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", show)
        driver.save_screenshot(str(pathlib.Path(directory) / name))
        driver.execute_script("window.scrollTo(0, 0);")


def test_page_shows_the_models_versions_and_states(browser: Any, server: RunningServer) -> None:
    wait_until(
        browser,
        lambda d: all(version_states(d, n) == {123: "AVAILABLE"} for n in ("two", "three")),
        "two and three at version 123, AVAILABLE",
    )
    assert browser.current_url == server.url + "/dashboard/"
    names = browser.execute_script(
        "return [...document.querySelectorAll('.model-name')].map(e => e.textContent);"
    )
    assert sorted(names) == sorted(["two", "three", "flaky", HOSTILE])
    facts = browser.find_element("id", "server-facts").text
    assert f"REST port\n{server.rest_port}" in facts or f"REST port {server.rest_port}" in facts
    assert "Models" in facts
    memory = browser.find_element("id", "memory-label").text
    assert "of a budget of 191 MiB" in memory, memory
    meta = card(browser, "two").find_element("css selector", ".model-meta").text
    assert re.search(
        r"RAM est\. [\d.]+ KiB, measured \+[\d.]+ [KM]iB \([\d.]+% of the budget\)", meta
    ), meta
    browser.find_element("css selector", "#flags summary").click()
    flags = browser.find_element("id", "flag-rows").text
    assert "--max_num_load_retries" in flags
    # Nothing the page loads or does is refused by its Content-Security-Policy.
    refused = [e for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert refused == []


def test_answers_carry_a_content_security_policy(server: RunningServer) -> None:
    for path in ("/dashboard/", "/dashboard/static/dashboard.js", "/dashboard/api/state"):
        response = server.client.get(path)
        assert response.status_code == 200
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY.decode()
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY.decode()
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY.decode()


def test_chart_has_data_after_traffic(browser: Any, server: RunningServer) -> None:
    for x in range(20):
        response = server.client.post("/v1/models/two:predict", json={"instances": [[float(x)]]})
        assert response.status_code == 200
    wait_until(
        browser,
        lambda d: (
            int(
                card(d, "two").find_element("css selector", ".chart").get_attribute("data-requests")
                or 0
            )
            >= 20
        ),
        "the 20 requests to two in its chart",
    )
    chart = card(browser, "two").find_element("css selector", ".chart")
    for bars in ("svg.rate path.bar-ok", "svg.latency path.bar-p99", "svg.latency path.bar-p50"):
        assert chart.find_element("css selector", bars).get_attribute("d").startswith("M"), bars
    assert "requests in the last" in chart.find_element("css selector", ".chart-summary").text


def test_version_swap_is_followed_without_a_reload(
    browser: Any, server: RunningServer, repo: pathlib.Path
) -> None:
    wait_until(browser, lambda d: version_states(d, "three") == {123: "AVAILABLE"}, "three 123")
    browser.execute_script("document.body.dataset.sameDocument = 'yes';")
    staging = repo / "staging-124"
    shutil.copytree(repo / "three" / "00000123", staging)
    staging.rename(repo / "three" / "00000124")
    wait_until(
        browser,
        lambda d: version_states(d, "three") == {124: "AVAILABLE", 123: "END"},
        "three's version 124 AVAILABLE and 123 ended",
    )
    assert browser.execute_script("return document.body.dataset.sameDocument;") == "yes"
    transitions = browser.find_element("id", "transitions").text
    assert "124" in transitions


def test_load_error_appears_with_its_message(
    browser: Any, server: RunningServer, repo: pathlib.Path
) -> None:
    staging = repo / "staging-200"
    staging.mkdir()
    (staging / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    staging.rename(repo / "flaky" / "00000200")
    wait_until(
        browser,
        lambda d: version_states(d, "flaky").get(200) == "ERROR",
        "flaky's version 200 failing",
    )
    status = server.client.get("/v1/models/flaky/versions/200").json()
    message = status["model_version_status"][0]["status"]["error_message"]
    assert message
    flaky = card(browser, "flaky")
    shown = flaky.find_element("css selector", "tr.version-error").text
    assert message in shown
    # The version serving before keeps serving, and the page says so.
    assert version_states(browser, "flaky")[123] == "AVAILABLE"
    screenshot(browser, "dashboard.png")


def test_try_it_sends_a_predict_and_shows_answer_and_latency(browser: Any) -> None:
    two = card(browser, "two")
    two.find_element("css selector", "details.tryit summary").click()
    wait_until(
        browser,
        lambda d: (
            card(d, "two").find_element("css selector", "details.tryit").get_attribute("data-ready")
            == "true"
        ),
        "the try-it request built",
    )
    tryit = card(browser, "two").find_element("css selector", "details.tryit")
    body = json.loads(tryit.find_element("css selector", "textarea").get_attribute("value"))
    assert body == {"signature_name": "serving_default", "inputs": {"x": [[1.0]]}}
    tryit.find_element("css selector", "button.tryit-send").click()
    wait_until(
        browser,
        lambda d: (
            card(d, "two")
            .find_element("css selector", "details.tryit")
            .get_attribute("data-status")
            == "200"
        ),
        "the predict answered",
    )
    result = json.loads(tryit.find_element("css selector", ".tryit-result").text)
    assert result == {"outputs": [[2.5]]}
    latency = tryit.find_element("css selector", ".tryit-latency").text
    assert re.fullmatch(r"HTTP 200 in \d+\.\d ms", latency), latency
    screenshot(browser, "dashboard-try-it.png", tryit)


def test_model_provided_strings_are_shown_as_text(browser: Any) -> None:
    wait_until(browser, lambda d: card(d, HOSTILE) is not None, "the HTML-named model")
    hostile = card(browser, HOSTILE)
    assert hostile.find_element("css selector", ".model-name").text == HOSTILE
    assert browser.find_elements("css selector", "main img") == []
    # Its try-it works through the normal API, with the name percent-encoded in the URL.
    hostile.find_element("css selector", "details.tryit summary").click()
    wait_until(
        browser,
        lambda d: (
            card(d, HOSTILE)
            .find_element("css selector", "details.tryit")
            .get_attribute("data-ready")
            == "true"
        ),
        "the HTML-named model's try-it request",
    )
    card(browser, HOSTILE).find_element("css selector", "button.tryit-send").click()
    wait_until(
        browser,
        lambda d: (
            card(d, HOSTILE)
            .find_element("css selector", "details.tryit")
            .get_attribute("data-status")
            == "200"
        ),
        "the HTML-named model's predict answered",
    )
    assert browser.execute_script("return window.__xss;") is None


def test_dashboard_off_is_not_found(testdata: pathlib.Path, tmp_path: pathlib.Path) -> None:
    srv = RunningServer(
        [
            f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
            "--model_name=two",
            "--dashboard=false",
        ],
        tmp_path / "server.log",
    )
    try:
        srv.wait_ready()
        for path in ("/dashboard", "/dashboard/", "/dashboard/api/state"):
            assert srv.client.get(path).status_code == 404, path
        assert srv.client.get("/v1/models/two").status_code == 200
    finally:
        assert srv.stop() == 0, srv.log()


def test_dashboard_is_on_by_default(server: RunningServer) -> None:
    response = httpx.get(server.url + "/dashboard", follow_redirects=False)
    assert response.status_code == 302
    assert response.headers["location"] == "dashboard/"
