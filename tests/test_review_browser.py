"""The review page in a real headless Chromium: label items with the keyboard, kill the server
mid-session (SIGKILL), restart it, and find every label that was given."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from conftest import CHROMIUM_FLAGS
from review_helpers import make_review_run


def _start(run_dir) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medrecipe.cli", "review", str(run_dir),
                             "--port", "0", "--reviewer", "alice"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    line = proc.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:\d+/", line)
    assert m, f"no address printed: {line!r}"
    return proc, m.group(0)


def _dim(page, key):
    return page.locator(f'.dim[data-dim="{key}"]')


def _label(page, key_press, dim, value):
    page.keyboard.press(key_press)
    page.wait_for_selector(f'.dim[data-dim="{dim}"][data-value="{value}"][data-saved="true"]',
                           timeout=10_000)


def _labels_shown(page) -> dict[str, str]:
    page.wait_for_selector("body[data-ready=true]")
    return {k: v for k in ("answer_correct", "faithful", "meaningful", "answerable", "modality")
            if (v := _dim(page, k).get_attribute("data-value"))}


def test_labels_survive_a_killed_server(tmp_path, chromium):
    path, sync_api = chromium
    run_dir = make_review_run(tmp_path / "run")
    proc, url = _start(run_dir)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("body[data-ready=true]")
            assert page.inner_text("#item-id") == "omr/omr-1"
            assert "dyspnoea" in page.inner_text("#question")
            assert "blunting of the right costophrenic angle" in page.inner_text("#trace")
            assert "meniscus (arrow)" in page.inner_text("#context")
            assert page.inner_text("#options li.key") == "Pleural effusion"
            assert page.locator("#images img").evaluate("img => img.complete && img.naturalWidth > 0")
            # item 1: three judgements, the highlight moving on by itself
            _label(page, "y", "answer_correct", "yes")
            _label(page, "n", "faithful", "no")
            _label(page, "y", "meaningful", "yes")
            # item 2: all five
            page.keyboard.press("ArrowRight")
            page.wait_for_function("document.querySelector('#item-id').textContent == 'omr/omr-2'")
            for dim in ("answer_correct", "faithful", "meaningful", "answerable", "modality"):
                _label(page, "y", dim, "yes")
            # item 3: pick the fourth judgement with its number key, then answer it
            page.keyboard.press("j")
            page.wait_for_function("document.querySelector('#item-id').textContent == 'omr/omr-3'")
            page.keyboard.press("4")
            _label(page, "n", "answerable", "no")

            proc.kill()  # SIGKILL: no shutdown handler runs
            proc.wait(10)
            # a judgement given while the server is down is shown as not saved
            page.keyboard.press("1")
            page.keyboard.press("y")
            page.wait_for_selector('.dim[data-dim="answer_correct"][data-saved="error"]')

            proc, url = _start(run_dir)
            page.goto(url)  # no ?i=: the page decides where to resume
            assert _labels_shown(page) == {"answerable": "no"}
            assert page.inner_text("#item-id") == "omr/omr-3"  # where the reviewer stopped
            page.keyboard.press("k")
            page.wait_for_function("document.querySelector('#item-id').textContent == 'omr/omr-2'")
            assert _labels_shown(page) == dict.fromkeys(
                ("answer_correct", "faithful", "meaningful", "answerable", "modality"), "yes")
            page.keyboard.press("ArrowLeft")
            page.wait_for_function("document.querySelector('#item-id').textContent == 'omr/omr-1'")
            assert _labels_shown(page) == {"answer_correct": "yes", "faithful": "no",
                                           "meaningful": "yes"}
            page.keyboard.press("s")
            page.wait_for_selector("#summary:not([hidden])")
            assert "1 of 4 items fully reviewed" in page.text_content("#summary")
            browser.close()
    finally:
        proc.kill()
        proc.wait(10)
    lines = [json.loads(x) for x in (run_dir / "review" / "labels.jsonl").read_text().splitlines()]
    assert len(lines) == 9 and {x["reviewer"] for x in lines} == {"alice"}
