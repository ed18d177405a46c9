"""OpenAI's request and reply shapes, in token ids: conversations rendered as prompts, generated
tokens parsed back into deltas (content, reasoning_content, tool_calls).

- gpt-oss models (o200k_harmony tokenizer): the conversation is rendered in harmony by
  openai-harmony (system message with the reasoning effort, developer message with the
  instructions and the function tools, tool results as messages from `functions.NAME`); the reply is
  parsed by its StreamableParser: the analysis channel becomes `reasoning_content`, a message to
  `functions.NAME` a tool call, the rest `content`.
- other models: gptoss.inference.chat_format's plain "User: / Assistant:" transcript.

Bad input raises BadRequest(message, param), which the app turns into a 400 in OpenAI's shape.
"""

from __future__ import annotations

import json
import uuid

from gptoss.inference.chat_format import HarmonyFormat, PlainFormat
from gptoss.inference.stops import REPLACEMENT_CHARACTER

ROLES = ("system", "developer", "user", "assistant", "tool")
PLAIN_STOP = "\nUser:"  # where a plain transcript's next user turn would start


class BadRequest(ValueError):
    """A request the server refuses (400): message for the client, the field at fault."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


def message_text(message: dict, index: int) -> str:
    """The text of a message's content: a string, or a list of {"type": "text", "text": ...} parts."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise BadRequest(f"messages[{index}].content must be a string or a list of text parts (only text is supported)", f"messages[{index}].content")


def check_messages(messages) -> list[dict]:
    """Check the shape and order of a conversation: system/developer messages first, then the
    exchange; a tool message answers an earlier tool call; it ends with a user or tool message."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list of {role, content} objects", "messages")
    seen_exchange, call_ids = False, set()
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}] must be an object whose role is one of {list(ROLES)}", f"messages[{i}].role")
        role = message["role"]
        message_text(message, i)
        if role in ("system", "developer") and seen_exchange:
            raise BadRequest(f"messages[{i}]: a {role} message must come before the conversation's user and assistant messages", "messages")
        if role in ("user", "assistant"):
            seen_exchange = True
        if role == "assistant":
            for call in check_tool_calls(message.get("tool_calls"), i):
                call_ids.add(call["id"])
        if role == "tool" and not (isinstance(message.get("tool_call_id"), str) and message["tool_call_id"] in call_ids):
            raise BadRequest(f"messages[{i}]: a tool message must answer a tool call of an earlier assistant message (tool_call_id)", "messages")
    if messages[-1]["role"] not in ("user", "tool"):
        raise BadRequest("the last message must be from the user (or a tool result): the reply is the assistant's", "messages")
    if not seen_exchange:
        raise BadRequest("messages hold no user message", "messages")
    return messages


def check_tool_calls(calls, index: int) -> list[dict]:
    if calls is None:
        return []
    ok = isinstance(calls, list) and all(
        isinstance(c, dict) and isinstance(c.get("id"), str) and isinstance(c.get("function"), dict)
        and isinstance(c["function"].get("name"), str) and isinstance(c["function"].get("arguments", ""), str)
        for c in calls
    )  # fmt: skip
    if not ok:
        raise BadRequest(f"messages[{index}].tool_calls must be a list of {{id, function: {{name, arguments}}}}", f"messages[{index}].tool_calls")
    return calls


def check_tools(tools, tool_choice) -> list[dict]:
    """The function tools offered (none when tool_choice is "none")."""
    if tool_choice not in (None, "auto", "none"):
        raise BadRequest('tool_choice: only "auto" and "none" are supported', "tool_choice")
    if tools is None or tool_choice == "none":
        return []
    ok = isinstance(tools, list) and all(
        isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str) and isinstance(t["function"].get("parameters", {}), dict)
        for t in tools
    )  # fmt: skip
    if not ok:
        raise BadRequest("tools must be a list of {type: 'function', function: {name, description, parameters}}", "tools")
    return [t["function"] for t in tools]


class TextDecoder:
    """Token ids in, new text out, holding back an unfinished multi-byte character."""

    def __init__(self, tokenizer):
        self.tokenizer, self.tokens, self.shown = tokenizer, [], 0

    def push(self, tokens: list[int], final: bool = False) -> str:
        self.tokens += tokens
        text = self.tokenizer.decode(self.tokens)
        if not final:
            text = text.rstrip(REPLACEMENT_CHARACTER)
        new, self.shown = text[self.shown :], max(self.shown, len(text))
        return new


class HarmonyChat:
    """gpt-oss conversations: harmony prompts and parsed replies."""

    reasoning = True

    def __init__(self, tokenizer):
        self.format = HarmonyFormat(tokenizer)  # loads openai-harmony's encoding, offline
        self.harmony, self.encoding = self.format.harmony, self.format.encoding
        self.stop_token_ids = frozenset(self.encoding.stop_tokens_for_assistant_actions())
        self.call_token = self.encoding.encode("<|call|>", allowed_special="all")[0]
        self.stop_strings: list[str] = []

    def prompt(self, messages: list[dict], tools: list[dict], reasoning_effort: str | None) -> list[int]:
        h = self.harmony
        efforts = {e.name.lower(): e for e in h.ReasoningEffort}
        if reasoning_effort is not None and reasoning_effort not in efforts:
            raise BadRequest(f"reasoning_effort must be one of {sorted(efforts)}", "reasoning_effort")
        system = h.SystemContent.new().with_reasoning_effort(efforts[reasoning_effort or "medium"])
        rendered = [h.Message.from_role_and_content(h.Role.SYSTEM, system)]
        instructions = "\n\n".join(message_text(m, i) for i, m in enumerate(messages) if m["role"] in ("system", "developer"))
        if instructions or tools:
            developer = h.DeveloperContent.new()
            if instructions:
                developer = developer.with_instructions(instructions)
            if tools:
                developer = developer.with_function_tools([
                    h.ToolDescription.new(t["name"], t.get("description", ""), parameters=t.get("parameters")) for t in tools
                ])  # fmt: skip
            rendered.append(h.Message.from_role_and_content(h.Role.DEVELOPER, developer))
        names = {}  # tool call id -> function name
        for i, message in enumerate(messages):
            role, text = message["role"], message_text(message, i)
            if role == "user":
                rendered.append(h.Message.from_role_and_content(h.Role.USER, text))
            elif role == "assistant":
                if text:
                    rendered.append(h.Message.from_role_and_content(h.Role.ASSISTANT, text).with_channel("final"))
                for call in message.get("tool_calls") or []:
                    name = call["function"]["name"]
                    names[call["id"]] = name
                    rendered.append(
                        h.Message.from_role_and_content(h.Role.ASSISTANT, call["function"].get("arguments", ""))
                        .with_channel("commentary").with_recipient(f"functions.{name}").with_content_type("<|constrain|>json")
                    )  # fmt: skip
            elif role == "tool":
                author = h.Author.new(h.Role.TOOL, f"functions.{names[message['tool_call_id']]}")
                rendered.append(h.Message.from_author_and_content(author, text).with_channel("commentary").with_recipient("assistant"))
        conversation = h.Conversation.from_messages(rendered)
        return self.encoding.render_conversation_for_completion(conversation, h.Role.ASSISTANT)

    def reply(self) -> HarmonyReply:
        return HarmonyReply(self)


class HarmonyReply:
    """Parses a harmony reply token by token into OpenAI deltas."""

    def __init__(self, chat: HarmonyChat):
        self.chat = chat
        self.parser = chat.harmony.StreamableParser(chat.encoding, role=chat.harmony.Role.ASSISTANT)
        self.calls: list[dict] = []  # tool calls so far, OpenAI-shaped
        self.call_message = None  # index of the parsed message the last tool call belongs to
        self.broken = False

    def push(self, tokens: list[int], final: bool = False) -> list[dict]:
        """Deltas for these tokens: {"content": s} | {"reasoning_content": s} | {"tool_calls": [...]}."""
        deltas = []
        for token in tokens:
            if self.broken:
                break
            try:
                self.parser.process(token)
            except self.chat.harmony.HarmonyError:
                self.broken = True  # not valid harmony: what came so far stands
                break
            piece = self.parser.last_content_delta
            if not piece:
                continue
            recipient = self.parser.current_recipient or ""
            if recipient.startswith("functions."):
                message = len(self.parser.messages)
                if self.call_message != message:  # a new call: announce its id and name
                    self.call_message = message
                    call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                            "function": {"name": recipient.removeprefix("functions."), "arguments": ""}}  # fmt: skip
                    self.calls.append(call)
                    deltas.append({"tool_calls": [dict(json.loads(json.dumps(call)), index=len(self.calls) - 1)]})
                self.calls[-1]["function"]["arguments"] += piece
                deltas.append({"tool_calls": [{"index": len(self.calls) - 1, "function": {"arguments": piece}}]})
            elif self.parser.current_channel == "analysis":
                deltas.append({"reasoning_content": piece})
            else:
                deltas.append({"content": piece})
        return deltas

    def finish_reason(self, finish: str, stop_token: int | None) -> str:
        return "tool_calls" if self.calls or stop_token == self.chat.call_token else finish


class PlainChat:
    """Conversations for base models: the plain transcript, which the model continues until it
    starts the next user turn or ends the text."""

    reasoning = False

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.stop_token_ids = frozenset([tokenizer.eot_id] if tokenizer.eot_id is not None else [])
        self.stop_strings = [PLAIN_STOP]

    def prompt(self, messages: list[dict], tools: list[dict], reasoning_effort: str | None) -> list[int]:
        if tools:
            raise BadRequest("tools need a gpt-oss (harmony) model", "tools")
        if reasoning_effort is not None:
            raise BadRequest("reasoning_effort applies to gpt-oss (harmony) models only", "reasoning_effort")
        if any(m["role"] == "tool" for m in messages):
            raise BadRequest("tool messages need a gpt-oss (harmony) model", "messages")
        system = "\n".join(message_text(m, i) for i, m in enumerate(messages) if m["role"] in ("system", "developer"))
        history = [(m["role"], message_text(m, i)) for i, m in enumerate(messages) if m["role"] in ("user", "assistant")]
        return PlainFormat(self.tokenizer, system or None).prompt(history)

    def reply(self) -> PlainReply:
        return PlainReply(self.tokenizer)


class PlainReply:
    """A plain reply: text deltas, without the space the transcript puts after "Assistant:"."""

    calls: list[dict] = []

    def __init__(self, tokenizer):
        self.decoder, self.started = TextDecoder(tokenizer), False

    def push(self, tokens: list[int], final: bool = False) -> list[dict]:
        text = self.decoder.push(tokens, final)
        if not self.started:
            text = text.lstrip(" ")
            self.started = bool(text)
        return [{"content": text}] if text else []

    def finish_reason(self, finish: str, stop_token: int | None) -> str:
        return finish


def chat_for(tokenizer):
    """Harmony for the o200k_harmony tokenizer (gpt-oss), the plain transcript otherwise."""
    return HarmonyChat(tokenizer) if tokenizer.kind == "o200k_harmony" else PlainChat(tokenizer)
