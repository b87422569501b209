"""A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (no websocket library needed).

Chromium reads NUL-terminated JSON commands from file descriptor 3 and writes responses and events to file
descriptor 4. :func:`inspect_page` opens one file URL in headless Chromium and reports every network request,
console message, exception and log entry, the size of every image / svg / canvas, and a screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
                  "--disable-default-apps", "--mute-audio", "--hide-scrollbars")

FIGURE_SIZES_JS = """
JSON.stringify(Array.from(document.querySelectorAll('img, svg, canvas')).map(function (el) {
  var box = el.getBoundingClientRect();
  return {tag: el.tagName.toLowerCase(), id: (el.closest('figure') || {}).id || '',
          natural: el.tagName === 'IMG' ? [el.naturalWidth, el.naturalHeight] : null,
          complete: el.tagName === 'IMG' ? el.complete : true,
          box: [box.width, box.height]};
}))
"""


LAYOUT_JS = """
JSON.stringify({
  scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
  innerHeight: window.innerHeight, scrollHeight: document.documentElement.scrollHeight,
  claims: Array.from(document.querySelectorAll('.claim')).map(function (el) {
    var box = el.getBoundingClientRect(); return {id: el.id, top: box.top, bottom: box.bottom}; }),
  panels: Array.from(document.querySelectorAll('#fig-pca img')).map(function (el) { return el.src.length + ':' +
    el.src.slice(-64); }),
  wide: Array.from(document.querySelectorAll('table')).filter(function (el) {
    var box = el.getBoundingClientRect(); var scroller = el.closest('.scroll');
    return !scroller && box.right > window.innerWidth; }).length
})
"""


def find_chromium() -> str | None:
    """Path of Debian's chromium (or another Chromium / Chrome binary on PATH)."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageReport:
    """What happened while the page loaded."""

    requests: list[str] = field(default_factory=list)
    console: list[dict] = field(default_factory=list)       # Runtime.consoleAPICalled
    exceptions: list[dict] = field(default_factory=list)    # Runtime.exceptionThrown
    log_entries: list[dict] = field(default_factory=list)   # Log.entryAdded
    failed: list[dict] = field(default_factory=list)        # Network.loadingFailed
    dialogs: list[dict] = field(default_factory=list)       # Page.javascriptDialogOpening (alert, confirm, ...)
    figures: list[dict] = field(default_factory=list)
    layout: dict = field(default_factory=dict)
    title: str = ""
    screenshot: bytes = b""


class _Pipe:
    def __init__(self, binary: str, user_data_dir: str):
        to_chrome_r, self._to_chrome_w = os.pipe()
        self._from_chrome_r, from_chrome_w = os.pipe()

        def child_fds() -> None:   # runs in the child before exec: put the pipe ends on fds 3 and 4
            a = os.dup(to_chrome_r)
            b = os.dup(from_chrome_w)
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe",
             "--window-size=1280,900", "about:blank"],
            preexec_fn=child_fds, close_fds=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self.stderr)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome_w, json.dumps(message).encode() + b"\0")
        return self._next_id

    def receive(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium")
            ready, _, _ = select.select([self._from_chrome_r], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome_r, 1 << 20)
                if not chunk:
                    raise EOFError("chromium closed the debugging pipe")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict:
        wanted = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            message = self.receive(max(0.1, deadline - time.monotonic()))
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(self.receive(max(0.1, deadline - time.monotonic())))

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.process.wait(timeout=15)
        except Exception:  # make sure the browser goes away
            self.process.kill()
            self.process.wait(timeout=15)
        finally:
            for fd in (self._to_chrome_w, self._from_chrome_r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.stderr.close()


def inspect_page(html_path: Path, *, binary: str, timeout: float = 60.0) -> PageReport:
    """Load ``html_path`` in headless Chromium and report requests, console output, figure sizes, screenshot."""
    report = PageReport()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        pipe = _Pipe(binary, profile)
        try:
            targets = pipe.call("Target.getTargets", timeout=timeout)["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            session = pipe.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True},
                                timeout=timeout)["sessionId"]
            for domain in ("Page", "Network", "Runtime", "Log"):
                pipe.call(f"{domain}.enable", session=session, timeout=timeout)
            pipe.call("Page.navigate", {"url": html_path.resolve().as_uri()}, session=session, timeout=timeout)
            pipe.wait_for("Page.loadEventFired", timeout=timeout)
            result = pipe.call("Runtime.evaluate", {"expression": FIGURE_SIZES_JS, "returnByValue": True},
                               session=session, timeout=timeout)
            report.figures = json.loads(result["result"]["value"])
            layout = pipe.call("Runtime.evaluate", {"expression": LAYOUT_JS, "returnByValue": True},
                               session=session, timeout=timeout)
            report.layout = json.loads(layout["result"]["value"])
            title = pipe.call("Runtime.evaluate", {"expression": "document.title", "returnByValue": True},
                              session=session, timeout=timeout)
            report.title = title["result"].get("value", "")
            shot = pipe.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                             session=session, timeout=timeout)
            report.screenshot = base64.b64decode(shot["data"])
            # Drain events that arrived meanwhile.
            while True:
                try:
                    pipe.events.append(pipe.receive(0.5))
                except (TimeoutError, EOFError):
                    break
        finally:
            pipe.close()
    for event in pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            report.requests.append(params["request"]["url"])
        elif method == "Network.loadingFailed":
            report.failed.append(params)
        elif method == "Runtime.consoleAPICalled":
            report.console.append(params)
        elif method == "Runtime.exceptionThrown":
            report.exceptions.append(params)
        elif method == "Log.entryAdded":
            report.log_entries.append(params["entry"])
        elif method == "Page.javascriptDialogOpening":
            report.dialogs.append(params)
    return report
