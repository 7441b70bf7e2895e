"""A small headless-Chromium driver over the DevTools protocol, with no dependency.

Chromium speaks the protocol over two pipes when started with --remote-debugging-pipe:
it reads NUL-terminated JSON commands on fd 3 and writes replies and events on fd 4.
Used by tests/test_browser.py to load the built book offline and inspect what a reader sees.
"""

from __future__ import annotations

import base64
import fcntl
import itertools
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

BINARY = "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
    # No network: every host name but the local server's fails at once, so a page that
    # needs a CDN shows it (and nothing waits for a timeout).
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


class BrowserError(RuntimeError):
    pass


class Chromium:
    """One headless Chromium with one page (tab); `page.call(method, **params)` sends a command."""

    def __init__(self, binary: str = BINARY, width: int = 1280, height: int = 900):
        self.profile_dir = tempfile.mkdtemp(prefix="chromium-profile-")
        cmd_r, cmd_w = os.pipe()      # we write commands, Chromium reads them on fd 3
        evt_r, evt_w = os.pipe()      # Chromium writes on fd 4, we read
        # move Chromium's ends above 10 so that dup2 onto 3 and 4 cannot clobber them
        child_r = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10)
        child_w = fcntl.fcntl(evt_w, fcntl.F_DUPFD, 10)
        os.close(cmd_r)
        os.close(evt_w)

        def wire_fds():
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        args = [binary, *FLAGS, f"--user-data-dir={self.profile_dir}",
                f"--window-size={width},{height}", "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=wire_fds,
                                     pass_fds=(3, 4))
        os.close(child_r)
        os.close(child_w)
        self._out = os.fdopen(cmd_w, "wb", buffering=0)
        self._in = os.fdopen(evt_r, "rb", buffering=0)
        self._ids = itertools.count(1)
        self._replies: dict[int, dict] = {}
        self._cond = threading.Condition()
        self.events: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width,
                  height=height, deviceScaleFactor=1, mobile=False)

    # --- protocol -------------------------------------------------------------------------
    def _read(self):
        buf = b""
        while True:
            chunk = self._in.read(1 << 16)
            if not chunk:
                with self._cond:
                    self._cond.notify_all()
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for raw in messages:
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cond:
                        self._replies[msg["id"]] = msg
                        self._cond.notify_all()
                else:
                    self.events.put(msg)

    def call(self, method: str, session: bool = False, timeout: float = 30, **params):
        """Send a command (to the page when session=True) and return its result."""
        msg_id = next(self._ids)
        msg = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self._out.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while msg_id not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise BrowserError(f"no reply to {method} within {timeout} s "
                                       f"(chromium exit code {self.proc.poll()})")
                self._cond.wait(min(left, 0.5))
            reply = self._replies.pop(msg_id)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def drain_events(self) -> list[dict]:
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    # --- page helpers ---------------------------------------------------------------------
    def evaluate(self, expression: str, timeout: float = 30):
        """The value of a JavaScript expression in the page (promises are awaited)."""
        res = self.call("Runtime.evaluate", session=True, timeout=timeout, expression=expression,
                        awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise BrowserError(f"JavaScript failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def goto(self, url: str, timeout: float = 30) -> list[dict]:
        """Load url, wait for its load event; returns the protocol events seen meanwhile."""
        self.drain_events()
        self.call("Page.navigate", session=True, url=url)
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                evt = self.events.get(timeout=0.5)
            except queue.Empty:
                continue
            seen.append(evt)
            if evt.get("method") == "Page.loadEventFired":
                return seen
        raise BrowserError(f"{url} did not finish loading within {timeout} s")

    def full_page(self, tile: int = 12000) -> list[tuple[int, bytes]]:
        """PNGs of the whole page, top to bottom, as (top y, png) tiles at most `tile` high
        (one capture per tile: Chromium cannot draw arbitrarily tall images at once)."""
        w, h = self.evaluate("[document.documentElement.scrollWidth,"
                             " document.documentElement.scrollHeight]")
        return [(y, self.screenshot(clip={"x": 0, "y": y, "width": w,
                                          "height": min(tile, h - y)}))
                for y in range(0, h, tile)]

    def screenshot(self, path: Path | None = None, clip: dict | None = None,
                   beyond_viewport: bool = True) -> bytes:
        """A PNG of the viewport, or of clip={x, y, width, height} in page coordinates.
        beyond_viewport=False for a clip in view: capturing beyond the viewport resizes the
        view for the capture, and a page that redraws on resize is caught mid-redraw."""
        params: dict = {"format": "png"}
        if clip is not None:
            params["clip"] = {**clip, "scale": 1}
            params["captureBeyondViewport"] = beyond_viewport
        png = base64.b64decode(self.call("Page.captureScreenshot", session=True, timeout=60,
                                         **params)["data"])
        if path is not None:
            Path(path).write_bytes(png)
        return png

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for f in (self._out, self._in):
            try:
                f.close()
            except OSError:
                pass
        shutil.rmtree(self.profile_dir, ignore_errors=True)
