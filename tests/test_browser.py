"""The browser page of `crab-rt serve` in a real browser: headless Chromium from Debian's packages, driven by
Selenium through the system's chromedriver, with Chromium's fake microphone playing samples/jfk.flac.

`make test` installs Chromium (`make browser`, when root with apt-get); without it these tests skip and say why.
Screenshots go to build/test-output/browser/ (README's picture of the page comes from there).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("websockets")
pytest.importorskip("prometheus_client")
selenium = pytest.importorskip("selenium", reason="selenium is not installed (the dev extra has it)")

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from ws_helpers import JFK, metric  # noqa: E402

from crab_rt.runtime.asr import AsrConfig  # noqa: E402
from crab_rt.runtime.pipeline import PipelineConfig  # noqa: E402
from crab_rt.serve.server import ServerConfig, serve_in_background  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SHOTS = Path(__file__).resolve().parents[1] / "build" / "test-output" / "browser"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Chromium and its chromedriver are not installed (Debian: apt-get install chromium chromium-driver; "
    "`make test` does it when root)")


@pytest.fixture(scope="module")
def jfk_wav(tmp_path_factory) -> Path:
    """samples/jfk.flac as 16-bit WAV, the format of Chromium's --use-file-for-fake-audio-capture."""
    import soundfile as sf

    audio, rate = sf.read(JFK, dtype="int16")
    path = tmp_path_factory.mktemp("fake-mic") / "jfk.wav"
    sf.write(path, audio, rate, subtype="PCM_16")
    return path


def chromium(profile: Path, microphone: Path, allow_microphone: bool = True, trust_any_certificate: bool = False):
    """Headless Chromium whose microphone plays `microphone` (in a loop) and whose permission prompt says yes
    (or no). The background-networking flags keep it from calling Google's hosts (this machine's network is
    closed)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--window-size=1100,1500", f"--user-data-dir={profile}",
                 "--use-fake-ui-for-media-stream" if allow_microphone else "--deny-permission-prompts",
                 "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={microphone}"):
        options.add_argument(flag)
    if trust_any_certificate:  # the test's self-signed certificate
        options.add_argument("--ignore-certificate-errors")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(predicate, timeout: float, what: str, driver):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    log = "\n".join(str(entry) for entry in driver.get_log("browser"))
    pytest.fail(f"{what}: not seen within {timeout:.0f} s; status: "
                f"{driver.find_element(By.ID, 'status').text!r}; alert: {driver.find_element(By.ID, 'alert').text!r}"
                f"; browser log:\n{log}")


def rows(driver) -> list[dict]:
    """The timeline as data, one dict per utterance row, read in one script (a row's children are replaced when
    its final event arrives, so element handles held across calls could go stale)."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#timeline li.utterance')].map(row => ({
            id: Number(row.dataset.utteranceId),
            stage: row.dataset.stage,
            label: row.querySelector('.label').textContent,
            probabilities: Object.fromEntries([...row.querySelectorAll('.prob')].map(
                p => [p.dataset.label, Number(p.dataset.probability)])),
            text: row.querySelector('.text').textContent,
            latency_ms: row.querySelector('.latency').dataset.endToEventMs,
        }));""")


def test_microphone_to_timeline_in_chromium(tiny_bundle, jfk_wav, tmp_path):
    """Speak jfk into the page's microphone: a row per utterance with jfk's words, a label, the probabilities and
    the latency; the speaking indicator follows speech_start/speech_end; Stop ends the stream with `done`."""
    pipeline = PipelineConfig(asr=AsrConfig(model="tiny.en", device="cpu"), backend="onnxruntime")
    with serve_in_background(tiny_bundle, pipeline, ServerConfig(port=0)) as server:
        driver = chromium(tmp_path / "profile", jfk_wav)
        try:
            driver.get(server.server.page_url)
            assert driver.title == "crab-rt: live speech emotion"
            unlabelled = driver.execute_script(
                "return [...document.querySelectorAll('input, button')]"
                ".filter(e => e.tagName === 'INPUT' ? e.labels.length === 0 : !e.textContent.trim())"
                ".map(e => e.id)")
            assert unlabelled == []  # every control has a label a screen reader can read
            for _ in range(12):  # the keyboard alone: Tab to Start, then Enter
                if driver.switch_to.active_element.get_attribute("id") == "start":
                    break
                ActionChains(driver).send_keys(Keys.TAB).perform()
            assert driver.switch_to.active_element.get_attribute("id") == "start"
            ActionChains(driver).send_keys(Keys.ENTER).perform()

            def three_final():
                final = [r for r in rows(driver) if r["stage"] == "final" and r["text"]]
                return final if len(final) >= 3 else None

            final = wait_for(three_final, 60, "three final events", driver)
            driver.find_element(By.ID, "stop").click()
            wait_for(lambda: driver.find_element(By.ID, "status").text.startswith("Stream ended (stop)"), 30,
                     "the stream's done", driver)
            SHOTS.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(SHOTS / "page-microphone.png"))
            speech_starts = int(driver.find_element(By.ID, "speaking").get_attribute("data-starts"))
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        finally:
            driver.quit()

    text = " ".join(r["text"] for r in final).lower()
    assert "ask not" in text and "your country" in text, text
    assert [r["id"] for r in final] == list(range(len(final)))
    for row in final:
        assert row["label"] in ("a", "b", "c", "d")
        assert sorted(row["probabilities"]) == ["a", "b", "c", "d"]
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=0.02)
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
        assert 0 < float(row["latency_ms"]) < 10_000
    assert speech_starts >= len(final)
    assert not errors, errors  # no script error, no failed request (favicon included)
    assert (SHOTS / "page-microphone.png").stat().st_size > 10_000


def test_wrong_token_is_explained(tiny_bundle, jfk_wav, tmp_path):
    """A server with a token: the page says it needs one, then that the one typed is wrong; no stream opens."""
    config = ServerConfig(port=0, token="right-token")
    with serve_in_background(tiny_bundle, PipelineConfig(asr=None, backend="onnxruntime"), config) as server:
        driver = chromium(tmp_path / "profile", jfk_wav)
        try:
            driver.get(server.server.page_url)
            alert = driver.find_element(By.ID, "alert")
            driver.find_element(By.ID, "start").click()
            wait_for(alert.is_displayed, 20, "the refusal", driver)
            assert alert.text.startswith("Refused (401 Unauthorized): This server needs a token.")
            driver.find_element(By.ID, "token").send_keys("wrong-token")
            driver.find_element(By.ID, "start").click()
            wait_for(lambda: "The token is wrong" in alert.text, 20, "the wrong token's message", driver)
            assert "missing or wrong bearer token" in alert.text
            assert driver.switch_to.active_element.get_attribute("id") == "token"  # focus goes where to fix it
            assert driver.find_element(By.ID, "start").is_enabled()
            assert driver.find_elements(By.CSS_SELECTOR, "#timeline li") == []
            SHOTS.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(SHOTS / "page-wrong-token.png"))
        finally:
            driver.quit()
        assert metric(server.port, 'crab_rt_connections_refused_total{reason="unauthorized"}') == 2
        assert metric(server.port, "crab_rt_streams_total") == 0
    assert (SHOTS / "page-wrong-token.png").stat().st_size > 10_000


def test_denied_microphone_is_explained_and_a_file_streams_instead(tiny_bundle, jfk_wav, self_signed_cert, tmp_path):
    """Over TLS (the page on https://, its stream on wss://): the microphone permission denied, the page says so
    and how to allow it. Then the second mode: jfk as a local file, streamed at real time, gives its first
    utterance's row; Stop ends the stream with `done`."""
    cert, key = self_signed_cert
    config = ServerConfig(port=0, tls_cert=str(cert), tls_key=str(key))
    with serve_in_background(tiny_bundle, PipelineConfig(asr=None, backend="onnxruntime"), config) as server:
        driver = chromium(tmp_path / "profile", jfk_wav, allow_microphone=False, trust_any_certificate=True)
        try:
            assert server.server.page_url.startswith("https://127.0.0.1:")
            driver.get(server.server.page_url)
            alert = driver.find_element(By.ID, "alert")
            driver.find_element(By.ID, "start").click()
            wait_for(alert.is_displayed, 20, "the denied microphone's message", driver)
            assert alert.text.startswith("Microphone access was denied. Allow this page to use the microphone")
            assert driver.find_element(By.ID, "start").is_enabled()

            assert not driver.find_element(By.ID, "file").is_displayed()
            driver.find_element(By.ID, "mode-file").click()
            driver.find_element(By.ID, "file").send_keys(str(jfk_wav))
            driver.find_element(By.ID, "start").click()
            first = wait_for(lambda: [r for r in rows(driver) if r["stage"] == "final"], 30, "a file's event", driver)
            assert alert.is_displayed() is False
            assert "jfk.wav (11.0 s) at real time" in driver.find_element(By.ID, "status").text
            driver.find_element(By.ID, "stop").click()
            wait_for(lambda: driver.find_element(By.ID, "status").text.startswith("Stream ended (stop)"), 30,
                     "the stream's done", driver)
            assert driver.execute_script("return location.protocol") == "https:"  # and so the stream was wss:
        finally:
            driver.quit()
    assert first[0]["id"] == 0 and first[0]["text"] == ""  # no ASR on this server
    assert sorted(first[0]["probabilities"]) == ["a", "b", "c", "d"]
