"""The web page at ``/``, end to end in a real browser: Debian's chromium, headless, driven by Selenium through
Debian's chromium-driver, against a real ``voicedb serve`` on loopback with the offline test checkpoint and
its API key on. Screenshots go to ``$VOICEDB_ARTIFACTS`` (else the test's temporary directory)."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile
from services import unavailable
from test_server import running

from voicedb import VoiceDB
from voicedb.server.app import STATIC

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT_S = 120  # speech and enrollment run the model on a CPU
KEY = "page-test-key"


def test_the_page_needs_nothing_from_the_network():
    """Offline: no CDN, no remote fonts or scripts; every file the page loads is served from ``/static``."""
    for path in STATIC.iterdir():
        assert not re.search(r"https?://", path.read_text()), f"{path.name} refers to another site"
    page = (STATIC / "index.html").read_text()
    assert set(re.findall(r'(?:src|href)="(/[^"]+)"', page)) == {"/static/style.css", "/static/app.js"}


@pytest.fixture
def browser(tmp_path: Path) -> Iterator:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        unavailable("Debian's chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,2200",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
    ):
        options.add_argument(flag)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("VOICEDB_ARTIFACTS") or tmp_path / "artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def test_a_user_enrolls_hears_speaks_matches_renames_and_deletes_from_the_page(
    browser, artifacts: Path, checkpoint: Path, multi_clip_speakers, tmp_path: Path
):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import Select, WebDriverWait

    (speaker, (clip, probe, *_)), (other, (other_clip, *_)) = list(multi_clip_speakers.items())[:2]
    wait = WebDriverWait(browser, WAIT_S, ignored_exceptions=[StaleElementReferenceException])  # cards re-render

    def text_of(selector: str) -> str:
        return browser.find_element(By.CSS_SELECTOR, selector).text

    def until_text(selector: str, pattern: str) -> str:
        wait.until(lambda _: re.search(pattern, text_of(selector)))
        return text_of(selector)

    def card(name: str):
        wait.until(lambda _: name in [c.text for c in browser.find_elements(By.CSS_SELECTOR, ".card-name")])
        return next(
            c
            for c in browser.find_elements(By.CSS_SELECTOR, ".card")
            if c.find_element(By.CSS_SELECTOR, ".card-name").text == name
        )

    def enroll(name: str, path: Path) -> None:
        field = browser.find_element(By.ID, "enroll-name")
        field.clear()
        field.send_keys(name)
        browser.find_element(By.ID, "enroll-files").send_keys(str(path))
        browser.find_element(By.ID, "enroll-check").click()
        wait.until(shown.element_to_be_clickable((By.ID, "enroll-confirm")))
        assert re.search(r"1 clip, \d+\.\d s of audio", text_of("#enroll-report"))
        browser.find_element(By.ID, "enroll-confirm").click()
        until_text("#enroll-report", f"Enrolled {name} ")
        card(name)

    with VoiceDB(tmp_path / "library", checkpoint=checkpoint, device="cpu") as db, running(db, api_key=KEY) as url:
        browser.get(url)
        wait.until(shown.visibility_of_element_located((By.ID, "key-input")))  # asked once, on the first call
        browser.find_element(By.ID, "key-input").send_keys(KEY, Keys.ENTER)
        until_text("#voice-count", "No voices yet")

        enroll(speaker, clip)
        enroll(other, other_clip)
        assert text_of("#messages") == ""
        until_text("#voice-count", "2 of 2 voices")
        browser.find_element(By.ID, "search").send_keys(speaker)
        until_text("#voice-count", "1 of 2 voices")
        assert [c.text for c in browser.find_elements(By.CSS_SELECTOR, ".card-name")] == [speaker]
        browser.find_element(By.ID, "search").send_keys(Keys.CONTROL, "a", Keys.DELETE)
        until_text("#voice-count", "2 of 2 voices")

        # a clip recorded after the check must be checked too before Enroll takes it (chromium's fake microphone)
        browser.find_element(By.ID, "enroll-name").send_keys("recorded-voice")
        browser.find_element(By.ID, "enroll-files").send_keys(str(probe))
        browser.find_element(By.ID, "enroll-check").click()
        wait.until(shown.element_to_be_clickable((By.ID, "enroll-confirm")))
        record = browser.find_element(By.ID, "enroll-record")
        record.click()
        wait.until(lambda _: record.get_attribute("aria-pressed") == "true")
        time.sleep(1.5)
        record.click()
        until_text("#enroll-recorded", r"recording-1\.(webm|ogg) \(\d+ KB\)")
        assert not browser.find_element(By.ID, "enroll-confirm").is_enabled()
        alice = card(speaker)
        play = alice.find_element(By.CSS_SELECTOR, ".play-clip")
        play.click()
        wait.until(lambda _: play.get_attribute("data-played") == "true")
        browser.save_screenshot(str(artifacts / "web-page-voices.png"))

        Select(browser.find_element(By.ID, "speak-voice")).select_by_visible_text(speaker)
        assert "english" in [o.text for o in Select(browser.find_element(By.ID, "speak-model")).options]
        browser.find_element(By.ID, "speak-seed").send_keys("7")
        browser.find_element(By.ID, "speak-play").click()
        status = until_text("#speak-status", r"^Spoke \d+\.\d s of audio with seed 7")
        assert float(re.search(r"Spoke (\d+\.\d) s", status).group(1)) > 0
        Select(browser.find_element(By.ID, "speak-format")).select_by_visible_text("wav")
        browser.find_element(By.ID, "speak-download").click()
        until_text("#speak-status", r"Saved speech-7\.wav")
        saved = browser.downloads / "speech-7.wav"
        wait.until(lambda _: saved.exists() and saved.stat().st_size > 44)
        assert soundfile.info(str(saved)).samplerate == 24_000

        browser.find_element(By.ID, "match-file").send_keys(str(probe))
        browser.find_element(By.ID, "match-find").click()
        until_text("#match-verdict", "threshold")
        results = browser.find_elements(By.CSS_SELECTOR, "#match-results .result-name")
        assert results[0].text.startswith(f"{speaker} — ")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#match-results .bar .threshold")) == len(results)
        browser.find_element(By.ID, "match").screenshot(str(artifacts / "web-page-match.png"))

        rename = card(speaker).find_element(By.CSS_SELECTOR, ".card-rename-input")
        rename.clear()
        rename.send_keys("renamed-voice")
        card(speaker).find_element(By.CSS_SELECTOR, ".card-rename").click()
        tags = card("renamed-voice").find_element(By.CSS_SELECTOR, ".card-tags-input")
        tags.send_keys("narrator")
        card("renamed-voice").find_element(By.CSS_SELECTOR, ".card-retag").click()
        wait.until(lambda _: "narrator" in card("renamed-voice").find_element(By.CSS_SELECTOR, ".card-tags").text)
        Select(browser.find_element(By.ID, "tag-filter")).select_by_visible_text("narrator")
        until_text("#voice-count", "1 of 2 voices")
        assert [v.name for v in db.list(tag="narrator")] == ["renamed-voice"]

        card("renamed-voice").find_element(By.CSS_SELECTOR, ".card-delete").click()
        wait.until(shown.alert_is_present())
        browser.switch_to.alert.accept()
        until_text("#voice-count", "1 of 1 voices")  # the tag went with its only voice, so the filter lets go
        assert [v.name for v in db.list()] == [other]
        card(other)
        assert text_of("#messages") == ""


def test_the_page_shows_errors_in_one_line(browser, checkpoint: Path, tmp_path: Path):
    """A request the server refuses is shown as its message, not lost in the console."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with VoiceDB(tmp_path / "library", checkpoint=checkpoint, device="cpu") as db, running(db) as url:
        browser.get(url)
        wait = WebDriverWait(browser, WAIT_S)
        wait.until(lambda _: "No voices yet" in browser.find_element(By.ID, "voice-count").text)
        empty = tmp_path / "silence.wav"
        soundfile.write(str(empty), [0.0] * 24_000, 24_000)
        browser.find_element(By.ID, "enroll-name").send_keys("nobody")
        browser.find_element(By.ID, "enroll-files").send_keys(str(empty))
        browser.find_element(By.ID, "enroll-check").click()
        wait.until(lambda _: browser.find_element(By.ID, "messages").text.startswith("Error: "))
        message = browser.find_element(By.ID, "messages").text
        assert "\n" not in message and "silence.wav" in message
