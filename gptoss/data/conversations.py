"""Conversations as training data: JSONL files of OpenAI-style messages -> token ids and a loss mask.

A conversations file holds one JSON object per line, `{"messages": [...]}`, each message one of

    {"role": "system" | "developer" | "user", "content": "..."}
    {"role": "assistant", "content": "the answer", "thinking": "optional reasoning",
     "tool_calls": [{"name": "f", "arguments": {...}}]}      # or OpenAI's {"function": {...}} form
    {"role": "tool", "name": "f", "content": "the tool's result"}

and every conversation has at least one assistant message. A conversation is rendered in the chat
format of the tokenizer (`renderer_for`):

- o200k_harmony (gpt-oss): harmony, rendered by OpenAI's `openai-harmony` itself: the thinking on
  the "analysis" channel, the answer on "final", tool calls on "commentary" to `functions.NAME`,
  tool results from `functions.NAME`. Harmony drops the analysis of earlier turns and ends the last
  answer with <|return|>, as gpt-oss was trained; `HarmonyRenderer.render` uses its training
  rendering unchanged.
- char and bpe: `ChatTemplate`, this project's own template on special tokens the tokenizer gains
  (`with_chat_tokens`; saved with it):

      <|system|>You are terse.<|end|>
      <|user|>What is 2 + 2?<|end|>
      <|assistant|><|think|>2 + 2 = 4<|answer|>4<|end|>
      <|assistant|><|call|>get_time {"zone": "UTC"}<|end|>   a tool call: name, then its JSON arguments
      <|tool|>result<|end|>

  (one line each here; nothing is written between messages). A prompt ends with `<|assistant|>`,
  and the model writes the rest of the message, up to and including its `<|end|>`.

The loss mask (`Example.trained`) is True exactly for the tokens an assistant message adds after
the prompt that asks for it (its `<|start|>assistant` / `<|assistant|>` header): the model learns to
write replies, never to predict the user's or a tool's text.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path

ROLES = ("system", "developer", "user", "assistant", "tool")
HARMONY_FILE = "o200k_base.tiktoken"


@dataclass(frozen=True)
class Example:
    """One rendered conversation: its token ids and, for each, whether it is a trained (assistant) token."""

    ids: list[int]
    trained: list[bool]


# ---------------------------------------------------------------------------------------- reading
def check_messages(messages, where: str) -> list[dict]:
    """`messages` (a parsed conversation) checked and normalized: tool calls as {"name", "arguments"
    (a JSON string)}. Raises ValueError naming `where` (file:line) and the problem."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: \"messages\" must be a non-empty list of messages")
    checked = []
    for number, message in enumerate(messages, 1):
        at = f"{where}, message {number}"
        if not isinstance(message, dict):
            raise ValueError(f"{at}: a message must be an object with a role and content, got {message!r}")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"{at}: unknown role {role!r}; a role is one of {', '.join(ROLES)}")
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise ValueError(f"{at}: content must be a string, got {type(content).__name__}")
        out = {"role": role, "content": content}
        if role == "assistant":
            thinking = message.get("thinking", message.get("reasoning")) or ""
            if not isinstance(thinking, str):
                raise ValueError(f"{at}: thinking must be a string, got {type(thinking).__name__}")
            calls = [normalize_tool_call(call, at) for call in message.get("tool_calls") or []]
            if not (content or calls):
                raise ValueError(f"{at}: an assistant message needs content or tool_calls")
            out.update(thinking=thinking, tool_calls=calls)
        elif role == "tool":
            if not isinstance(message.get("name"), str) or not message["name"]:
                raise ValueError(f"{at}: a tool message needs the \"name\" of the tool that answered")
            out["name"] = message["name"]
        checked.append(out)
    if not any(m["role"] == "assistant" for m in checked):
        raise ValueError(f"{where}: the conversation has no assistant message, so nothing to learn from")
    return checked


def normalize_tool_call(call, where: str) -> dict:
    """{"name", "arguments" (JSON text)} from our form or OpenAI's {"function": {"name", "arguments"}}."""
    function = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ValueError(f"{where}: a tool call must be {{\"name\": ..., \"arguments\": ...}}, got {call!r}")
    arguments = function.get("arguments", {})
    return {"name": function["name"], "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}


def read_jsonl(path: str | Path, what: str) -> Iterator[tuple[str, object]]:
    """("file:line", value) for each non-blank line of a JSONL file of `what`; a missing file or a
    line that is not JSON is an error naming the file and line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None


def read_conversations(path: str | Path) -> list[list[dict]]:
    """The conversations of a JSONL file (one {"messages": [...]} per line; blank lines skipped),
    checked: a malformed line is a ValueError naming the file and line number."""
    conversations = []
    for where, record in read_jsonl(path, "conversations"):
        if not isinstance(record, dict) or "messages" not in record:
            raise ValueError(f"{where}: each line must be an object with \"messages\"")
        conversations.append(check_messages(record["messages"], where))
    if not conversations:
        raise ValueError(f"{path} holds no conversations")
    return conversations


# ---------------------------------------------------------------------------------------- char / bpe
class ChatTemplate:
    """This project's chat template for char and bpe tokenizers (see the module doc)."""

    SYSTEM, USER, ASSISTANT, TOOL = "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"
    THINK, ANSWER, CALL, END = "<|think|>", "<|answer|>", "<|call|>", "<|end|>"
    TOKENS = (SYSTEM, USER, ASSISTANT, TOOL, THINK, ANSWER, CALL, END)

    def __init__(self, tokenizer):
        if not has_chat_tokens(tokenizer):
            raise ValueError(f"this {tokenizer.kind} tokenizer lacks the chat template's special tokens: add them with with_chat_tokens")
        self.tokenizer = tokenizer
        self.end_id = tokenizer.encode(self.END)[0]
        self.answer_id = tokenizer.encode(self.ANSWER)[0]

    def message_text(self, message: dict) -> tuple[str, str]:
        """(header, body) of one message: the header is what a prompt for it ends with."""
        role = message["role"]
        if role == "assistant":
            body = f"{self.THINK}{message['thinking']}" if message["thinking"] else ""
            if message["content"]:
                body += f"{self.ANSWER}{message['content']}"
            body += "".join(f"{self.CALL}{call['name']} {call['arguments']}" for call in message["tool_calls"])
            return self.ASSISTANT, body + self.END
        header = {"system": self.SYSTEM, "developer": self.SYSTEM, "user": self.USER, "tool": self.TOOL}[role]
        return header, message["content"] + self.END

    def render(self, messages: list[dict]) -> Example:
        """Ids of the whole conversation and its mask (assistant bodies trained, headers not)."""
        ids, trained = [], []
        for message in messages:
            header, body = (self.tokenizer.encode(text) for text in self.message_text(message))
            ids += header + body
            trained += [False] * len(header) + [message["role"] == "assistant"] * len(body)
        return Example(ids, trained)

    def prompt(self, messages: list[dict]) -> list[int]:
        """Ids of `messages` followed by the header of the assistant's next message."""
        return self.render(messages).ids + self.tokenizer.encode(self.ASSISTANT)

    def stop_ids(self) -> list[int]:
        return [self.end_id]

    def parse_reply(self, ids: list[int]) -> dict:
        """{"thinking", "content"} of a generated reply (ids after the prompt, up to its <|end|>)."""
        text = self.tokenizer.decode([i for i in ids if i != self.end_id])
        thinking, _, answer = text.rpartition(self.ANSWER)
        return {"thinking": thinking.removeprefix(self.THINK), "content": answer}


def has_chat_tokens(tokenizer) -> bool:
    """Whether every special token of the chat template encodes as one id with this tokenizer."""
    try:
        return all(len(tokenizer.encode(name)) == 1 for name in ChatTemplate.TOKENS)
    except ValueError:  # a char tokenizer without them: "<" or "|" may not even be characters of it
        return False


def with_chat_tokens(tokenizer):
    """The tokenizer with the chat template's special tokens (itself when it has them)."""
    from gptoss.data.tokenizers import with_special_tokens

    return tokenizer if has_chat_tokens(tokenizer) else with_special_tokens(tokenizer, ChatTemplate.TOKENS)


# ---------------------------------------------------------------------------------------- harmony
class HarmonyRenderer:
    """Conversations in gpt-oss's harmony format, rendered by openai-harmony."""

    def __init__(self, tokenizer, reasoning_effort: str = "medium"):
        files_dir = getattr(tokenizer, "files_dir", None)
        if "TIKTOKEN_ENCODINGS_BASE" not in os.environ and files_dir and (Path(files_dir) / HARMONY_FILE).is_file():
            os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(files_dir)  # openai-harmony reads its tokenizer there (offline)
        import openai_harmony as harmony

        self.harmony = harmony
        try:
            self.encoding = harmony.load_harmony_encoding(harmony.HarmonyEncodingName.HARMONY_GPT_OSS)
        except harmony.HarmonyError as error:
            raise ValueError(
                f"openai-harmony could not load its encoding ({error}); offline, set TIKTOKEN_ENCODINGS_BASE "
                f"to a folder holding {HARMONY_FILE}"
            ) from None
        efforts = {e.name.lower(): e for e in harmony.ReasoningEffort}
        if reasoning_effort not in efforts:
            raise ValueError(f"reasoning effort must be one of {sorted(efforts)}, got {reasoning_effort!r}")
        self.reasoning_effort = efforts[reasoning_effort]
        # what a prompt for the assistant ends with: <|start|>assistant
        self.header = self.encoding.render_conversation_for_completion(harmony.Conversation.from_messages([]), harmony.Role.ASSISTANT)

    def messages(self, messages: list[dict]) -> list:
        """openai-harmony Messages of a conversation: harmony's system message first, system and
        developer messages as developer instructions."""
        h = self.harmony
        out = [h.Message.from_role_and_content(h.Role.SYSTEM, h.SystemContent.new().with_reasoning_effort(self.reasoning_effort))]
        for message in messages:
            role, content = message["role"], message["content"]
            if role in ("system", "developer"):
                out.append(h.Message.from_role_and_content(h.Role.DEVELOPER, h.DeveloperContent.new().with_instructions(content)))
            elif role == "user":
                out.append(h.Message.from_role_and_content(h.Role.USER, content))
            elif role == "tool":
                author = h.Author.new(h.Role.TOOL, f"functions.{message['name']}")
                out.append(h.Message.from_author_and_content(author, content).with_recipient("assistant").with_channel("commentary"))
            else:
                if message.get("thinking"):
                    out.append(h.Message.from_role_and_content(h.Role.ASSISTANT, message["thinking"]).with_channel("analysis"))
                if content:
                    out.append(h.Message.from_role_and_content(h.Role.ASSISTANT, content).with_channel("final"))
                for call in message.get("tool_calls", ()):
                    out.append(h.Message.from_role_and_content(h.Role.ASSISTANT, call["arguments"]).with_channel("commentary")
                               .with_recipient(f"functions.{call['name']}").with_content_type("<|constrain|>json"))  # fmt: skip
        return out

    def render(self, messages: list[dict]) -> Example:
        """Harmony's training rendering of the conversation, and its mask.

        The ids are openai-harmony's own; to find each message in them, each harmony message is
        rendered alone and matched in order (one harmony dropped, an earlier turn's analysis, is
        not there; the last one may end in <|return|> instead of <|end|>)."""
        h = self.harmony
        harmony_messages = self.messages(messages)
        ids = self.encoding.render_conversation_for_training(h.Conversation.from_messages(harmony_messages))
        trained, position = [False] * len(ids), 0
        for message in harmony_messages:
            alone = self.encoding.render(message)
            end = position + len(alone)
            if ids[position : end - 1] != alone[:-1]:
                continue  # dropped by harmony
            if message.author.role == h.Role.ASSISTANT:
                trained[position + len(self.header) : end] = [True] * (len(alone) - len(self.header))
            position = end
        if position != len(ids):
            raise AssertionError("openai-harmony's conversation rendering is not its messages' renderings in order")
        return Example(ids, trained)

    def prompt(self, messages: list[dict]) -> list[int]:
        """Ids of `messages` followed by the header of the assistant's next message."""
        conversation = self.harmony.Conversation.from_messages(self.messages(messages))
        return self.encoding.render_conversation_for_completion(conversation, self.harmony.Role.ASSISTANT)

    def stop_ids(self) -> list[int]:
        return self.encoding.stop_tokens_for_assistant_actions()

    def parse_reply(self, ids: list[int]) -> dict:
        """{"thinking", "content"} of a generated reply (ids after the prompt)."""
        h = self.harmony
        try:
            parsed = self.encoding.parse_messages_from_completion_tokens(ids, h.Role.ASSISTANT)
        except h.HarmonyError:
            return {"thinking": "", "content": ""}  # not valid harmony: no answer
        texts = {"analysis": [], "final": []}
        for message in parsed:
            texts.setdefault(message.channel or "final", []).append("".join(c.text for c in message.content if hasattr(c, "text")))
        return {"thinking": "".join(texts["analysis"]), "content": "".join(texts["final"])}


def renderer_for(tokenizer, reasoning_effort: str = "medium"):
    """Harmony for o200k_harmony, the chat template for char and bpe tokenizers that have its tokens."""
    if tokenizer.kind == "o200k_harmony":
        return HarmonyRenderer(tokenizer, reasoning_effort)
    if tokenizer.kind in ("char", "bpe"):
        return ChatTemplate(tokenizer)
    raise ValueError(f"conversations need an o200k_harmony, char or bpe tokenizer; this one is {tokenizer.kind}")


def tokenize_conversations(path: str | Path, renderer, max_tokens: int) -> list[Example]:
    """Every conversation of a JSONL file rendered; one longer than `max_tokens` (the window: the
    model's context) is a ValueError naming its line, as is one whose reply is cut off."""
    examples = []
    path = Path(path)
    numbers = [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()] if path.is_file() else []
    for number, messages in zip(numbers, read_conversations(path)):
        example = renderer.render(messages)
        # a window of max_tokens inputs holds max_tokens + 1 tokens (the last one only as a target)
        if len(example.ids) > max_tokens + 1:
            raise ValueError(
                f"{path}:{number}: the conversation takes {len(example.ids)} tokens, more than a window of "
                f"{max_tokens} (+1) holds: shorten it, or train with a longer seq_len"
            )
        examples.append(example)
    return examples
