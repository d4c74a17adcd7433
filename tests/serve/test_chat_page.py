"""The chat page at ``/`` in a real headless Chromium (Selenium + Debian's chromium-driver): two streamed turns,
the stop button, and errors. Skips where Chromium or Selenium is absent.

Set ``LLMKIT_SCREENSHOT=path.png`` to keep a screenshot of the page after the conversation.
"""
from __future__ import annotations

import copy
import os
import shutil
import time

import pytest

from llmkit.engine import AsyncLLMEngine, LLMEngine

from llmkit.serve import ServeConfig

from .conftest import MODEL, LiveServer

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromium-driver")]

RECORD_FETCH = """
window.__bodies = [];
const original = window.fetch;
window.fetch = (url, opts) => {
  if (opts && opts.body) window.__bodies.push(JSON.parse(opts.body));
  return original(url, opts);
};
"""


@pytest.fixture(scope="module")
def live(tiny, tokenizer):
    """A server whose model never ends a reply by itself (no EOS) and takes ~20 ms a step, so stop can be pressed."""
    no_eos = copy.copy(tokenizer)
    no_eos.eos_token = None

    def load() -> AsyncLLMEngine:
        engine = LLMEngine(tiny, no_eos, max_num_seqs=4, kv_cache_memory="16MiB")
        step = engine.step
        engine.step = lambda: (time.sleep(0.02), step())[1]
        return AsyncLLMEngine(engine)

    server = LiveServer(ServeConfig(MODEL), load).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait(condition, timeout: float = 30, what: str = "the page"):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def set_value(browser, element_id: str, value) -> None:
    browser.execute_script("document.getElementById(arguments[0]).value = arguments[1]", element_id, str(value))


def send(browser, text: str) -> None:
    browser.find_element("id", "input").send_keys(text)
    browser.find_element("id", "send").click()


def assistant_texts(browser) -> list[str]:
    return browser.execute_script(
        "return [...document.querySelectorAll('.msg.assistant .body')].map(e => e.dataset.text)")


def streaming(browser) -> bool:
    return browser.execute_script("return document.querySelector('.msg.streaming') !== null")


def test_chat_page(live, browser, tmp_path):
    browser.get(f"{live.url}/")
    wait(lambda: browser.execute_script("return document.getElementById('model').value") == MODEL,
         what="the model list")
    browser.execute_script(RECORD_FETCH)
    set_value(browser, "system", "Be brief.")
    set_value(browser, "temperature", 0)
    set_value(browser, "max_tokens", 12)

    # two turns: text streams in, and the second request carries the whole conversation
    send(browser, "Hello world.")
    wait(lambda: assistant_texts(browser) and assistant_texts(browser)[0], what="streamed text")
    wait(lambda: not streaming(browser), what="the first reply to end")
    first = assistant_texts(browser)[0]
    send(browser, "The quick brown fox")
    wait(lambda: len(assistant_texts(browser)) == 2 and not streaming(browser), what="the second reply")
    bodies = [b for b in browser.execute_script("return window.__bodies") if "messages" in b]
    assert [m["role"] for m in bodies[1]["messages"]] == ["system", "user", "assistant", "user"]
    assert bodies[1]["messages"][2]["content"] == first and bodies[1]["stream"] is True
    assert bodies[1]["temperature"] == 0 and bodies[1]["max_tokens"] == 12

    # stop: the reply stops growing, and the server aborts the request
    set_value(browser, "max_tokens", 200)
    send(browser, "Tell me a long story")
    wait(lambda: len(assistant_texts(browser)) == 3 and len(assistant_texts(browser)[2]) > 3, what="a long reply")
    browser.find_element("id", "stop").click()
    wait(lambda: not streaming(browser), timeout=5, what="the stop button")
    stopped = assistant_texts(browser)[2]
    wait(lambda: not live.engine.has_unfinished_requests(), timeout=10, what="the server to abort")
    time.sleep(0.3)
    assert assistant_texts(browser)[2] == stopped
    assert live.engine.blocks.num_free_blocks == live.engine.blocks.num_blocks
    shot = os.environ.get("LLMKIT_SCREENSHOT") or str(tmp_path / "chat.png")
    browser.save_screenshot(shot)

    # errors: a refused value shows the server's message; a server that is down says so
    set_value(browser, "temperature", 5)
    send(browser, "x")
    wait(lambda: browser.find_element("id", "error").is_displayed(), what="the error")
    assert "temperature" in browser.find_element("id", "error").text
    assert browser.execute_script("return window.__bodies")[-1]["temperature"] == 5
    live.stop()
    set_value(browser, "temperature", 0)
    send(browser, "y")
    wait(lambda: "cannot reach the server" in browser.find_element("id", "error").text, what="the server-down error")
