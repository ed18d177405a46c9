"""Chat formats: a conversation rendered as the prompt a model continues, and its reply parsed back.

Three formats, picked by the tokenizer (`chat_format_for`); the first two render conversations with
the same code that renders fine-tuning data (gptoss.data.conversations), so a model is prompted
exactly as it was trained:
- harmony, for gpt-oss models (o200k_harmony tokenizer): rendered with OpenAI's `openai-harmony`
  library, as gpt-oss was trained. The model answers in messages on channels: "analysis" (its chain
  of thought, hidden unless show_analysis) and "final" (the answer shown). Only final answers enter
  the history. Generation ends at <|return|> (or <|call|>, a tool call). openai-harmony reads
  o200k_base.tiktoken from the folder in TIKTOKEN_ENCODINGS_BASE (offline); we point it at the
  tokenizer's own files when that variable is unset.
- the chat template, for char and bpe models fine-tuned here (their tokenizer has its special
  tokens): the reasoning after <|think|> is shown as the "analysis" channel, the answer after
  <|answer|> as "final"; generation ends at <|end|>.
- plain, for every other model: a transcript "User: ...\\nAssistant: ...\\n" that the model
  continues until it starts the next "\\nUser:" line or ends the text.

When a conversation no longer fits in the model's context, `fit_prompt` drops its oldest exchanges.
"""

from __future__ import annotations

from collections.abc import Iterator

from gptoss.data.conversations import ChatTemplate, HarmonyRenderer, has_chat_tokens
from gptoss.inference.generation import stream, stream_text

Turn = tuple[str, str]  # (role: "user" or "assistant", text)


def messages_of(history: list[Turn], system: str | None) -> list[dict]:
    """The chat history as conversation messages (gptoss.data.conversations), the system text first."""
    messages = [{"role": "system", "content": system}] if system else []
    for role, text in history:
        messages.append({"role": role, "content": text, **({"thinking": "", "tool_calls": []} if role == "assistant" else {})})
    return messages


class HarmonyFormat:
    """gpt-oss's chat format, rendered and parsed by openai-harmony."""

    def __init__(self, tokenizer, system: str | None = None, reasoning_effort: str = "medium"):
        self.renderer = HarmonyRenderer(tokenizer, reasoning_effort)
        self.harmony, self.encoding, self.system = self.renderer.harmony, self.renderer.encoding, system

    def prompt(self, history: list[Turn]) -> list[int]:
        """Token ids of the conversation, ending where the assistant's next message starts."""
        return self.renderer.prompt(messages_of(history, self.system))

    def reply(self, model, prompt: list[int], max_new_tokens: int, **options) -> Iterator[tuple[str, str]]:
        """Generate the assistant's messages: yields (channel, text) pieces as they are parsed."""
        parser = self.harmony.StreamableParser(self.encoding, role=self.harmony.Role.ASSISTANT)
        stops = self.encoding.stop_tokens_for_assistant_actions()
        for step in stream(model, [prompt], max_new_tokens, stop_token_ids=stops, **options):
            for token in step[0]:
                try:
                    parser.process(token)
                except self.harmony.HarmonyError as error:
                    raise ValueError(f"the model's reply is not valid harmony ({error})") from None
                if parser.last_content_delta:
                    yield parser.current_channel or "final", parser.last_content_delta


class TemplateFormat:
    """This project's chat template (gptoss.data.conversations.ChatTemplate), for char and bpe models."""

    def __init__(self, tokenizer, system: str | None = None):
        self.template, self.tokenizer, self.system = ChatTemplate(tokenizer), tokenizer, system

    def prompt(self, history: list[Turn]) -> list[int]:
        """Token ids of the conversation, ending with the <|assistant|> that the model continues."""
        return self.template.prompt(messages_of(history, self.system))

    def reply(self, model, prompt: list[int], max_new_tokens: int, **options) -> Iterator[tuple[str, str]]:
        """Generate the assistant's message: yields ("analysis", text) pieces of its reasoning, then
        ("final", text) pieces of its answer, as they are produced."""
        think_id = self.tokenizer.encode(ChatTemplate.THINK)[0]
        channel, ids, shown = "final", [], 0
        for step in stream(model, [prompt], max_new_tokens, stop_token_ids=self.template.stop_ids(), **options):
            for token in step[0]:
                if token in (think_id, self.template.answer_id):  # a new part: reasoning, or the answer
                    channel, ids, shown = ("analysis" if token == think_id else "final"), [], 0
                    continue
                if token == self.template.end_id:
                    return
                ids.append(token)
                text = self.tokenizer.decode(ids).rstrip("\ufffd")  # an unfinished multi-byte character waits
                if len(text) > shown:
                    yield channel, text[shown:]
                    shown = len(text)


class PlainFormat:
    """A plain "User: / Assistant:" transcript, for models trained on ordinary text."""

    def __init__(self, tokenizer, system: str | None = None):
        self.tokenizer = tokenizer
        self.system = system

    def transcript(self, history: list[Turn]) -> str:
        lines = [self.system] if self.system else []
        lines += [f"{'User' if role == 'user' else 'Assistant'}: {text}" for role, text in history]
        return "\n".join(lines) + "\nAssistant:"

    def prompt(self, history: list[Turn]) -> list[int]:
        """Token ids of the transcript, ending with the "Assistant:" that the model continues."""
        return self.tokenizer.encode(self.transcript(history))

    def reply(self, model, prompt: list[int], max_new_tokens: int, **options) -> Iterator[tuple[str, str]]:
        """Generate the assistant's answer: yields ("final", text) pieces as they are produced."""
        stops = [self.tokenizer.eot_id] if self.tokenizer.eot_id is not None else []
        text = self.tokenizer.decode(prompt)
        first = True
        for piece in stream_text(
            model, self.tokenizer, text, max_new_tokens, stop_strings=["\nUser:"], stop_token_ids=stops, **options
        ):
            if first:  # the transcript puts a space after "Assistant:"
                piece, first = piece.lstrip(" "), False
            yield "final", piece


def chat_format_for(tokenizer, system: str | None = None, reasoning_effort: str = "medium"):
    """Harmony for the o200k_harmony tokenizer (gpt-oss), the chat template for a tokenizer that
    has its tokens (a model fine-tuned here), the plain transcript otherwise."""
    if tokenizer.kind == "o200k_harmony":
        return HarmonyFormat(tokenizer, system, reasoning_effort)
    if has_chat_tokens(tokenizer):
        return TemplateFormat(tokenizer, system)
    return PlainFormat(tokenizer, system)


def fit_prompt(chat_format, history: list[Turn], room: int) -> tuple[list[int], list[Turn]]:
    """The prompt for `history`, dropping the oldest exchanges until it takes at most `room`
    tokens, and the history it was made from (ValueError if even the last message alone does not
    fit; `history` itself is left as it was)."""
    kept = list(history)
    prompt = chat_format.prompt(kept)
    while len(prompt) > room and len(kept) > 1:
        del kept[:2]  # the oldest user message and its answer
        prompt = chat_format.prompt(kept)
    if len(prompt) > room:
        raise ValueError(f"this message takes {len(prompt)} tokens, more than the {room} the context leaves for it")
    return prompt, kept
