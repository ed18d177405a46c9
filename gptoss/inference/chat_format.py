"""Chat formats: a conversation rendered as the prompt a model continues, and its reply parsed back.

Two formats, picked by the tokenizer (`chat_format_for`):
- harmony, for gpt-oss models (o200k_harmony tokenizer): the conversation is rendered with OpenAI's
  `openai-harmony` library, as gpt-oss was trained. The model answers in messages on channels:
  "analysis" (its chain of thought, hidden unless show_analysis) and "final" (the answer shown).
  Only final answers enter the history. Generation ends at <|return|> (or <|call|>, a tool call).
  openai-harmony reads o200k_base.tiktoken from the folder in TIKTOKEN_ENCODINGS_BASE (offline);
  we point it at the tokenizer's own files when that variable is unset.
- plain, for every other model: a transcript "User: ...\\nAssistant: ...\\n" that the model
  continues until it starts the next "\\nUser:" line or ends the text.

When a conversation no longer fits in the model's context, `fit_prompt` drops its oldest exchanges.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from gptoss.inference.generation import stream, stream_text

HARMONY_FILE = "o200k_base.tiktoken"
Turn = tuple[str, str]  # (role: "user" or "assistant", text)


class HarmonyFormat:
    """gpt-oss's chat format, rendered and parsed by openai-harmony."""

    def __init__(self, tokenizer, system: str | None = None, reasoning_effort: str = "medium"):
        files_dir = getattr(tokenizer, "files_dir", None)
        if "TIKTOKEN_ENCODINGS_BASE" not in os.environ and files_dir and (files_dir / HARMONY_FILE).is_file():
            os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(files_dir)
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
        header = [harmony.Message.from_role_and_content(
            harmony.Role.SYSTEM, harmony.SystemContent.new().with_reasoning_effort(efforts[reasoning_effort])
        )]
        if system:
            header.append(harmony.Message.from_role_and_content(
                harmony.Role.DEVELOPER, harmony.DeveloperContent.new().with_instructions(system)
            ))
        self.header = header

    def prompt(self, history: list[Turn]) -> list[int]:
        """Token ids of the conversation, ending where the assistant's next message starts."""
        h = self.harmony
        messages = list(self.header)
        for role, text in history:
            if role == "user":
                messages.append(h.Message.from_role_and_content(h.Role.USER, text))
            else:
                messages.append(h.Message.from_role_and_content(h.Role.ASSISTANT, text).with_channel("final"))
        conversation = h.Conversation.from_messages(messages)
        return self.encoding.render_conversation_for_completion(conversation, h.Role.ASSISTANT)

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
    """Harmony for the o200k_harmony tokenizer (gpt-oss), the plain transcript otherwise."""
    if tokenizer.kind == "o200k_harmony":
        return HarmonyFormat(tokenizer, system, reasoning_effort)
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
