"""The chat page of `gptoss serve` in a real browser (headless chromium through selenium): it loads,
a message sent streams its reply into the view with the reasoning folded apart from the answer and
the reply's tokens/s, and the stop button stops a reply (its request leaves the engine).

GPTOSS_SERVE_SCREENSHOT=docs/img/serve_page.png saves the screenshot of the docs."""

from __future__ import annotations

import os
import time

import pytest
import torch

from gptoss.config import GPTConfig
from gptoss.serve.app import create_app
from gptoss.serve.openai_format import HarmonyChat
from test_app import ScriptedModel, harmony_tokenizer, running_server  # noqa: F401 (a fixture)
from test_report import browser

REASONING = "The user quotes Juliet's balcony speech; answer as Romeo would."
ANSWER = "Call me but love, and I'll be new baptized; henceforth I never will be Romeo."
STORY = "Once upon a time, " + "a king ruled a small and happy land, " * 40  # longer than any test waits for


class SlowScriptedModel(ScriptedModel):
    """Scripted, and slow enough (a step takes at least 30 ms) that the test sees a reply grow."""

    def forward(self, *args, **kwargs):
        time.sleep(0.03)
        return super().forward(*args, **kwargs)


@pytest.fixture(scope="module")
def page(harmony_tokenizer):  # noqa: F811
    """(the page's URL, the server) for a gpt-oss-tiny rigged to think, then answer; or tell a long story."""
    encoding = HarmonyChat(harmony_tokenizer).encoding
    encode = lambda text: encoding.encode(text, allowed_special="all")  # noqa: E731
    scripts = [  # the first whose trigger the conversation holds: the latest message's first
        ("Tell me a long story", encode(f"<|channel|>final<|message|>{STORY}<|return|>")),
        ("Wherefore art thou Romeo?", encode(f"<|channel|>analysis<|message|>{REASONING}<|end|><|start|>assistant<|channel|>final<|message|>{ANSWER}<|return|>")),
    ]  # fmt: skip
    torch.manual_seed(0)
    config = GPTConfig.preset("gpt-oss-tiny", vocab_size=harmony_tokenizer.vocab_size, max_seq_len=1024, num_layers=1)
    app = create_app(SlowScriptedModel(config, harmony_tokenizer, scripts).eval(), harmony_tokenizer, model_name="gpt-oss-tiny")
    with running_server(app) as url:
        yield url + "/", app.state.server


@pytest.fixture
def driver():
    driver = browser()
    driver.set_window_size(1200, 760)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver, script: str, seconds: float = 20.0):
    """The value of a JavaScript expression once it is truthy (a failure after `seconds`)."""
    deadline = time.monotonic() + seconds
    while not (value := driver.execute_script("return " + script)):
        assert time.monotonic() < deadline, f"timed out waiting for: {script}"
        time.sleep(0.02)
    return value


def send(driver, text: str) -> None:
    driver.execute_script("document.getElementById('message').value = arguments[0];"
                          "document.getElementById('composer').requestSubmit();", text)  # fmt: skip


def test_a_message_streams_its_reply_with_the_reasoning_apart(page, driver):
    url, _ = page
    driver.get(url)
    assert driver.title == "gptoss serve"
    assert wait_for(driver, "document.getElementById('model').textContent.startsWith('gpt-oss-tiny')")
    driver.execute_script("document.getElementById('temperature').value = '0'; document.getElementById('effort').value = 'low';")
    send(driver, "Wherefore art thou Romeo?")
    partial = wait_for(driver, "(document.querySelector('.assistant .answer') || {}).textContent")
    assert ANSWER.startswith(partial) and len(partial) < len(ANSWER)  # seen while it streams
    wait_for(driver, "document.querySelector('.assistant[data-finish]')")
    view = driver.execute_script("""const turn = document.querySelector('.assistant');
        return {answer: turn.querySelector('.answer').textContent, reasoning: turn.querySelector('details.reasoning div').textContent,
                folded: !turn.querySelector('details.reasoning').open, stats: turn.querySelector('.stats').textContent,
                finish: turn.dataset.finish, user: document.querySelector('.user').textContent};""")  # fmt: skip
    assert (view["answer"], view["reasoning"], view["folded"], view["finish"]) == (ANSWER, REASONING, True, "stop")
    assert view["user"] == "Wherefore art thou Romeo?"
    assert "tokens/s" in view["stats"] and "first token after" in view["stats"], view["stats"]
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    if os.environ.get("GPTOSS_SERVE_SCREENSHOT"):
        driver.execute_script("document.querySelector('details.reasoning').open = true;")
        send(driver, "Tell me a long story")
        wait_for(driver, "document.querySelectorAll('.assistant .answer')[1].textContent.length > 120")
        driver.find_element("id", "stop").click()
        wait_for(driver, "document.querySelectorAll('.assistant[data-finish]').length == 2")
        driver.save_screenshot(os.environ["GPTOSS_SERVE_SCREENSHOT"])


def test_the_stop_button_stops_the_reply(page, driver):
    url, server = page
    driver.get(url)
    wait_for(driver, "document.getElementById('model').textContent.startsWith('gpt-oss-tiny')")
    send(driver, "Tell me a long story")
    wait_for(driver, "(document.querySelector('.assistant .answer') || {}).textContent")
    assert server.engine.active == 1
    driver.find_element("id", "stop").click()
    assert wait_for(driver, "document.querySelector('.assistant').dataset.finish") == "stopped"
    shown = driver.execute_script("return document.querySelector('.assistant .answer').textContent")
    assert STORY.startswith(shown) and len(shown) < len(STORY)
    deadline = time.monotonic() + 5
    while server.engine.active and time.monotonic() < deadline:  # the aborted request leaves the batch
        time.sleep(0.02)
    assert server.engine.active == 0
    time.sleep(0.2)
    assert driver.execute_script("return document.querySelector('.assistant .answer').textContent") == shown
    assert not driver.find_element("id", "send").get_attribute("disabled")
