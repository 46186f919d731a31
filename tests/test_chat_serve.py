"""`unimodal serve` end to end: a real server process on 127.0.0.1, a burst of API requests through
Gradio's queue, and a headless Chromium (Playwright, Debian's /usr/bin/chromium) using the page.

The screenshot goes to $UNIMODAL_TEST_ARTIFACTS when set, else to pytest's tmp folder; its path is
printed. Only 127.0.0.1 is contacted.
"""
import concurrent.futures
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the serve extra is not installed (pip install -e '.[serve]')")

from unimodal.unified.testing import tiny_model  # noqa: E402

# A server process (imports torch + gradio) and a browser: well over 20 s on 2 busy cores.
pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("UNIMODAL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Runs the CLI with `serve` registered whether or not unimodal.cli lists it yet.
CLI = ("import sys, unimodal.cli as c; c.COMMAND_MODULES += [m for m in ('serve',) if m not in c.COMMAND_MODULES]; "
       "sys.exit(c.main(sys.argv[1:]))")
PROMPT_LIMIT = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    tiny_model(seed=0, num_inference_steps=2).save_pretrained(root / "model")
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(root / "gradio"),
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", CLI, "serve", "--model", str(root / "model"), "--device", "cpu",
                             "--port", str(port), "--sessions", str(root / "sessions"),
                             "--limit", f"max_prompt_chars={PROMPT_LIMIT}", "--limit", "max_tokens=4"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited ({proc.returncode}):\n{(root / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer in 180 s:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, proc, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_burst_of_requests_queues_and_completes(server):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, proc, root = server
    clients = [Client(url, verbose=False) for _ in range(4)]             # four browser sessions
    jobs = []                       # (expected outcome, job); the queue may run them in any order
    for i in range(5):
        for k, c in enumerate(clients):
            if i == 0:
                jobs.append(("drawn", c.submit(f"a red square {k}", k, 2, 1.0, 2, api_name="/draw")))
            elif i == 1:
                jobs.append(("refused", c.submit("", k, 2, 1.0, 1, api_name="/draw")))
            elif i == 2:
                jobs.append(("refused", c.submit("x" * (PROMPT_LIMIT + 1), None, k, 2, 1.0, 1, api_name="/send")))
            elif i == 3:
                jobs.append(("rejected", c.submit("ok", k, 2, 1.0, 99, api_name="/draw")))   # beyond the N slider
            else:
                jobs.append(("either", c.submit("/critique", None, k, 2, 1.0, 1, api_name="/send")))
    deadline = time.monotonic() + 150
    for expect, job in jobs:
        try:
            chat, gallery, status, *_ = job.result(timeout=max(1.0, deadline - time.monotonic()))
        except AppError as e:
            assert expect == "rejected" and "greater than maximum" in str(e)
            continue
        except concurrent.futures.TimeoutError:
            pytest.fail("the burst did not complete in 150 s")
        assert expect != "rejected"
        if expect == "drawn":
            assert status == "" and gallery, status
        elif expect == "refused":
            assert "⚠" in status and "⚠" in chat[-1]["content"][0]["text"]
    assert proc.poll() is None                                          # still serving
    chat, gallery, status, _ = clients[0].predict("a blue square", 1, 2, 1.0, 1, api_name="/draw")
    assert status == "" and len(gallery) == 2
    assert len([p for p in (root / "sessions").iterdir() if (p / "session.json").is_file()]) == 4


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _artifacts(tmp_path) -> Path:
    d = Path(os.environ.get("UNIMODAL_TEST_ARTIFACTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _choose_upload(page, path: Path) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    # the widget shows the stem and the extension in separate elements
    shown = f"document.querySelector('#upload').innerText.includes('{path.stem}')"
    page.set_input_files("#upload input[type=file]", str(path))
    try:
        page.wait_for_function(shown, timeout=30_000)
    except PlaywrightTimeout:
        # On a loaded machine the first choice is sometimes dropped (the file input is still there:
        # choose again) and sometimes only slow (Gradio has replaced the input while it uploads).
        if page.locator("#upload input[type=file]").count():
            page.set_input_files("#upload input[type=file]", str(path))
        page.wait_for_function(shown)


def test_browser_draws_critiques_and_shows_bad_input(server, browser, tmp_path):
    url, proc, root = server
    page = browser.new_page(viewport={"width": 1280, "height": 960})
    page.set_default_timeout(180_000)  # a loaded 2-core CPU renders and generates slowly
    page.goto(url, wait_until="domcontentloaded")
    message = page.locator("#message textarea")
    message.wait_for()

    message.fill("a red square on blue")
    page.click("#draw")
    page.wait_for_selector("#gallery img")
    page.wait_for_function("document.querySelector('#gallery').innerText.includes('P(yes)')")
    assert "model says" in page.inner_text("#gallery")
    page.click("#critique")
    page.wait_for_function("document.querySelector('#chat').innerText.includes('critique of t')")

    # bad input: an oversize prompt, then a file that is not an image; the page says why
    message.fill("y" * (PROMPT_LIMIT + 5))
    page.click("#send")
    page.wait_for_function(f"document.querySelector('#status').innerText.includes('the limit is {PROMPT_LIMIT}')")
    fake = tmp_path / "notes.png"
    fake.write_text("not an image at all")
    _choose_upload(page, fake)
    message.fill("what is this?")
    page.click("#send")
    page.wait_for_function("document.querySelector('#status').innerText.includes('notes.png is not an image')")
    assert proc.poll() is None

    message.fill("draw a green square on yellow")                      # and it keeps serving
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('#gallery img').length >= 2")
    page.wait_for_function("document.querySelector('#status').innerText.trim() === ''")
    shot = _artifacts(tmp_path) / "chat_serve.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000


MARKUP = "a red circle <img src=x onerror=alert(1)> *not bold* $x$ & [link](http://example.com)"


def test_browser_shows_user_text_as_text(server, browser, tmp_path):
    url, proc, root = server
    page = browser.new_page(viewport={"width": 1280, "height": 960})
    page.set_default_timeout(180_000)
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(url, wait_until="domcontentloaded")
    message = page.locator("#message textarea")
    message.wait_for()
    message.fill(MARKUP)
    page.click("#draw")
    page.wait_for_function("document.querySelector('#gallery').innerText.includes('P(yes)')")
    page.wait_for_function("document.querySelector('#chat').innerText.includes('P(yes)')")
    # the prompt comes back whole, as the characters typed, in the echo, the reply and the caption
    assert f"/image {MARKUP}" in page.inner_text("#chat")
    assert f"for {MARKUP!r}" in page.inner_text("#chat")
    assert MARKUP in page.inner_text("#gallery")
    for markup in ("img[src='x']", "em", "a[href='http://example.com']", ".katex"):
        assert page.locator(f"#chat {markup}, #gallery {markup}").count() == 0, markup
    assert dialogs == []

    # an upload's error names the file as chosen, never the server's copy of it (Gradio itself
    # drops < > * from uploaded names; Markdown's _ [ ] ( ) reach the page)
    cut = tmp_path / "cut _short_ [x](y).png"
    data = io.BytesIO()
    Image.effect_noise((64, 64), 64).convert("RGB").save(data, format="PNG")
    cut.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    _choose_upload(page, cut)
    message.fill("what is this?")
    page.click("#send")
    page.wait_for_function("document.querySelector('#status').innerText.includes('is truncated')")
    status = page.inner_text("#status")
    assert f"{cut.name} is truncated" in status and str(root) not in status and "/tmp" not in status, status
    assert page.locator("#status a, #status em").count() == 0
