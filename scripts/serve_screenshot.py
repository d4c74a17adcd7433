"""Screenshot of the chat page (docs/images/serving_chat.png) talking to a running ``llmkit serve`` in headless Chromium.

Usage: ``llmkit serve --model smollm2-135m-instruct --port 8765 &`` then
``python scripts/serve_screenshot.py --url http://127.0.0.1:8765 --out docs/images/serving_chat.png``
(needs Debian's ``chromium`` and ``chromium-driver`` and ``pip install selenium``).
"""
from __future__ import annotations

import argparse
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

TURNS = ["What is the capital of France?", "Write a Python function that returns the square of a number."]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8765")
    p.add_argument("--out", default="docs/images/serving_chat.png")
    p.add_argument("--timeout", type=float, default=600)
    args = p.parse_args()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,760"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(args.url + "/")
        time.sleep(1)
        driver.execute_script("document.getElementById('system').value = 'You are a helpful assistant.';"
                              "document.getElementById('temperature').value = 0;"
                              "document.getElementById('max_tokens').value = 120;")
        deadline = time.time() + args.timeout
        for text in TURNS:
            driver.find_element("id", "input").send_keys(text)
            driver.find_element("id", "send").click()
            time.sleep(0.5)
            while driver.execute_script("return document.querySelector('.msg.streaming') !== null"):
                if time.time() > deadline:
                    raise TimeoutError("the reply did not finish")
                time.sleep(0.2)
        driver.save_screenshot(args.out)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
