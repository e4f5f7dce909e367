"""web_demo.py in a real headless browser (Debian chromium driven by Playwright)."""

from __future__ import annotations

import shutil
import socket


import web_demo
from tests.inference_fixtures import REASONING_EXCHANGES, REPO_ROOT, train_tiny_adapter, train_tool_adapter, training_pairs

PAIRS = training_pairs()
SCREENSHOT = REPO_ROOT / "runs/screenshots/web_demo.png"
REASONING_SCREENSHOT = REPO_ROOT / "runs/screenshots/web_demo_reasoning.png"


def test_to_pairs_reads_gradio_messages_in_both_shapes():
    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": [{"type": "text", "text": "hi"}]},
                {"role": "user", "content": "again"}]
    assert web_demo.to_pairs(messages) == [("你好", "hi")]


def test_reasoning_is_a_titled_block_of_its_own_and_left_out_of_the_history():
    streaming = web_demo.reply_messages("7 = 2 * 3 + 1", "")
    assert [m["content"] for m in streaming] == ["7 = 2 * 3 + 1", ""]
    assert streaming[0]["metadata"] == {"title": web_demo.REASONING_TITLE, "status": "pending"}  # open while it streams
    answered = web_demo.reply_messages("7 = 2 * 3 + 1", "Yes.")
    assert answered[0]["metadata"]["status"] == "done"  # folded once the answer begins
    assert web_demo.reply_messages("", "Hi!") == [{"role": "assistant", "content": "Hi!"}]
    messages = [{"role": "user", "content": "Is 7 odd?"}, *answered, {"role": "user", "content": "And 10?"}]
    assert web_demo.to_pairs(messages) == [("Is 7 odd?", "Yes.")]


def launch(argv: list[str]):
    """(demo, url): web_demo.py on a free port, not blocking."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return web_demo.main(web_demo.parse_args([*argv, "--port", str(port)]), block=False), f"http://127.0.0.1:{port}/"


def test_chat_page_shows_reasoning_apart_from_the_answer(tiny_model, tmp_path_factory):
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed: run `sh scripts/install_browser.sh` (as root)"
    adapter = train_tool_adapter(tiny_model("qwen3"), tmp_path_factory.mktemp("tools"))
    (question, reasoning, answer), _ = REASONING_EXCHANGES
    demo, url = launch(["--adapter", str(adapter), "--enable_thinking", "true"])
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium)
            page = browser.new_page()
            page.goto(url, wait_until="networkidle")
            textbox = page.locator("#message textarea")
            expect(textbox).to_be_editable(timeout=30_000)
            textbox.fill(question)
            page.get_by_role("button", name="Send").click()
            chatbot = page.locator("#chatbot")
            expect(chatbot.get_by_text(answer, exact=True)).to_be_visible(timeout=60_000)
            thought = chatbot.locator(".thought-group")
            expect(thought).to_have_count(1)
            expect(thought.get_by_text(web_demo.REASONING_TITLE)).to_be_visible()
            thought.get_by_role("button", name=web_demo.REASONING_TITLE).click()  # folded once the answer came: unfold it
            expect(thought.get_by_text(reasoning, exact=True)).to_be_visible(timeout=10_000)
            assert answer not in thought.inner_text()  # the answer is not inside the reasoning block
            page.wait_for_timeout(500)  # the unfolding animation
            REASONING_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(REASONING_SCREENSHOT), full_page=True)
            browser.close()
    finally:
        demo.close()


def test_chat_page_streams_a_reply_and_switches_adapters(tiny_qwen2, tmp_path_factory):
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed: run `sh scripts/install_browser.sh` (as root)"
    adapter = train_tiny_adapter(tiny_qwen2, tmp_path_factory.mktemp("adapter"), PAIRS)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = web_demo.main(web_demo.parse_args(["--adapter", str(adapter), "--port", str(port)]), block=False)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            textbox = page.locator("#message textarea")
            expect(textbox).to_be_editable(timeout=30_000)
            for question, answer in (PAIRS[0], PAIRS[2]):  # Chinese, then English (a new conversation)
                page.get_by_text("Clear history").click()
                expect(page.locator("#chatbot [data-testid='bot']")).to_have_count(0, timeout=30_000)
                textbox.fill(question)
                page.get_by_role("button", name="Send").click()
                chatbot = page.locator("#chatbot")
                expect(chatbot.get_by_text(question, exact=True)).to_be_visible(timeout=30_000)
                expect(chatbot.get_by_text(answer, exact=True)).to_be_visible(timeout=60_000)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            # The base model without the adapter does not know the answer.
            page.get_by_text("Clear history").click()
            expect(page.locator("#chatbot [data-testid='bot']")).to_have_count(0, timeout=30_000)
            page.get_by_label("Adapter").click()
            page.get_by_role("option", name=web_demo.BASE_CHOICE).click()
            page.get_by_label("max_new_tokens").first.fill("8")
            textbox.fill(PAIRS[0][0])
            textbox.press("Enter")
            bot = page.locator("#chatbot [data-testid='bot']")
            expect(bot).to_have_count(1, timeout=30_000)
            page.wait_for_timeout(500)
            assert PAIRS[0][1] not in bot.inner_text()
            browser.close()
    finally:
        demo.close()
    assert SCREENSHOT.stat().st_size > 10_000
