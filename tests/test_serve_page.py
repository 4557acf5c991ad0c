"""The page of `metareg serve` in a real headless browser: Debian's chromium driven by Playwright.

Set-up installs both (`apt-get install chromium`, the dev extra's `playwright`); Playwright's own
browser download is never used (`executable_path`). Without a chromium the test skips, saying so.
"""
from __future__ import annotations

import base64
import os
import shutil

import pytest

import metareg
from tests.test_serve import fewshot_model, running_server

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra has it)")
CHROMIUM = os.environ.get("METAREG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# What a root, sandboxed, offline machine needs: no sandbox, no GPU, no calls home.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium found (apt-get install chromium, or set "
                                                         "METAREG_CHROMIUM to the browser's path)")

DROP = """([name, data]) => {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type: "image/png" }));
  document.getElementById("query-drop").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer }));
}"""


def test_enrol_by_file_drop_a_query_and_see_the_answer_or_unknown(tmp_path):
    model, query = fewshot_model(tmp_path)
    enrolled, far = sorted(query.iterdir())[:2]
    clf = metareg.FewShotClassifier.load(model)
    # A threshold halfway to the far query's best score: it is unknown, while a query lying on a prototype
    # (score 0: the enrolled image itself) is known.
    far_score = float(clf.predict_logits([far]).max())
    assert far_score < 0
    clf.open_set = {"threshold": far_score / 2, "score": "max_logit"}
    clf.save(model)
    with running_server(str(model)) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_selector("#classes li")
            assert page.locator("#classes li").count() == 3
            assert "unknown" in page.locator("#status").inner_text()

            page.fill("#class-name", "my thing")
            page.set_input_files("#enrol-files", [str(enrolled)])
            page.wait_for_selector("text=Enrolled my thing from 1 images")
            page.wait_for_function("document.querySelectorAll('#classes li').length === 4")

            def ask(path):
                page.evaluate("document.getElementById('answer').textContent = ''")
                page.evaluate(DROP, [path.name, base64.b64encode(path.read_bytes()).decode()])
                page.wait_for_function("document.getElementById('answer').textContent !== ''")
                return page.locator("#answer").inner_text(), page.locator("#probabilities tr").count()

            assert ask(enrolled) == ("my thing", 4)  # its own image is its prototype
            answer, rows = ask(far)
            assert answer.startswith("unknown (nearest: ") and rows == 4
            assert page.locator("#query-error").inner_text() == ""
        finally:
            browser.close()
    assert metareg.FewShotClassifier.load(model).classes[-1] == "my thing"
