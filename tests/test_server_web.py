"""The web page in headless Chromium (Debian's chromium + chromium-driver: scripts/install-browser.sh),
driven with selenium: type a text, press Speak, hear it stream (WebAudio started with bytes received),
and download a WAV that decodes; upload a voice through the page; the multilingual model's language picker."""

from __future__ import annotations

import base64
import io
import shutil
import wave

import pytest

from faster_chatterbox.server import ServerOptions
from server_helpers import SR, LiveServer, clip_bytes, family_tts

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="headless Chromium missing: bash scripts/install-browser.sh")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LiveServer(options=ServerOptions(voices_dir=tmp_path_factory.mktemp("voices"))) as live:
        yield live


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def body_data(driver, name: str) -> str:
    return driver.find_element(By.TAG_NAME, "body").get_attribute(f"data-{name}")


def test_speak_streams_plays_and_downloads_a_wav(server, browser):
    browser.get(server.url)
    WebDriverWait(browser, 30).until(lambda d: body_data(d, "state") == "idle")
    assert browser.find_element(By.ID, "random-banner").is_displayed()  # random weights, said on the page
    assert "chatterbox" in browser.find_element(By.ID, "model-info").text
    assert not browser.find_element(By.ID, "language-label").is_displayed()  # English only
    voices = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "voice")).options]
    assert voices[0] == "default" and "alloy" in voices
    text = browser.find_element(By.ID, "text")
    text.clear()
    text.send_keys("Hello from the browser.")
    browser.find_element(By.CSS_SELECTOR, "#params summary").click()
    browser.find_element(By.ID, "seed").send_keys("5")
    browser.find_element(By.ID, "speak").click()
    WebDriverWait(browser, 60).until(lambda d: body_data(d, "state") in ("done", "error"))
    assert body_data(browser, "state") == "done", browser.find_element(By.ID, "status").text
    assert body_data(browser, "played") == "1"  # WebAudio was running and buffers were scheduled
    received = int(body_data(browser, "bytes"))
    assert received > SR  # over half a second of 16-bit audio
    link = browser.find_element(By.ID, "download")
    assert link.is_displayed() and link.get_attribute("download") == "speech.wav"
    encoded = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0]).then(r => r.arrayBuffer()).then(buffer => {
            let s = ""; new Uint8Array(buffer).forEach(b => s += String.fromCharCode(b)); done(btoa(s));
        });""", link.get_attribute("href"))
    with wave.open(io.BytesIO(base64.b64decode(encoded))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SR, 1, 2)
        assert w.getnframes() * 2 == received and w.getnframes() > 0


def test_upload_a_voice_from_the_page(server, browser, tmp_path):
    browser.get(server.url)
    WebDriverWait(browser, 30).until(lambda d: body_data(d, "state") == "idle")
    clip = tmp_path / "me.wav"
    clip.write_bytes(clip_bytes(seconds=3.0, seed=4))
    browser.find_element(By.CSS_SELECTOR, "#upload-section summary").click()
    browser.find_element(By.ID, "upload-name").send_keys("browser voice")
    browser.find_element(By.ID, "upload-file").send_keys(str(clip))
    browser.find_element(By.CSS_SELECTOR, "#upload button[type=submit]").click()
    WebDriverWait(browser, 60).until(lambda d: "added" in d.find_element(By.ID, "upload-status").text)
    picker = Select(browser.find_element(By.ID, "voice"))
    assert picker.first_selected_option.get_attribute("value") == "browser voice"
    assert browser.find_element(By.ID, "delete-voice").is_enabled()


def test_the_multilingual_page_picks_a_language(browser, tmp_path):
    tts = family_tts("multilingual", tmp_path)
    try:
        with LiveServer(tts) as live:
            browser.get(live.url)
            WebDriverWait(browser, 30).until(lambda d: body_data(d, "state") == "idle")
            assert "multilingual" in browser.find_element(By.ID, "model-info").text
            picker = Select(browser.find_element(By.ID, "language"))
            assert picker.first_selected_option.get_attribute("value") == "en"
            picker.select_by_value("fr")
            body = browser.execute_script("return requestBody();")  # what Speak sends
            assert (body["model"], body["language"]) == ("multilingual", "fr")
    finally:
        tts.close()
