"""Chromium (Debian's, driven by Playwright) and a JupyterLab server for tests/test_browser.py.

Nothing here downloads a browser: Playwright drives /usr/bin/chromium (`make browser`
installs it with apt). The machine has no network beyond loopback, and the browser is
started with everything that would phone home switched off.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"  # screenshots (gitignored)
CHROMIUM = os.environ.get("TUNEWISE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install -e '.[test]'"
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        return (f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium), "
                "or skip the browser tests with -m 'not browser'")
    return None


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyter_lab(root: Path, env: dict[str, str] | None = None, timeout: float = 60):
    """`jupyter lab` on a free loopback port with a random token, working directory and
    root `root`; yields its base URL (token not included) and the token."""
    port, token = free_port(), secrets.token_hex(16)
    log = (root / "jupyter.log").open("w")
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
           "--ServerApp.allow_root=True",  # CI runs as root
           # nothing that would reach the network: no news feed, update check or PyPI manager
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"]
    full_env = {**os.environ, **(env or {}), "JUPYTER_CONFIG_DIR": str(root / ".jupyter-config"),
                "JUPYTER_RUNTIME_DIR": str(root / ".jupyter-runtime")}
    # A fresh user-settings and workspaces folder: no layout from an earlier session.
    full_env["JUPYTERLAB_SETTINGS_DIR"] = str(root / ".jupyter-settings")
    full_env["JUPYTERLAB_WORKSPACES_DIR"] = str(root / ".jupyter-workspaces")
    proc = subprocess.Popen(cmd, cwd=root, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{(root / 'jupyter.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    json.load(r)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"jupyter lab did not answer within {timeout}s:\n{(root / 'jupyter.log').read_text()[-3000:]}")
                time.sleep(0.25)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextmanager
def browser():
    """Headless Chromium (Debian's) through Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
