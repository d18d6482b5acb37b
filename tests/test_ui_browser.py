"""Web UI click-through in real headless Chromium (Debian package) driven by Playwright."""

import shutil

import pytest
import soundfile as sf
from conftest import speechlike
from live_server import CHROMIUM_FLAGS, live_server

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = CHROMIUM_FLAGS


@pytest.fixture()
def server_url(make_engine, tmp_path):
    pytest.importorskip("uvicorn")
    from editx.server.app import create_app
    from editx.server.settings import ServerSettings

    # built-in voice warming off: /readyz (the page's "ready") would otherwise wait for 16 prompt
    # encodings, which on a loaded machine outlast the page's wait
    app = create_app(make_engine(), settings=ServerSettings(data_dir=tmp_path / "data", warm_builtin_voices=False))
    with live_server(app, start_timeout_s=120) as url:
        yield url


def test_clone_click_through(server_url, tmp_path):
    if not shutil.which("chromium") and not __import__("os").path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (scripts/setup.sh installs it in CI)")
    sync_api = pytest.importorskip("playwright.sync_api")
    clip = tmp_path / "prompt.wav"
    a = speechlike()
    sf.write(clip, a.samples, a.sample_rate)
    with sync_api.sync_playwright() as p:
        # Playwright gives every launch a fresh, empty profile directory of its own
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(server_url + "/")
            page.wait_for_selector("#ready:text('ready')", timeout=30_000)
            assert page.inner_text("#backend") == "editx"
            page.set_input_files("#prompt-file", str(clip))
            page.fill("#prompt-text", "hello world")
            page.click("#register")
            page.wait_for_selector("#status.ok", timeout=60_000)
            assert page.locator("#voice-rows tr").count() == 1
            page.fill("#target-text", "a sentence from the browser")
            page.fill("#seed", "5")
            page.click("#clone-btn")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('done')",
                                   timeout=120_000)
            assert page.get_attribute("#player", "src").startswith("blob:")
            stages = page.locator("#timeline .stage")
            assert stages.count() >= 4
            assert "flow" in page.inner_text("#timeline")
            assert "prompt=" in page.inner_text("#cache")
            # edit the last output: pickers are filled from /v1/edits
            page.select_option("#edit-type", "emotion")
            page.select_option("#edit-info", "happy")
            page.click("#edit-btn")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('done')",
                                   timeout=120_000)
            # verified clone: random fixture weights never say the words, so all 3 attempts fail and
            # the best comes back marked, with its scores (needs editx[quality])
            if __import__("importlib").util.find_spec("faster_whisper") is not None:
                page.check("#verify")
                page.click("#clone-btn")
                page.wait_for_function("document.getElementById('status').textContent.startsWith('done')",
                                       timeout=300_000)
                shown = page.inner_text("#verification")
                assert "NOT verified · WER " in shown and "speaker similarity" in shown and "/3" in shown
                assert "verify" in page.inner_text("#timeline")
            page.screenshot(path=str(tmp_path / "ui.png"))
        finally:
            browser.close()
