"""The upload page in a real headless browser (Debian's chromium through its chromedriver, driven
by Selenium): paste a token, pick a source, upload a file, watch it become "ingested", see the
source fresh and its last run's report, then ask a question only that file answers and see the
answer cite it. The answer service is real (Weaviate, the embedding model, the ledger); its LLM
is the scripted OpenAI-compatible server, which answers from the passages it is given.

Fails, never skips, when chromium or chromedriver is missing: scripts/test installs them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_LLM_PORT, empty_index_and_ledger
from scripted_llm import scripted_llm_server

from freshkb.api import create_app
from freshkb.core.config import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PAGE_PORT = int(os.environ.get("FRESHKB_TEST_UPLOAD_PAGE_PORT", "25501"))
SCRIPTED_PORT = TEST_LLM_PORT + 17  # a port no other test module uses
TOKEN = "page-test-upload"
CONFIG = """\
sources:
  - name: field-guides
    kind: documents
    location: guides
    owner: outdoor-team@example.com
    freshness: {max_age: 1h}
"""
AURORA = """# Aurora lantern care

The Aurora lantern's glass globe is replaced free of charge for nineteen months after purchase.
Clean the reflector with a dry cloth; never immerse the lantern in water.
"""


@pytest.fixture(scope="module")
def page_url(
    weaviate_settings: Any, prefect_harness: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The API with the upload page, over a real answer service and an empty index."""
    from test_answer_e2e import served

    from freshkb.serving.runtime import build_runtime

    empty_index_and_ledger(weaviate_settings)
    root = tmp_path_factory.mktemp("page")
    (root / "freshkb.yaml").write_text(CONFIG)
    with scripted_llm_server(SCRIPTED_PORT) as llm_url:
        settings = Settings(
            config_file=root / "freshkb.yaml",
            llm_base_url=llm_url,
            llm_model="grounded",
            api_tokens={TOKEN: "upload"},
        )
        runtime = build_runtime(settings)
        try:
            app = create_app(settings, runtime.service, runtime.ready)
            with served(app, PAGE_PORT) as url:
                yield url
        finally:
            runtime.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless chromium through Debian's chromedriver; nothing is downloaded."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    # An explicit driver path: Selenium Manager (which downloads drivers) never runs.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_upload_on_the_page_is_ingested_and_answers_a_question_with_its_citation(
    page_url: str, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    document = tmp_path / "aurora-lantern.md"
    document.write_text(AURORA)
    browser.get(f"{page_url}/")  # the front door redirects to the page
    assert browser.current_url.endswith("/ui")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "connect").click()
    WebDriverWait(browser, 30).until(
        lambda b: (
            Select(b.find_element(By.ID, "source")).first_selected_option.text == "field-guides"
        )
    )
    browser.find_element(By.ID, "file-input").send_keys(str(document))
    row = '#documents tr[data-name="aurora-lantern.md"]'
    WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, row)))
    WebDriverWait(browser, 240, poll_frequency=1).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, row + '[data-state="ingested"]')),
        message="the uploaded document never showed as ingested",
    )
    chunks = browser.find_element(By.CSS_SELECTOR, row + " td.chunks").text
    assert int(chunks) >= 1
    WebDriverWait(browser, 15).until(
        lambda b: b.find_element(By.ID, "freshness-state").text == "fresh"
    )
    assert "completed" in browser.find_element(By.ID, "last-run").text

    browser.find_element(By.ID, "question").send_keys(
        "For how long is the Aurora lantern glass globe replaced free of charge?"
    )
    browser.find_element(By.ID, "ask").click()
    citation = '#citations li.citation[data-document="aurora-lantern.md"]'
    WebDriverWait(browser, 60).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, citation)),
        message="the answer did not cite the uploaded document",
    )
    assert "nineteen months" in browser.find_element(By.ID, "answer").text
    assert browser.find_element(By.ID, "mode").text.startswith("mode: normal")
    assert "field-guides" in browser.find_element(By.CSS_SELECTOR, citation).text
