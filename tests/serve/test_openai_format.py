"""Conversations rendered in harmony and replies parsed back into OpenAI's fields."""

from __future__ import annotations

import pytest

from conftest import shared_data_path
from gptoss.data.tokenizers import resolve_tokenizer
from gptoss.serve.openai_format import BadRequest, HarmonyChat, check_messages

TOOLS = [{"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]  # fmt: skip


@pytest.fixture(scope="module")
def harmony_chat():
    files = shared_data_path("tokenizers/o200k_base.tiktoken").parent
    return HarmonyChat(resolve_tokenizer("o200k_harmony", files, what="tokenizer"))


def test_reply_separates_reasoning_content_and_tool_calls(harmony_chat):
    encoding = harmony_chat.encoding
    script = ("<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
              'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}')  # fmt: skip
    reply = harmony_chat.reply()
    deltas = reply.push(encoding.encode(script, allowed_special="all"))
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    assert reasoning == "Need the weather."
    assert not any("content" in d for d in deltas)
    assert [c["function"] for c in reply.calls] == [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]
    assert reply.finish_reason("stop", harmony_chat.call_token) == "tool_calls"


def test_tool_result_round_trip_renders_as_openai_harmony_does(harmony_chat):
    encoding = harmony_chat.encoding
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = check_messages([
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 20}'},
    ])  # fmt: skip
    text = encoding.decode(harmony_chat.prompt(messages, TOOLS, "low"))
    assert "Reasoning: low" in text and "type get_weather" in text and "Be brief" in text
    assert text.endswith(
        '<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"temp": 20}<|end|><|start|>assistant'
    )


@pytest.mark.parametrize("messages", [
    [],
    [{"role": "assistant", "content": "hi"}],
    [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}, {"role": "user", "content": "x"}],
    [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "nope", "content": "x"}],
    [{"role": "wizard", "content": "hi"}],
    [{"role": "user", "content": 3}],
])  # fmt: skip
def test_bad_role_order_and_shapes_are_refused(messages):
    with pytest.raises(BadRequest):
        check_messages(messages)
