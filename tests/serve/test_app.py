"""`gptoss serve` over HTTP, with OpenAI's own `openai` client: the server runs with uvicorn on a free
loopback port; replies equal `generate`'s; gpt-oss replies (a rigged gpt-oss-tiny) come back as
reasoning_content, content and tool_calls; every error is a status and OpenAI's error shape; a
client that goes away frees its row; a full queue is refused at once; random bodies never 500."""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time

import httpx2 as httpx  # the HTTP client that the openai package itself uses
import openai
import pytest
import torch
import uvicorn
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import shared_data_path
from gptoss.config import GPTConfig
from gptoss.data.tokenizers import resolve_tokenizer
from gptoss.inference.generation import generate_batch
from gptoss.model import GPT
from gptoss.serve.app import create_app
from gptoss.serve.openai_format import HarmonyChat

API_KEY = "test-key"
PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?"
ERROR_KEYS = {"message", "type", "param", "code"}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip


@contextlib.contextmanager
def running_server(app):
    """Serve `app` with uvicorn on a free 127.0.0.1 port, in a thread; yields the base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class SlowModel(GPT):
    """A model whose every forward pass takes at least `delay` seconds: requests stay in flight
    long enough for a test to disconnect or to fill the queue."""

    delay = 0.02

    def forward(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().forward(*args, **kwargs)


class ScriptedModel(GPT):
    """gpt-oss-tiny rigged to reply with scripted harmony tokens: a prompt whose text contains a
    script's trigger gets that script's tokens, one per step, then <|endoftext|>. Its own forward
    pass still runs (it fills the KV cache the engine moves between batches); only the logits are
    replaced. The next token is keyed by (position, last token), which every row carries."""

    def __init__(self, config, tokenizer, scripts: list[tuple[str, list[int]]]):
        super().__init__(config)
        self.tokenizer, self.scripts = tokenizer, scripts
        self.next_token: dict[tuple[int, int], int] = {}
        self.prompts: list[str] = []

    def forward(self, idx, targets=None, *, cache=None, **kwargs):
        start = cache.next_position.clone()  # (B,): the position of idx[:, 0] in each row
        logits = super().forward(idx, cache=cache, **kwargs)  # (B, 1, vocab)
        B, T = idx.shape
        if T > 1:  # a prefill, batch 1: its prompt picks the script
            text = self.tokenizer.decode(idx[0].tolist())
            self.prompts.append(text)
            reply = next(tokens for trigger, tokens in self.scripts if trigger in text)
            last = int(start[0]) + T - 1
            for k, (before, token) in enumerate(zip([int(idx[0, -1])] + reply, reply)):
                self.next_token[(last + k, before)] = token
        forced = torch.full_like(logits, -math.inf)
        for row in range(B):
            key = (int(start[row]) + T - 1, int(idx[row, -1]))
            forced[row, -1, self.next_token.get(key, self.tokenizer.eot_id)] = 0.0
        return forced


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    return resolve_tokenizer("gpt2", shared_data_path("tokenizers/vocab.bpe").parent, what="tokenizer")


@pytest.fixture(scope="module")
def harmony_tokenizer():
    return resolve_tokenizer("o200k_harmony", shared_data_path("tokenizers/o200k_base.tiktoken").parent, what="tokenizer")


def tiny_model(tokenizer, cls=GPT, max_seq_len=256):
    torch.manual_seed(0)
    return cls(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, max_seq_len=max_seq_len)).eval()


@pytest.fixture(scope="module")
def plain(gpt2_tokenizer):
    """A GPT-2-style tiny model behind an API key: (base URL, model, server)."""
    model = tiny_model(gpt2_tokenizer)
    app = create_app(model, gpt2_tokenizer, model_name="tiny", api_key=API_KEY)
    with running_server(app) as url:
        yield url, model, app.state.server


@pytest.fixture(scope="module")
def slow(gpt2_tokenizer):
    """A slow model with one batch row and room for one waiting request: (base URL, server)."""
    app = create_app(tiny_model(gpt2_tokenizer, SlowModel), gpt2_tokenizer, model_name="slow", max_batch=1, max_queue=1)
    with running_server(app) as url:
        yield url, app.state.server


@pytest.fixture
def client(plain):
    return openai.OpenAI(base_url=plain[0] + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def reference(model, tokenizer, prompt: list[int], n: int, **options) -> tuple[list[int], int]:
    """What generate gives: the new tokens before the end-of-text token, and the tokens sampled."""
    tokens = generate_batch(model, [prompt], n, **options)[0] if options else \
        model.generate(torch.tensor([prompt]), n, temperature=0)[0, len(prompt):].tolist()  # fmt: skip
    if tokenizer.eot_id in tokens:
        end = tokens.index(tokenizer.eot_id)
        return tokens[:end], end + 1
    return tokens, len(tokens)


def streamed_text(chunks) -> tuple[str, str | None, object]:
    """(text, finish_reason, usage) of a stream of completion or chat chunks."""
    text, finish, usage = [], None, None
    for chunk in chunks:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text.append(choice.text if hasattr(choice, "text") else (choice.delta.content or ""))
            finish = choice.finish_reason or finish
    return "".join(text), finish, usage


# ---------------------------------------------------------------------------------------- replies
def test_models_health_and_the_page(plain, client):
    assert [m.id for m in client.models.list()] == ["tiny"]
    health = httpx.get(plain[0] + "/health").json()
    assert health["status"] == "ok" and health["max_batch"] == 16
    page = httpx.get(plain[0] + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize("options", [dict(temperature=0, seed=1), dict(temperature=0.8, top_p=0.9, seed=7)])
def test_completion_equals_generate_streamed_or_not(plain, client, gpt2_tokenizer, options):
    _, model, _ = plain
    prompt = gpt2_tokenizer.encode(PROMPT)
    sampling = {} if options["temperature"] == 0 else options
    tokens, sampled = reference(model, gpt2_tokenizer, prompt, 30, **sampling)
    expected = gpt2_tokenizer.decode(tokens)
    whole = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, **options)
    assert whole.choices[0].text == expected
    assert whole.choices[0].finish_reason == ("length" if sampled == 30 and len(tokens) == 30 else "stop")
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(prompt), sampled)
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, stream=True,
                                            stream_options={"include_usage": True}, **options))  # fmt: skip
    text, finish, usage = streamed_text(chunks)
    assert (text, finish) == (expected, whole.choices[0].finish_reason)
    assert usage.completion_tokens == sampled and usage.total_tokens == len(prompt) + sampled
    assert len(chunks) > 3  # streamed piece by piece, not in one go


def test_chat_equals_generate_streamed_or_not(plain, client, gpt2_tokenizer):
    _, model, _ = plain
    messages = [{"role": "system", "content": "You are Juliet."}, {"role": "user", "content": "Wherefore art thou Romeo?"}]
    prompt = gpt2_tokenizer.encode("You are Juliet.\nUser: Wherefore art thou Romeo?\nAssistant:")
    tokens = generate_batch(model, [prompt], 40, temperature=0, stop_strings=["\nUser:"], tokenizer=gpt2_tokenizer,
                            stop_token_ids=[gpt2_tokenizer.eot_id])[0]  # fmt: skip
    expected = gpt2_tokenizer.decode(tokens).lstrip(" ")
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=40, temperature=0, seed=3)
    assert whole.choices[0].message.content == expected and whole.choices[0].message.role == "assistant"
    assert whole.usage.prompt_tokens == len(prompt)
    stream = client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=40, temperature=0,
                                            seed=3, stream=True, stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text, finish, usage = streamed_text(chunks)
    assert (text, finish) == (expected, whole.choices[0].finish_reason)
    assert usage == whole.usage


def test_stop_strings_end_the_text_before_them(plain, client, gpt2_tokenizer):
    _, model, _ = plain
    tokens, _ = reference(model, gpt2_tokenizer, gpt2_tokenizer.encode(PROMPT), 30)
    full = gpt2_tokenizer.decode(tokens)
    # a stop string of two tokens whose first occurrence starts where a token starts
    decode = gpt2_tokenizer.decode
    k = next(k for k in range(5, 25) if decode(tokens[k : k + 2]).strip() and full.find(decode(tokens[k : k + 2])) == len(decode(tokens[:k])))
    stop = decode(tokens[k : k + 2])
    expected = full[: full.find(stop)]
    for stream in (False, True):
        reply = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, temperature=0, stop=["\x00never", stop], stream=stream)
        text, finish, _ = streamed_text(reply if stream else [reply])
        assert (text, finish) == (expected, "stop")


# ---------------------------------------------------------------------------------------- gpt-oss
@pytest.fixture(scope="module")
def harmony(harmony_tokenizer):
    """gpt-oss-tiny (o200k_harmony) rigged to think, call get_weather, then answer from its result."""
    encoding = HarmonyChat(harmony_tokenizer).encoding  # openai-harmony's
    encode = lambda text: encoding.encode(text, allowed_special="all")  # noqa: E731
    call = ('<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary '
            'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>')  # fmt: skip
    answer = "<|channel|>analysis<|message|>It is warm.<|end|><|start|>assistant<|channel|>final<|message|>It is 20 degrees in Paris.<|return|>"
    torch.manual_seed(0)
    config = GPTConfig.preset("gpt-oss-tiny", vocab_size=harmony_tokenizer.vocab_size, max_seq_len=512, num_layers=2)
    model = ScriptedModel(config, harmony_tokenizer, [('{"temp": 20}', encode(answer)), ("Weather in Paris?", encode(call))]).eval()
    app = create_app(model, harmony_tokenizer, model_name="gpt-oss-tiny")
    with running_server(app) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60), model


def test_gpt_oss_reasoning_content_and_tool_calls_round_trip(harmony):
    client, model = harmony
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Weather in Paris?"}]
    reply = client.chat.completions.create(model="gpt-oss-tiny", messages=messages, tools=TOOLS, reasoning_effort="low", max_tokens=100)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.reasoning_content == "Need the weather." == choice.message.reasoning
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert (call.type, call.function.name, json.loads(call.function.arguments)) == ("function", "get_weather", {"city": "Paris"})
    assert "Reasoning: low" in model.prompts[-1] and "type get_weather" in model.prompts[-1] and "Answer briefly." in model.prompts[-1]

    # streamed: the same, in deltas (tool call arguments in pieces, joined by index)
    chunks = list(client.chat.completions.create(model="gpt-oss-tiny", messages=messages, tools=TOOLS, max_tokens=100, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "Need the weather."
    assert "".join(d.content or "" for d in deltas) == ""
    calls = [t for d in deltas for t in d.tool_calls or []]
    assert {t.index for t in calls} == {0} and calls[0].id and calls[0].function.name == "get_weather"
    assert "".join(t.function.arguments or "" for t in calls) == '{"city": "Paris"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # the tool's result goes back, and the conversation continues
    messages += [choice.message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 20}'}]
    answer = client.chat.completions.create(model="gpt-oss-tiny", messages=messages, tools=TOOLS, max_tokens=100)
    assert answer.choices[0].message.content == "It is 20 degrees in Paris."
    assert answer.choices[0].message.reasoning_content == "It is warm."
    assert answer.choices[0].finish_reason == "stop" and not answer.choices[0].message.tool_calls
    assert model.prompts[-1].endswith('{"temp": 20}<|end|><|start|>assistant')


# ---------------------------------------------------------------------------------------- errors
TOO_LONG = "word " * 300  # > 256 tokens
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
ERRORS = [  # (path, body (a str is sent as is), headers, status, param, code)
    ("/v1/chat/completions", "{not json", None, 400, None, "invalid_json"),
    ("/v1/chat/completions", "[1, 2]", None, 400, None, "invalid_json"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', None, 400, None, "invalid_json"),
    ("/v1/chat/completions", {"model": "tiny"}, None, 400, "messages", None),
    ("/v1/chat/completions", dict(CHAT, messages=[{"role": "user", "content": TOO_LONG}]), None, 400, "messages", "context_length_exceeded"),
    ("/v1/chat/completions", dict(CHAT, max_tokens=1000), None, 400, "max_tokens", "context_length_exceeded"),
    ("/v1/chat/completions", dict(CHAT, max_tokens=0), None, 400, "max_tokens", "invalid_value"),
    ("/v1/chat/completions", dict(CHAT, temperature=2.5), None, 400, "temperature", "invalid_value"),
    ("/v1/chat/completions", dict(CHAT, temperature=-1), None, 400, "temperature", "invalid_value"),
    ("/v1/chat/completions", dict(CHAT, seed=2**70), None, 400, "seed", None),
    ("/v1/chat/completions", dict(CHAT, top_p=0), None, 400, "top_p", "invalid_value"),
    ("/v1/chat/completions", dict(CHAT, top_p=1.5), None, 400, "top_p", "invalid_value"),
    ("/v1/chat/completions", dict(CHAT, messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]), None, 400, "messages", None),
    ("/v1/chat/completions", dict(CHAT, messages=[{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}]),
     None, 400, "messages", None),
    ("/v1/chat/completions", dict(CHAT, messages=[{"role": "tool", "tool_call_id": "x", "content": "1"}]), None, 400, "messages", None),
    ("/v1/chat/completions", dict(CHAT, n=2), None, 400, "n", "unsupported_parameter"),
    ("/v1/chat/completions", dict(CHAT, logprobs=True), None, 400, "logprobs", "unsupported_parameter"),
    ("/v1/chat/completions", dict(CHAT, tools=TOOLS), None, 400, "tools", None),  # a base model has no tool format
    ("/v1/chat/completions", dict(CHAT, stop=["a", "b", "c", "d", "e"]), None, 400, "stop", None),
    ("/v1/chat/completions", dict(CHAT, model="gpt-5"), None, 404, "model", "model_not_found"),
    ("/v1/chat/completions", CHAT, {"Authorization": "Bearer wrong"}, 401, None, "invalid_api_key"),
    ("/v1/chat/completions", CHAT, {"Authorization": ""}, 401, None, "invalid_api_key"),
    ("/v1/completions", {"model": "tiny", "prompt": ""}, None, 400, "prompt", None),
    ("/v1/completions", {"model": "tiny", "prompt": [1, 99999999]}, None, 400, "prompt", None),
    ("/v1/completions", {"model": "tiny", "prompt": ["a", "b"]}, None, 400, "prompt", None),
    ("/v1/completions", {"model": "tiny", "prompt": TOO_LONG}, None, 400, "prompt", "context_length_exceeded"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "echo": True}, None, 400, "echo", "unsupported_parameter"),
    ("/v1/nothing", CHAT, None, 404, None, None),
]


def test_every_error_has_its_status_and_openai_shape_and_spares_requests_in_flight(plain, client, gpt2_tokenizer):
    url, model, _ = plain
    tokens, _ = reference(model, gpt2_tokenizer, gpt2_tokenizer.encode(PROMPT), 30)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    in_flight = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, temperature=0, stream=True)
    first = next(in_flight)  # decoding while the bad requests come in
    with httpx.Client(timeout=30) as http:
        for path, body, extra, status, param, code in ERRORS:
            content = body if isinstance(body, str) else json.dumps(body)
            response = http.post(url + path, content=content, headers=dict(headers, **(extra or {})))
            error = response.json()["error"]
            assert (response.status_code, error["param"], error["code"]) == (status, param, code), (path, body, error)
            assert set(error) == ERROR_KEYS and isinstance(error["message"], str) and error["message"]
        assert http.get(url + "/v1/models").status_code == 401  # no key at all
    text, finish, _ = streamed_text([first, *in_flight])
    assert (text, finish) == (gpt2_tokenizer.decode(tokens), "length")
    with pytest.raises(openai.BadRequestError) as raised:  # the official client reads them as it reads OpenAI's
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], temperature=9)
    assert raised.value.status_code == 400 and raised.value.param == "temperature"


# ---------------------------------------------------------------------------------------- load
def wait_until(condition, seconds=10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def record_requests(server) -> list:
    """The engine requests that `server` submits from now on."""
    submitted, submit = [], server.engine.submit
    server.engine.submit = lambda request: (submitted.append(request), submit(request))[1]
    return submitted


def test_a_client_that_disconnects_frees_its_row(slow):
    url, server = slow
    submitted = record_requests(server)
    body = {"prompt": PROMPT, "max_tokens": 150, "temperature": 0}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", url + "/v1/completions", json=dict(body, stream=True)) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line).startswith("data: {")
        # the stream is closed mid-reply; a non-streamed request whose client gives up goes too
        with pytest.raises(httpx.TimeoutException):
            http.post(url + "/v1/completions", json=body, timeout=0.3)
    assert wait_until(lambda: len(submitted) == 2 and server.engine.active == 0 and not server.engine.waiting)
    assert all(r.cancelled and r.completion_tokens < 150 for r in submitted)


def test_a_full_queue_is_refused_at_once(slow):
    url, server = slow
    body = {"prompt": PROMPT, "max_tokens": 150, "stream": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", url + "/v1/completions", json=body) as running:
            next(line for line in running.iter_lines() if line)  # it holds the one row
            with http.stream("POST", url + "/v1/completions", json=body) as waiting:  # it holds the one place in the queue
                assert waiting.status_code == 200 and wait_until(lambda: len(server.engine.waiting) == 1)
                started = time.perf_counter()
                refused = http.post(url + "/v1/completions", json=dict(body, stream=False))
                elapsed = time.perf_counter() - started
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert set(refused.json()["error"]) == ERROR_KEYS and refused.json()["error"]["code"] == "queue_full"
    assert elapsed < 1.0, elapsed
    assert wait_until(lambda: server.engine.active == 0 and not server.engine.waiting)


# ---------------------------------------------------------------------------------------- fuzz
FIELDS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
          "stop", "stream", "stream_options", "n", "tools", "tool_choice", "reasoning_effort", "logprobs"]  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70) | st.floats(-3, 3) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(["role", "content", "type", "include_usage"]) | st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)  # fmt: skip
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "x"]), "content": st.text(max_size=20) | json_values})
plausible = st.fixed_dictionaries(  # near-valid requests: most are served, some refused
    {"messages": st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=20)}), min_size=1, max_size=2),
     "prompt": st.text(min_size=1, max_size=20)},
    optional={"max_tokens": st.integers(-1, 40), "temperature": st.floats(-0.5, 2.5), "top_p": st.floats(-0.1, 1.1),
              "stream": st.booleans(), "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
              "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=5), "seed": st.integers(-(2**64), 2**65)},
)
bodies = plausible | st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6) | st.fixed_dictionaries(
    {"messages": st.lists(message, max_size=3), "prompt": st.text(max_size=20)},
    optional={"max_tokens": st.integers(-1, 70), "temperature": json_values, "top_p": json_values, "stream": st.booleans(),
              "stop": json_values, "seed": json_values, "model": st.sampled_from(["fuzz", "other"])},
)  # fmt: skip


@pytest.fixture(scope="module")
def fuzz_url(gpt2_tokenizer):
    app = create_app(tiny_model(gpt2_tokenizer, max_seq_len=64), gpt2_tokenizer, model_name="fuzz")
    with running_server(app) as url:
        yield url


@settings(max_examples=80, deadline=10_000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]), body=bodies | json_values)
def test_random_bodies_never_fail_the_server(fuzz_url, path, body):
    with httpx.Client(timeout=10) as http:
        with http.stream("POST", fuzz_url + path, content=json.dumps(body)) as response:
            lines = [line for line in response.iter_lines() if line]
    event(f"status {response.status_code}")
    assert response.status_code in (200, 400, 404), (body, lines)
    if response.status_code != 200:
        assert set(json.loads(lines[0])["error"]) == ERROR_KEYS
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert lines[-1] == "data: [DONE]" and all(line.startswith("data: {") for line in lines[:-1])
        finishes = [chunk["choices"][0]["finish_reason"] for chunk in map(json.loads, (line[6:] for line in lines[:-1])) if chunk["choices"]]
        assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    else:
        assert json.loads(lines[0])["choices"][0]["finish_reason"] in ("stop", "length")
