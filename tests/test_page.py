"""The listening page in a real browser (Debian's chromium driven by Playwright) against the real stack: a
Temporal dev server, both workers and the API on a uvicorn server, all in this process. It submits a song
through the page, plays it (metadata, a seek through HTTP Range), checks the waveform marks, downloads and
history, and saves desktop and phone screenshots under test-artifacts/."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest

from longsong.client import LongsongClient
from longsong.devstack import free_port
from longsong.service.db import Database
from longsong.service.keys import create_key
from longsong.storage import open_storage
from longsong.worker import in_process

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
CHROMIUM = Path("/usr/bin/chromium")
# No network here: without these chromium stalls on lookups (updates, sync, QUIC probes).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PROMPT = 'dreamy synthwave <img src=x onerror="window.__xss=1">'  # shown as text, never as markup
DONE_MS = 240_000  # a wait limit, not an assertion: the procedural engine needs seconds


class Api:
    """Workers and the API in one event loop on a thread (uvicorn's server is a coroutine there)."""

    def __init__(self, address: str, settings, db: Database):
        from longsong.service.app import create_app

        self.port = free_port()
        self.error: BaseException | None = None
        self.server = None
        self._thread = threading.Thread(target=self._run, args=(address, settings, db, create_app), daemon=True)

    def _run(self, address, settings, db, create_app) -> None:
        import uvicorn

        async def main():
            async with in_process(address, settings, open_storage(settings=settings)) as client:
                app = create_app(settings, client=LongsongClient(client, settings), db=db)
                self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                            log_level="warning"))
                await self.server.serve()

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            self.error = e

    def __enter__(self) -> str:
        self._thread.start()
        while not (self.server is not None and self.server.started):
            if not self._thread.is_alive():
                raise RuntimeError(f"the API did not start: {self.error!r}")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the API thread did not stop"


@pytest.fixture
def site(temporal_address, settings):
    if not CHROMIUM.exists():
        pytest.fail("run `make test-data` (installs chromium)")
    settings.home.mkdir(parents=True, exist_ok=True)
    db = Database.open(settings.database)
    token = create_key(db, "pageuser", "page").token
    try:
        with Api(temporal_address, settings, db) as base:
            yield base, token
    finally:
        db.close()


def wait_seeked(page, t: float) -> float:
    return page.evaluate("""(t) => new Promise((resolve) => {
        const a = document.querySelector('#player');
        a.addEventListener('seeked', () => resolve(a.currentTime), {once: true});
        a.currentTime = t;
    })""", t)


def side_by_side(page) -> bool:
    """The form and the song in two columns (else one above the other)."""
    form, song = (page.locator(sel).bounding_box() for sel in ("#song-form", "#song"))
    return song["x"] >= form["x"] + form["width"]


def test_page_makes_plays_and_lists_a_song(site):
    from playwright.sync_api import expect, sync_playwright

    base, token = site
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page = context.new_page()
        crashes: list[str] = []
        page.on("pageerror", lambda e: crashes.append(str(e)))
        audio_statuses: list[int] = []
        page.on("response", lambda r: "/files/track." in r.url and audio_statuses.append(r.status))
        page.goto(base + "/")

        # A wrong key: the error line, and the key is asked for again.
        page.fill("#key-input", "ls_not_a_key")
        page.click("#key-save")
        expect(page.locator("#key-error")).to_be_visible()
        expect(page.locator("#key-input")).to_be_visible()
        assert page.evaluate("localStorage.getItem('longsong.key')") is None
        page.fill("#key-input", token)
        page.click("#key-save")
        expect(page.locator("#app")).to_be_visible()
        expect(page.locator("#whoami")).to_contain_text("pageuser")

        # The server's 422 lands next to its field.
        page.fill("#prompt", PROMPT)
        page.fill("#duration", "20")
        page.click("#submit")
        expect(page.locator('[data-error-for="duration_s"]')).to_contain_text("duration_s")
        expect(page.locator("#duration")).to_have_attribute("aria-invalid", "true")

        page.fill("#duration", "60")  # three windows: two seams to mark
        page.fill("#bpm", "112")
        page.select_option("#key", "A minor")
        page.fill("#genre", "synthwave")
        page.fill("#mood", "dreamy")
        for start, text in (("0", "intro"), ("30", "chorus")):
            page.click("#section-add")
            row = page.locator(".section-row").last
            row.locator(".section-start").fill(start)
            row.locator(".section-text").fill(text)
        page.check("input[name=formats][value=flac]")
        page.evaluate("""() => { window.__statuses = [];
            new MutationObserver(() => window.__statuses.push(document.querySelector('#song').dataset.status))
                .observe(document.querySelector('#song'), {attributes: true, attributeFilter: ['data-status']}); }""")
        page.click("#submit")
        expect(page.locator('[data-error-for="duration_s"]')).to_be_hidden()
        page.wait_for_selector('#song[data-status="completed"]', timeout=DONE_MS)
        assert "running" in page.evaluate("window.__statuses")
        song_id = page.text_content("#song-id")
        song = httpx.get(f"{base}/v1/songs/{song_id}", headers={"Authorization": f"Bearer {token}"}).json()
        result = song["result"]
        assert song["status"] == "completed" and set(song["files"]) >= {"mp3", "wav", "flac", "waveform"}

        # Escaped: the prompt is text, its markup never ran.
        assert page.text_content("#song-prompt") == PROMPT
        assert page.evaluate("window.__xss") is None

        # The player: the song's duration, and a seek that sticks (the file is served with Range).
        page.wait_for_function("document.querySelector('#player').readyState >= 1")
        assert abs(page.evaluate("document.querySelector('#player').duration") - result["duration_s"]) <= 0.5
        assert abs(wait_seeked(page, 10) - 10) <= 0.5
        assert abs(page.evaluate("document.querySelector('#player').currentTime") - 10) <= 0.5
        assert 206 in audio_statuses, audio_statuses

        # The waveform with a mark per section and per seam, where they are in time.
        page.wait_for_function("(() => { const i = document.querySelector('#waveform');"
                               " return i.complete && i.naturalWidth > 0; })()")
        seams = page.locator("#marks .mark.seam")
        assert len(result["seams"]) == 2 and seams.count() == 2
        for mark, t in zip(seams.all(), result["seams"]):
            left = float(mark.evaluate("m => m.style.left").rstrip("%"))
            assert abs(left - t / result["duration_s"] * 100) < 0.01
        sections = page.locator("#marks .mark.section .label")
        assert sections.all_text_contents() == [s["prompt"] for s in result["sections"]] == ["intro", "chorus"]
        expect(page.locator("#quality")).to_contain_text("LUFS")

        # A download per file, each one a real download of the song's bytes.
        ext = {"waveform": "png", "metadata": "json"}
        for name in song["files"]:
            link = page.locator(f'a.download[data-format="{name}"]')
            expect(link).to_have_attribute("download", f"longsong-{song_id}.{ext.get(name, name)}")
        with page.expect_download() as download:
            page.click('a.download[data-format="flac"]')
        assert download.value.suggested_filename == f"longsong-{song_id}.flac"
        assert Path(download.value.path()).read_bytes()[:4] == b"fLaC"

        expect(page.locator(f'#history li[data-id="{song_id}"]')).to_be_visible()
        assert side_by_side(page)
        page.screenshot(path=str(ARTIFACTS / "page-desktop.png"), full_page=True)

        # A second tab: the key is remembered; the history reopens the song; nothing scrolls sideways at 375 px.
        phone = context.new_page()
        phone.on("pageerror", lambda e: crashes.append(str(e)))
        phone.set_viewport_size({"width": 375, "height": 800})
        phone.goto(base + "/")
        expect(phone.locator("#app")).to_be_visible()
        expect(phone.locator("#key-panel")).to_be_hidden()
        phone.click(f'#history li[data-id="{song_id}"] button')
        phone.wait_for_selector('#song[data-status="completed"]')
        phone.wait_for_function("(() => { const i = document.querySelector('#waveform');"
                                " return i.complete && i.naturalWidth > 0; })()")
        assert phone.evaluate("document.scrollingElement.scrollWidth") <= 375
        assert not side_by_side(phone)
        phone.screenshot(path=str(ARTIFACTS / "page-phone.png"), full_page=True)

        phone.click("#key-forget")
        expect(phone.locator("#key-panel")).to_be_visible()
        assert phone.evaluate("localStorage.getItem('longsong.key')") is None
        browser.close()
    assert not crashes, crashes
