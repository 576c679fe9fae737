"""Headless Chromium on a page served from another origin, for ``-m browser`` tests.

``scripts/install-browser`` installs Debian's chromium and chromium-driver and
the npm packages of tests/browser/package-lock.json into a cache folder (run by
``scripts/test``, and from here when something is missing). The page's bundle
(Uppy with @uppy/tus) is built with esbuild from that folder; the page, its
harness and the reference client clients/js/ are served by a static server on
another loopback port than the daemon's. Chromium is driven with Selenium
through Debian's chromedriver; nothing is downloaded at run time.
"""

import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import threading

import pytest

from .daemon import REPO
from .waiting import wait_for

PAGE_SOURCES = os.path.join(REPO, "tests", "browser")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Without the networking flags Chromium reaches out to Google's hosts, which a
# closed network refuses; --no-sandbox because the tests run as root.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")
# Set by scripts/test when scripts/install-browser failed: why no browser can be had.
UNAVAILABLE = "PORTAL_TEST_BROWSER_UNAVAILABLE"


def npm_cache():
    """The folder scripts/install-browser installs the npm packages into."""
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        with open(os.path.join(PAGE_SOURCES, name), "rb") as handle:
            digest.update(handle.read())
    base = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
    return os.path.join(base, "hpcportal-tests", f"browser-{digest.hexdigest()[:16]}")


def ensure_installed():
    """The npm cache folder; installs what is missing, or skips saying why it cannot."""
    reason = os.environ.get(UNAVAILABLE)
    if reason:
        pytest.skip(f"no browser can be had here: {reason}")
    cache = npm_cache()
    have = all(os.path.exists(p) for p in (CHROMIUM, CHROMEDRIVER, os.path.join(cache, ".installed")))
    if not have:
        answer = subprocess.run([os.path.join(REPO, "scripts", "install-browser")],
                                capture_output=True, text=True, timeout=900)
        if answer.returncode != 0:
            last = (answer.stderr.strip().splitlines() or ["(no output)"])[-1]
            pytest.skip(f"no browser can be had here: scripts/install-browser failed: {last}")
    return cache


def build_site(cache, folder):
    """The page's files in ``folder``: page, harness, bundle, reference client."""
    for name in ("page.html", "harness.js"):
        shutil.copy(os.path.join(PAGE_SOURCES, name), folder)
    shutil.copytree(os.path.join(REPO, "clients", "js"), os.path.join(folder, "clients", "js"))
    # The entry on stdin resolves its imports from the cache folder's node_modules.
    with open(os.path.join(PAGE_SOURCES, "uppy-entry.js"), "rb") as entry:
        subprocess.run([os.path.join(cache, "node_modules", ".bin", "esbuild"), "--bundle",
                        "--format=iife", "--sourcefile=uppy-entry.js",
                        f"--outfile={os.path.join(folder, 'uppy.js')}", "--log-level=warning"],
                       stdin=entry, check=True, capture_output=True, timeout=120, cwd=cache)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class StaticSite:
    """A loopback static file server: the page's own origin."""

    def __init__(self, folder):
        handler = functools.partial(_QuietHandler, directory=folder)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self):
        self._server.shutdown()
        self._server.server_close()


def start_chromium(profile):
    """Headless Debian Chromium under Selenium with a fresh profile folder."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    # DevTools' network events: which connection carried each answer.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(120)
    return driver


class Page:
    """The test page open in ``driver``; runs the harness' jobs and waits for them."""

    def __init__(self, driver, origin):
        self.driver = driver
        driver.get(origin + "/page.html")
        wait_for(lambda: driver.execute_script("return window.harnessReady === true"),
                 timeout=30, message="the page's modules")

    def run(self, function, *args):
        """Start ``window[function](*args)``, a harness job; its name."""
        return self.driver.execute_script(f"return window[{function!r}](...arguments)", *args)

    def job(self, name):
        return self.driver.execute_script(
            "const j = window.jobs[arguments[0]];"
            "return {progress: j.progress, done: j.done, error: j.error, result: j.result,"
            " log: j.log, uploadId: j.uploadId ?? null, chunksSent: j.chunksSent ?? null}", name)

    def wait(self, name, timeout=180):
        """The finished job's state (result or error)."""
        return wait_for(lambda: (lambda j: j if j["done"] else None)(self.job(name)),
                        timeout=timeout, interval=0.1, message=f"job {name}",
                        show=lambda: self.job(name))

    def wait_progress(self, name, at_least, timeout=120):
        def far_enough():
            state = self.job(name)
            assert not state["done"], f"job {name} ended before {at_least} bytes: {state}"
            return state["progress"] >= at_least
        wait_for(far_enough, timeout=timeout, interval=0.05, message=f"{at_least} bytes of {name}")

    def answers(self):
        """[(method, url, status, connection id)] of the answers the page got since
        the last call, from DevTools' network events (drained on reading)."""
        requests, answered = {}, []
        for entry in self.driver.get_log("performance"):
            event = json.loads(entry["message"])["message"]
            params = event.get("params", {})
            if event.get("method") == "Network.requestWillBeSent":
                requests[params["requestId"]] = params["request"]["method"]
            elif event.get("method") == "Network.responseReceived":
                response = params["response"]
                answered.append((requests.get(params["requestId"]), response["url"],
                                 response["status"], response.get("connectionId")))
        return answered

