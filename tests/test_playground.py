"""The playground page in a real browser: Debian's chromium driven by Playwright.

Playwright cannot download its own browsers here, so it drives the system's chromium
(`apt-get install chromium`; .ci/run installs it). Without one the tests are skipped, saying why.
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest

pytest.importorskip("starlette", reason="chargen serve needs the serve extra: pip install -e '.[test]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx")

import chargen  # noqa: E402

from .test_serve import start_server  # noqa: E402

CHROMIUM = os.environ.get("CHARGEN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium to drive: apt-get install chromium (or set CHARGEN_CHROMIUM)", allow_module_level=True)

# As root in a container chromium needs --no-sandbox (Playwright passes it); on a machine without a
# network the background services would only fail their look-ups.
CHROMIUM_ARGS = ["--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def server(trained_prose, trained_labels):
    proc, url = start_server("-c", "names", "-c", f"prose={trained_prose}", "-c", f"kinds={trained_labels}")
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(server + "/")
    page.script_errors = errors
    yield page
    context.close()
    assert not errors, errors  # no script errors, nothing blocked by the page's own policy


def test_type_a_prompt_press_generate_and_see_names(page, server):
    page.wait_for_selector("#model option[value=names]", state="attached")
    assert page.locator("#model").input_value() == "names"
    assert "lstm" in page.locator("#facts").inner_text()  # the summary panel
    page.fill("#prompt", "Ma")
    page.fill("#n", "8")
    page.fill("#seed", "4")
    page.click("#go")
    page.wait_for_selector("#results tbody tr")
    rows = page.locator("#results tbody td.sample").all_inner_texts()
    assert rows == chargen.load().sample(8, "Ma", seed=4)  # what `chargen sample -p Ma -n 8 --seed 4` prints
    logprobs = page.locator("#results tbody td:last-child").all_inner_texts()
    assert len(logprobs) == 8 and all(float(v) < 0 for v in logprobs)
    assert "8 samples" in page.locator("#status").inner_text()
    page.locator("#results tbody td.sample button").nth(2).click()  # a click copies one name
    sync_api.expect(page.locator("#status")).to_contain_text("copied")
    assert page.evaluate("navigator.clipboard.readText()") == rows[2]
    page.click("#copy")  # and the button, all of them
    sync_api.expect(page.locator("#status")).to_contain_text("copied 8")
    assert page.evaluate("navigator.clipboard.readText()") == "\n".join(rows) + "\n"

    # Keyboard only: constraints typed in, Enter in a field generates again.
    page.click("#constraints summary")
    page.fill("#ends_with", "a")
    page.fill("#max_len", "6")
    page.press("#prompt", "Enter")
    sync_api.expect(page.locator("#status")).to_contain_text("draws kept · the constraints hold about")
    rows = page.locator("#results tbody td.sample").all_inner_texts()
    assert len(rows) == 8 and all(r.startswith("Ma") and r.endswith("a") and len(r) <= 6 for r in rows), rows
    assert rows == chargen.load().sample(8, "Ma", seed=4, ends_with="a", max_len=6)  # the adaptive exact sampler
    page.check("#rejection")  # plain rejection: the unconstrained samples that satisfy the constraints
    page.click("#go")
    plain = chargen.load().sample(8, "Ma", seed=4, ends_with="a", max_len=6, rejection=True)
    assert plain != rows
    sync_api.expect(page.locator("#results tbody td.sample")).to_have_text(plain)  # waits for the answer
    page.uncheck("#rejection")

    page.check("input[value=top]")
    page.click("#go")
    sync_api.expect(page.locator("#status")).to_contain_text("most likely")
    rows = page.locator("#results tbody td.sample").all_inner_texts()
    assert rows == [s.text for s in chargen.load().top(8, "Ma", ends_with="a", max_len=6)]


def test_a_labelled_model_offers_its_labels_and_draws_under_one(page, trained_labels):
    page.wait_for_selector("#model option[value=kinds]", state="attached")
    assert page.locator(".for-labels").is_hidden()  # the names model has no labels
    page.select_option("#model", "kinds")
    assert page.locator(".for-labels").is_visible()
    assert page.locator("#label-list option").evaluate_all("os => os.map(o => o.value)") == ["abc", "xyz"]
    assert "labels 2" in " ".join(page.inner_text("#facts").split())  # (trained from scratch: no "with no label")
    page.fill("#label", "xyz")
    page.fill("#n", "8")
    page.fill("#seed", "4")
    page.click("#go")
    page.wait_for_selector("#results tbody tr")
    expected = chargen.load(trained_labels).sample(8, seed=4, label="xyz")
    assert page.locator("#results tbody td.sample button").all_inner_texts() == expected
    assert page.locator("#results tbody td.sample .label").all_inner_texts() == ["xyz"] * 8
    page.fill("#label", "abc=0.5,xyz=0.5")  # a blend: each sample says its label
    page.click("#go")
    blend = list(chargen.load(trained_labels).samples(8, seed=4, label="abc=0.5,xyz=0.5"))
    sync_api.expect(page.locator("#results tbody td.sample .label")).to_have_text([s.label for s in blend])
    page.fill("#label", "abd")  # an unknown label: the server's error, in the status line
    page.click("#go")
    sync_api.expect(page.locator("#status")).to_contain_text("unknown label 'abd'")
    assert all("status of 400" in e for e in page.script_errors), page.script_errors  # the console notes the 400
    page.script_errors.clear()


def test_a_prose_model_streams_its_text_as_it_is_drawn(page, trained_prose):
    page.wait_for_selector("#model option[value=prose]", state="attached")
    page.select_option("#model", "prose")
    assert page.locator("#n").is_disabled() and page.locator("#constraints").is_hidden()
    page.fill("#prompt", "the ")
    page.fill("#seed", "5")
    page.fill("#length", "600")
    page.click("#go")
    page.wait_for_selector("#prose[data-done=true]")
    text = page.locator("#prose").inner_text()
    expected = chargen.load(trained_prose).sample(1, "the ", seed=5, length=600)[0]
    assert text == expected
    assert int(page.locator("#prose").get_attribute("data-chunks")) > 1  # it arrived in pieces, as drawn


def test_the_model_downloads_as_a_page_that_works_offline(page, browser, tmp_path):
    page.wait_for_selector("#model option[value=names]", state="attached")
    with page.expect_download() as got:
        page.click("#export-html")
    saved = tmp_path / got.value.suggested_filename
    got.value.save_as(saved)
    assert saved.name == "names.html"
    sync_api.expect(page.locator("#status")).to_contain_text("downloaded names.html")
    offline = browser.new_context(offline=True)
    p = offline.new_page()
    p.goto(saved.as_uri())
    sync_api.expect(p.locator("#status")).to_contain_text("Type a prompt")
    p.fill("#seed", "4")
    p.fill("#n", "8")
    p.fill("#prompt", "Ma")
    p.press("#prompt", "Enter")
    sync_api.expect(p.locator("#results tbody tr")).to_have_count(8)
    assert p.locator("#results tbody td.sample").all_inner_texts() == chargen.load().sample(8, "Ma", seed=4)
    offline.close()


def test_an_error_shows_in_the_status_line(page):
    page.wait_for_selector("#model option[value=names]", state="attached")
    page.fill("#prompt", "M€")
    page.click("#go")
    page.wait_for_selector("#status.error")
    assert "not in the model's vocabulary" in page.locator("#status").inner_text()
    assert all("status of 400" in e for e in page.script_errors), page.script_errors  # the console notes the 400
    page.script_errors.clear()


def test_the_page_fits_a_phone(browser, server):
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    page = context.new_page()
    page.goto(server + "/")
    page.wait_for_selector("#model option[value=names]", state="attached")
    page.click("#go")
    page.wait_for_selector("#results tbody tr")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, width  # nothing runs off the side
    context.close()
