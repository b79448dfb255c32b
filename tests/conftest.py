"""Shared fixtures. Tests never reach the network: the Hub is offline, servers are local."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    """Path of a tiny randomly initialised Qwen2.5-VL (model + processor) saved to disk."""
    pytest.importorskip("torch")
    from medrecipe.testing.tiny_qwen import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny_vlm"))


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def _install_chromium() -> str:
    """Install Debian's chromium with apt-get; returns what went wrong ("" on success)."""
    import shutil
    import subprocess

    if not shutil.which("apt-get"):
        return "apt-get is not available on this machine"
    if os.geteuid() != 0:
        return "installing it needs root (apt-get install -y chromium)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if res.returncode != 0:  # a fresh machine has no package lists yet
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env,
                       timeout=900)
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    return "" if res.returncode == 0 else (res.stderr or res.stdout)[-400:]


@pytest.fixture(scope="session")
def chromium():
    """Path of Debian's Chromium (installed with apt-get when missing) and the Playwright module."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium")
                                        else None)
    if path is None:
        problem = _install_chromium()
        path = shutil.which("chromium")
        if path is None:
            pytest.skip(f"Chromium is not installed and could not be installed: {problem}")
    return path, sync_api
