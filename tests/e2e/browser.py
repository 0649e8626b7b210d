"""A real headless Chromium (Debian's chromium and chromium-driver) and a server for the pages it loads."""

from __future__ import annotations

import http.server
import shutil
import threading

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


class PageServer:
    """Serves one HTML page on its own origin (http://127.0.0.1:PORT), as a web app's server would."""

    def __init__(self, page: str, port: int = 0) -> None:
        body = page.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def chromium():  # noqa: ANN201 - selenium's WebDriver
    chromium_binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium_binary and driver, \
        "Debian's chromium and chromium-driver are needed (scripts/setup.sh --test installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


def page_result(browser) -> str:  # noqa: ANN001
    """The text the page wrote into its `<pre id="out">` once it is no longer "running"."""
    WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "out").text != "running")
    return browser.find_element(By.ID, "out").text
