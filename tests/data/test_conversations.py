"""Conversations as data: the assistant-only loss mask (a property over random conversations), the
harmony rendering against openai-harmony's own, the chat template's special tokens, bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings, strategies as st

from gptoss.data.conversations import (
    ChatTemplate,
    HarmonyRenderer,
    check_messages,
    read_conversations,
    renderer_for,
    tokenize_conversations,
    with_chat_tokens,
)
from gptoss.data.tokenizers import CharTokenizer, build_tokenizer, load_tokenizer

ALPHABET = "abcdefghijklmnopqrstuvwxyz 0123456789{}:\",<|>"  # "<|" and "|>": text that looks like a special token is still text
TEMPLATE_TOKENIZER = with_chat_tokens(CharTokenizer.from_text(ALPHABET))


@pytest.fixture(scope="module")
def harmony_tokenizer():
    from conftest import shared_data_path

    return build_tokenizer("o200k_harmony", files_dir=shared_data_path("tokenizers/o200k_base.tiktoken").parent)


text = st.text(alphabet="abc xyz019<|>", max_size=8)
message = st.one_of(
    st.builds(lambda r, c: {"role": r, "content": c}, st.sampled_from(["system", "developer", "user"]), text),
    st.builds(lambda c: {"role": "tool", "name": "f", "content": c}, text),
    st.builds(lambda c, t, calls: {"role": "assistant", "content": c or "ok", "thinking": t,
                                   "tool_calls": [{"name": "f", "arguments": {"x": a}} for a in calls]},  # fmt: skip
              text, text, st.lists(text, max_size=2)),
)
conversation = st.lists(message, min_size=1, max_size=6).map(lambda ms: ms + [{"role": "assistant", "content": "end"}])


@settings(max_examples=60, deadline=None)
@given(conversation)
def test_only_assistant_tokens_are_trained(messages):
    """Walking the ids independently: a token is trained iff it lies in an assistant message after
    its <|assistant|> header, up to and including that message's <|end|>."""
    tokenizer = TEMPLATE_TOKENIZER
    example = ChatTemplate(tokenizer).render(check_messages(messages, "test"))
    assistant, end = tokenizer.encode("<|assistant|>")[0], tokenizer.encode("<|end|>")[0]
    headers = {tokenizer.encode(t)[0] for t in ("<|system|>", "<|user|>", "<|tool|>", "<|assistant|>")}
    inside = False
    for token, trained in zip(example.ids, example.trained):
        if token in headers:
            assert not trained
            inside = token == assistant
            continue
        assert trained == inside
        if token == end:
            inside = False
    # the windows the trainer builds: a target is kept (not -1) exactly where its token is trained
    from gptoss.train.sft import padded_windows

    x, y = padded_windows([example], len(example.ids) + 3)
    ids, trained = torch.tensor(example.ids), torch.tensor(example.trained)
    assert torch.equal(x[0, : len(ids) - 1], ids[:-1])
    assert torch.equal(y[0, : len(ids) - 1] != -1, trained[1:]) and (y[0, len(ids) - 1 :] == -1).all()
    assert torch.equal(y[0][y[0] != -1], ids[1:][trained[1:]])


def test_the_chat_template_renders_every_kind_of_message():
    messages = check_messages([
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "thinking": "call f", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
        {"role": "tool", "name": "f", "content": "2"}, {"role": "assistant", "thinking": "so", "content": "it is 2"},
    ], "test")  # fmt: skip
    tokenizer = with_chat_tokens(CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz 0123456789{}\":"))
    example = ChatTemplate(tokenizer).render(messages)
    assert tokenizer.decode(example.ids) == (
        "<|system|>be brief<|end|><|user|>hi<|end|><|assistant|><|think|>call f<|call|>f {\"x\": 1}<|end|>"
        "<|tool|>2<|end|><|assistant|><|think|>so<|answer|>it is 2<|end|>"
    )
    trained = tokenizer.decode([i for i, t in zip(example.ids, example.trained) if t])
    assert trained == "<|think|>call f<|call|>f {\"x\": 1}<|end|><|think|>so<|answer|>it is 2<|end|>"


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_the_tokenizer_gains_the_chat_tokens_and_saves_them(kind, tmp_path):
    corpus = "the quick brown fox jumps over the lazy dog <|> 0123456789 " * 20
    plain = build_tokenizer(kind, corpus, vocab_size=300)
    chat = with_chat_tokens(plain)
    assert chat.vocab_size == plain.vocab_size + len(ChatTemplate.TOKENS)
    assert plain.encode("the fox") == chat.encode("the fox")  # old ids unchanged
    ids = chat.encode("fox<|user|>dog<|end|>")
    assert len(ids) == len(chat.encode("fox")) + 1 + len(chat.encode("dog")) + 1 and chat.decode(ids) == "fox<|user|>dog<|end|>"
    assert len(chat.encode("<|")) == 2 if kind == "char" else True  # a piece of a special token is text
    loaded = load_tokenizer(chat.save(tmp_path))
    assert loaded.fingerprint == chat.fingerprint != plain.fingerprint and loaded.encode("<|answer|>") == chat.encode("<|answer|>")
    assert with_chat_tokens(chat) is chat


# ---------------------------------------------------------------------------------------- harmony
def test_harmony_rendering_equals_openai_harmony_token_for_token(harmony_tokenizer):
    """Every message kind, built here directly with openai-harmony, rendered by openai-harmony's
    training rendering: our ids are exactly its ids, and the mask covers the assistant's messages."""
    import openai_harmony as h

    renderer = renderer_for(harmony_tokenizer)
    assert isinstance(renderer, HarmonyRenderer)
    messages = check_messages([
        {"role": "system", "content": "Be brief."}, {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "thinking": "I add.", "content": "", "tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 2}}]},
        {"role": "tool", "name": "add", "content": "4"},
        {"role": "assistant", "thinking": "The tool said 4.", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"}, {"role": "assistant", "thinking": "Easy: 6.", "content": "6"},
    ], "test")  # fmt: skip
    M, R = h.Message, h.Role
    expected = [
        M.from_role_and_content(R.SYSTEM, h.SystemContent.new()),
        M.from_role_and_content(R.DEVELOPER, h.DeveloperContent.new().with_instructions("Be brief.")),
        M.from_role_and_content(R.DEVELOPER, h.DeveloperContent.new().with_instructions("Use tools.")),
        M.from_role_and_content(R.USER, "What is 2 + 2?"),
        M.from_role_and_content(R.ASSISTANT, "I add.").with_channel("analysis"),
        M.from_role_and_content(R.ASSISTANT, json.dumps({"a": 2, "b": 2})).with_channel("commentary")
        .with_recipient("functions.add").with_content_type("<|constrain|>json"),
        M.from_author_and_content(h.Author.new(R.TOOL, "functions.add"), "4").with_recipient("assistant").with_channel("commentary"),
        M.from_role_and_content(R.ASSISTANT, "The tool said 4.").with_channel("analysis"),
        M.from_role_and_content(R.ASSISTANT, "4").with_channel("final"),
        M.from_role_and_content(R.USER, "And 3 + 3?"),
        M.from_role_and_content(R.ASSISTANT, "Easy: 6.").with_channel("analysis"),
        M.from_role_and_content(R.ASSISTANT, "6").with_channel("final"),
    ]
    encoding = h.load_harmony_encoding(h.HarmonyEncodingName.HARMONY_GPT_OSS)
    oracle = encoding.render_conversation_for_training(h.Conversation.from_messages(expected))
    example = renderer.render(messages)
    assert example.ids == oracle
    # trained: what the assistant wrote after each "<|start|>assistant" (harmony dropped the first turn's analysis)
    trained = encoding.decode([i for i, t in zip(example.ids, example.trained) if t])
    assert trained == (
        ' to=functions.add<|channel|>commentary <|constrain|>json<|message|>{"a": 2, "b": 2}<|call|>'
        "<|channel|>final<|message|>4<|end|>"
        "<|channel|>analysis<|message|>Easy: 6.<|end|><|channel|>final<|message|>6<|return|>"
    )
    # the prompt for the next reply is openai-harmony's completion rendering
    prompt = renderer.prompt(messages[:3])
    assert prompt == encoding.render_conversation_for_completion(h.Conversation.from_messages(expected[:4]), R.ASSISTANT)


def test_the_chat_prompt_is_the_training_rendering(harmony_tokenizer):
    """gptoss chat prompts exactly as fine-tuning renders: the same mechanism."""
    from gptoss.inference.chat_format import HarmonyFormat, TemplateFormat

    history = [("user", "hi"), ("assistant", "yo"), ("user", "ok?")]
    messages = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "ok?"}]  # fmt: skip
    harmony = HarmonyFormat(harmony_tokenizer, system="be kind")
    assert harmony.prompt(history) == renderer_for(harmony_tokenizer).prompt(check_messages(messages + [{"role": "assistant", "content": "x"}], "t")[:-1])
    template = TemplateFormat(TEMPLATE_TOKENIZER)
    rendered = ChatTemplate(TEMPLATE_TOKENIZER).render(check_messages([{"role": "user", "content": "abc"}, {"role": "assistant", "content": "xyz"}], "t"))
    assert template.prompt([("user", "abc")]) == rendered.ids[: rendered.trained.index(True)]


# ---------------------------------------------------------------------------------------- bad input
def write_lines(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


GOOD = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}


@pytest.mark.parametrize("bad, match", [
    ("{not json", r"conversations.jsonl:3: not valid JSON"),
    ({"messages": [{"role": "robot", "content": "a"}, {"role": "assistant", "content": "b"}]}, r":3, message 1: unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": "a"}]}, r":3: the conversation has no assistant message"),
    ({"text": "a"}, r":3: each line must be an object with \"messages\""),
    ({"messages": [{"role": "tool", "content": "a"}, {"role": "assistant", "content": "b"}]}, r"needs the \"name\" of the tool"),
])  # fmt: skip
def test_a_bad_line_is_named_by_its_number(tmp_path, bad, match):
    path = write_lines(tmp_path / "conversations.jsonl", [GOOD, "", bad])  # line 2 is blank
    with pytest.raises(ValueError, match=match):
        read_conversations(path)


def test_a_conversation_longer_than_the_window_is_named(tmp_path):
    long = {"messages": [{"role": "user", "content": "a" * 40}, {"role": "assistant", "content": "b"}]}
    path = write_lines(tmp_path / "c.jsonl", [GOOD, long])
    with pytest.raises(ValueError, match=r"c.jsonl:2: the conversation takes 46 tokens, more than a window of 32"):
        tokenize_conversations(path, ChatTemplate(with_chat_tokens(CharTokenizer.from_text("ab"))), 32)
    with pytest.raises(ValueError, match="lacks the chat template's special tokens"):
        ChatTemplate(CharTokenizer.from_text("ab"))
