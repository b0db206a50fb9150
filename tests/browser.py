"""Headless Chromium for the browser tests: render a page to its DOM (and a screenshot), no driver needed.

Install it with `apt-get install chromium` (Debian/Ubuntu); the tests that need it skip without it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1600,1000"]


def render(url: str, profile: Path, screenshot: Path | None = None, budget_ms: int = 20_000) -> str:
    """The page's DOM after its scripts ran (`budget_ms` of virtual time); optionally a PNG of it too."""
    args = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    if screenshot:
        subprocess.run([*args, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    return dom


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_ui(store: str, artifacts: Path, log: Path) -> Iterator[str]:
    """`mlflow ui` on 127.0.0.1 (a free port) against `store`; yields its base URL."""
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store,
                                 "--default-artifact-root", artifacts.as_uri(), "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow ui did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


IMAGES_CHECK = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images];
  document.body.dataset.images = imgs.length;
  document.body.dataset.broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
});</script>"""


def images_loaded(html: Path, workdir: Path) -> tuple[int, int, str]:
    """Render a copy of `html` with a script that counts its images and the ones that failed to load."""
    page = workdir / html.name
    page.write_text(html.read_text().replace("</body>", IMAGES_CHECK + "</body>"))
    dom = render(page.as_uri(), workdir / "profile", screenshot=workdir / "report.png")
    import re

    m = re.search(r'data-images="(\d+)" data-broken="(\d+)"', dom)
    assert m, dom[:2000]
    return int(m.group(1)), int(m.group(2)), dom
