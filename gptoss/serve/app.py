"""The HTTP side of `gptoss serve`: OpenAI's API on Starlette, in front of the one decode loop.

    GET  /v1/models             the one model served
    POST /v1/chat/completions   conversations (harmony for gpt-oss: reasoning_content, tool_calls)
    POST /v1/completions        plain prompt continuation
    GET  /health                {"status": "ok", ...}
    GET  /                      the chat page (gptoss/serve/static/index.html)

A request is checked here, in full, before it reaches the engine: bad input is a 4xx in OpenAI's
shape {"error": {"message", "type", "param", "code"}} and never enters the decode loop. The engine
(gptoss.serve.engine) runs in its own thread; its callbacks hand tokens to the request's asyncio
queue with call_soon_threadsafe, so the event loop never waits on a decode step and a decode step
never waits on a client. A client that goes away (mid-stream, or while waiting for a whole reply)
cancels its request: its row leaves the batch at the next step.

Replies are streamed as server-sent events (`data: {chunk}` lines, then `data: [DONE]`) when the
request says "stream": true.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from gptoss.inference.sampling import SamplingOptions
from gptoss.serve.engine import Engine, QueueFull, Request
from gptoss.serve.openai_format import BadRequest, TextDecoder, chat_for, check_messages, check_tools
from gptoss.util.checks import is_int

PAGE = Path(__file__).parent / "static" / "index.html"
MAX_STOP_STRINGS = 4  # as OpenAI's API
MAX_TEMPERATURE = 2.0  # OpenAI's range: [0, 2]
# fields of OpenAI's requests this server does not implement, and the value that means "not used"
UNSUPPORTED = {"n": 1, "best_of": 1, "logprobs": (None, False), "top_logprobs": (None, 0), "echo": False,
               "suffix": None, "logit_bias": (None, {}), "presence_penalty": 0, "frequency_penalty": 0}  # fmt: skip


class ApiError(Exception):
    """An error answered in OpenAI's shape, with its HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.type, self.param, self.code, self.headers = status, type, param, code, headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


@dataclass(eq=False)
class Job:
    """A checked request on its way through the engine: the engine's Request, the queue its tokens
    arrive on, and the reply that turns them into deltas."""

    request: Request
    reply: object  # push(tokens, final) -> deltas; finish_reason(finish, stop_token); calls
    stream: bool
    include_usage: bool
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    async def events(self):
        """(deltas, finish) as the engine produces tokens; finish is None until the last one."""
        while True:
            tokens, finish = await self.queue.get()
            deltas = self.reply.push(tokens, final=finish is not None)
            yield deltas, finish
            if finish is not None:
                return

    def usage(self) -> dict:
        prompt, completion = len(self.request.prompt), self.request.completion_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class CompletionReply:
    """A plain continuation: text deltas."""

    calls: list[dict] = []

    def __init__(self, tokenizer):
        self.decoder = TextDecoder(tokenizer)

    def push(self, tokens: list[int], final: bool = False) -> list[dict]:
        text = self.decoder.push(tokens, final)
        return [{"text": text}] if text else []

    def finish_reason(self, finish: str, stop_token: int | None) -> str:
        return finish


# ---------------------------------------------------------------------------------------- checks
def number(body: dict, name: str, default: float | None, low: float, high: float, low_open: bool = False) -> float | None:
    """body[name], a finite number in [low, high] ((low, high] with low_open), or default when absent."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            not (low < value <= high if low_open else low <= value <= high):  # fmt: skip
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ApiError(400, f"{name} must be a number in {interval}, got {value!r}", param=name, code="invalid_value")
    return float(value)


def check_unsupported(body: dict) -> None:
    """A clear 400 for the OpenAI fields this server does not implement (their neutral values pass)."""
    for name, neutral in UNSUPPORTED.items():
        if name in body and body[name] not in (neutral if isinstance(neutral, tuple) else (None, neutral)):
            raise ApiError(400, f"{name}={body[name]!r} is not supported by this server (leave it out)", param=name, code="unsupported_parameter")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise ApiError(400, 'response_format: only {"type": "text"} is supported', param="response_format", code="unsupported_parameter")


def stop_strings(body: dict) -> list[str]:
    """The request's stop strings: a string or a list of up to 4 non-empty strings."""
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, f"stop must be a non-empty string or a list of at most {MAX_STOP_STRINGS} of them", param="stop")
    return stops


def stream_flags(body: dict) -> tuple[bool, bool]:
    """(stream, stream_options.include_usage)."""
    stream, options = body.get("stream"), body.get("stream_options")
    if stream not in (None, True, False):
        raise ApiError(400, "stream must be true or false", param="stream")
    if options is not None and (not isinstance(options, dict) or options.get("include_usage") not in (None, True, False)):
        raise ApiError(400, "stream_options must be an object like {\"include_usage\": true}", param="stream_options")
    return bool(stream), bool(stream and options and options.get("include_usage"))


def sampling(body: dict) -> tuple[SamplingOptions, int | None]:
    """The request's sampling options and seed."""
    temperature = number(body, "temperature", 1.0, 0.0, MAX_TEMPERATURE)
    top_p = number(body, "top_p", None, 0.0, 1.0, low_open=True)
    seed = body.get("seed")
    if seed is not None and not (is_int(seed) and -(2**63) <= seed < 2**64):
        raise ApiError(400, f"seed must be a 64-bit integer, got {seed!r}", param="seed")
    if temperature == 0 or top_p == 1:
        top_p = None  # greedy decoding ignores it; 1 keeps every token
    try:
        return SamplingOptions(temperature=temperature, top_p=top_p), seed
    except ValueError as error:  # e.g. a temperature too small to divide by: 0 is greedy
        raise ApiError(400, str(error), param="temperature", code="invalid_value") from None


# ---------------------------------------------------------------------------------------- the app
class Server:
    """The routes over one model, its tokenizer and its engine."""

    def __init__(self, model, tokenizer, *, model_name: str, api_key: str | None = None, max_batch: int = 16,
                 max_queue: int = 64):  # fmt: skip
        self.model, self.tokenizer, self.model_name, self.api_key = model, tokenizer, model_name, api_key
        self.context = model.config.max_seq_len
        vocab_limit = tokenizer.vocab_size if tokenizer.vocab_size < model.config.vocab_size else None
        self.engine = Engine(model, tokenizer, max_batch=max_batch, max_queue=max_queue, vocab_limit=vocab_limit)
        self.chat = chat_for(tokenizer)
        self.created = int(time.time())
        self.page = PAGE.read_text(encoding="utf-8")

    # ------------------------------------------------------------------ request checks
    def authorize(self, request: HTTPRequest) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise ApiError(401, "a valid API key is required: send the header 'Authorization: Bearer KEY'",
                           type="invalid_api_key", code="invalid_api_key")  # fmt: skip

    async def body(self, request: HTTPRequest) -> dict:
        """The authorized request's JSON object, its model name checked."""
        self.authorize(request)
        raw = await request.body()

        def refuse_constant(name):  # Python's json reads NaN and Infinity, which JSON has not
            raise ValueError(f"{name} is not JSON")

        try:
            body = json.loads(raw, parse_constant=refuse_constant)
        except (ValueError, RecursionError) as error:  # JSONDecodeError and bad UTF-8 are ValueErrors
            raise ApiError(400, f"the request body is not valid JSON ({error})", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise ApiError(400, "model must be a string: the name GET /v1/models lists", param="model")
        if model is not None and model != self.model_name:
            raise ApiError(404, f"the model {model!r} does not exist: this server serves {self.model_name!r}",
                           param="model", code="model_not_found")  # fmt: skip
        check_unsupported(body)
        return body

    def limits(self, body: dict, prompt: list[int]) -> int:
        """max_tokens (or max_completion_tokens), checked against the context the prompt leaves."""
        room = self.context - len(prompt)
        if room < 1:
            raise ApiError(400, f"the prompt takes {len(prompt)} tokens, and this model's context is {self.context}: "
                           "shorten it", param="messages" if "messages" in body else "prompt", code="context_length_exceeded")  # fmt: skip
        name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        value = body.get(name)
        if value is None:
            return room
        if not is_int(value) or value < 1:
            raise ApiError(400, f"{name} must be a positive integer, got {value!r}", param=name, code="invalid_value")
        if value > room:
            raise ApiError(400, f"{name}={value} is more than the {room} tokens this model's context of {self.context} "
                           f"leaves after the prompt's {len(prompt)}", param=name, code="context_length_exceeded")  # fmt: skip
        return value

    def job(self, body: dict, prompt: list[int], reply, stop_token_ids, stops: list[str]) -> Job:
        options, seed = sampling(body)
        stream, include_usage = stream_flags(body)
        max_tokens = self.limits(body, prompt)
        job = Job(None, reply, stream, include_usage)
        loop = asyncio.get_running_loop()

        def emit(tokens, finish):  # called from the engine's thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
                loop.call_soon_threadsafe(job.queue.put_nowait, (tokens, finish))

        job.request = Request(prompt, max_tokens, emit, options, seed, frozenset(stop_token_ids), stops)
        return job

    def chat_job(self, body: dict) -> Job:
        messages = check_messages(body.get("messages"))
        tools = check_tools(body.get("tools"), body.get("tool_choice"))
        effort = body.get("reasoning_effort")
        if effort is not None and not isinstance(effort, str):
            raise BadRequest("reasoning_effort must be low, medium or high", "reasoning_effort")
        stops = stop_strings(body)
        try:
            prompt = self.chat.prompt(messages, tools, effort)
        except BadRequest:
            raise
        except ValueError as error:  # text the tokenizer cannot encode (a character tokenizer)
            raise BadRequest(str(error), "messages") from None
        return self.job(body, prompt, self.chat.reply(), self.chat.stop_token_ids, self.chat.stop_strings + stops)

    def completion_job(self, body: dict) -> Job:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one prompt
        if isinstance(prompt, str) and prompt:
            try:
                ids = self.tokenizer.encode(prompt)
            except ValueError as error:
                raise ApiError(400, str(error), param="prompt") from None
        elif isinstance(prompt, list) and prompt and all(is_int(i) and 0 <= i < self.tokenizer.vocab_size for i in prompt):
            ids = list(prompt)
        else:
            raise ApiError(400, "prompt must be a non-empty string, or a non-empty list of token ids below "
                           f"{self.tokenizer.vocab_size} (one prompt: n=1)", param="prompt")  # fmt: skip
        eot = [self.tokenizer.eot_id] if self.tokenizer.eot_id is not None else []
        return self.job(body, ids, CompletionReply(self.tokenizer), eot, stop_strings(body))

    # ------------------------------------------------------------------ running a job
    def submit(self, job: Job) -> None:
        try:
            self.engine.submit(job.request)
        except QueueFull as error:
            raise ApiError(503, f"{error}; try again shortly", type="server_overloaded", code="queue_full",
                           headers={"Retry-After": "1"}) from None  # fmt: skip

    async def respond(self, request: HTTPRequest, job: Job, chunk, whole):
        """Run the job; stream its chunks as SSE, or answer its whole reply as one JSON object.
        chunk(deltas or None, finish_reason): one SSE object; whole(deltas, finish_reason): the reply."""
        self.submit(job)
        if job.stream:
            return StreamingResponse(self.sse(job, chunk), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
        watcher = asyncio.ensure_future(self.cancel_on_disconnect(request, job))
        deltas, finish = [], None
        try:
            async for new, finish in job.events():
                deltas += new
        finally:
            watcher.cancel()
            job.request.cancel()  # a no-op once it has finished; else the client has gone
        if finish == "error":
            raise ApiError(500, "the decode step failed (a bug: see the server's log)", type="server_error")
        return JSONResponse(whole(deltas, job.reply.finish_reason(finish, job.request.stop_token)))

    @staticmethod
    async def cancel_on_disconnect(request: HTTPRequest, job: Job) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.request.cancel()

    async def sse(self, job: Job, chunk):
        """The job's server-sent events. Starlette cancels this generator when the client goes away."""

        def event(payload) -> str:
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        try:
            start = chunk(None, None)
            if start is not None:
                yield event(start)
            async for deltas, finish in job.events():
                for delta in deltas:
                    yield event(chunk(delta, None))
                if finish == "error":
                    yield event({"error": {"message": "the decode step failed (a bug: see the server's log)",
                                           "type": "server_error", "param": None, "code": None}})  # fmt: skip
                elif finish is not None:
                    yield event(chunk({}, job.reply.finish_reason(finish, job.request.stop_token)))
            if job.include_usage:
                yield event(dict(chunk({}, None), choices=[], usage=job.usage()))
            yield "data: [DONE]\n\n"
        finally:
            job.request.cancel()  # a no-op once it has finished

    # ------------------------------------------------------------------ routes
    async def chat_completions(self, request: HTTPRequest):
        body = await self.body(request)
        job = self.chat_job(body)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.model_name}
        reasoning = self.chat.reasoning

        def delta_of(delta: dict) -> dict:
            if "reasoning_content" in delta:  # llama.cpp's name, and vLLM's (reasoning) today
                return {"reasoning_content": delta["reasoning_content"], "reasoning": delta["reasoning_content"]}
            return delta

        def chunk(delta, finish):
            choice = {"index": 0, "delta": {"role": "assistant", "content": ""} if delta is None else delta_of(delta),
                      "logprobs": None, "finish_reason": finish}  # fmt: skip
            return dict(head, object="chat.completion.chunk", choices=[choice])

        def whole(deltas, finish):
            content = "".join(d.get("content", "") for d in deltas)
            message = {"role": "assistant", "content": content if content or not job.reply.calls else None}
            if reasoning:
                thought = "".join(d.get("reasoning_content", "") for d in deltas)
                message.update(reasoning_content=thought, reasoning=thought)
            if job.reply.calls:
                message["tool_calls"] = job.reply.calls
            return dict(head, object="chat.completion", choices=[{"index": 0, "message": message, "logprobs": None,
                        "finish_reason": finish}], usage=job.usage())  # fmt: skip

        return await self.respond(request, job, chunk, whole)

    async def completions(self, request: HTTPRequest):
        body = await self.body(request)
        job = self.completion_job(body)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": self.model_name}

        def chunk(delta, finish):
            if delta is None:
                return None  # completions have no opening chunk
            return dict(head, choices=[{"index": 0, "text": delta.get("text", ""), "logprobs": None, "finish_reason": finish}])

        def whole(deltas, finish):
            text = "".join(d["text"] for d in deltas)
            return dict(head, choices=[{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}], usage=job.usage())

        return await self.respond(request, job, chunk, whole)

    def model_card(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "gptoss",
                "max_model_len": self.context}  # fmt: skip

    async def models(self, request: HTTPRequest):
        self.authorize(request)
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    async def model(self, request: HTTPRequest):
        self.authorize(request)
        name = request.path_params["name"]
        if name != self.model_name:
            raise ApiError(404, f"the model {name!r} does not exist: this server serves {self.model_name!r}",
                           param="model", code="model_not_found")  # fmt: skip
        return JSONResponse(self.model_card())

    async def health(self, request: HTTPRequest):
        engine = self.engine
        return JSONResponse({"status": "ok", "model": self.model_name, "active": engine.active, "waiting": len(engine.waiting),
                             "max_batch": engine.max_batch, "max_queue": engine.max_queue})  # fmt: skip

    async def index(self, request: HTTPRequest):
        return HTMLResponse(self.page)


def create_app(model, tokenizer, *, model_name: str, api_key: str | None = None, max_batch: int = 16, max_queue: int = 64) -> Starlette:
    """The ASGI app serving `model`: its engine starts with the app and stops with it.
    app.state.server is the Server (its engine: app.state.server.engine)."""
    server = Server(model, tokenizer, model_name=model_name, api_key=api_key, max_batch=max_batch, max_queue=max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.engine.start()
        try:
            yield
        finally:
            server.engine.stop()

    async def api_error(request, error: ApiError):
        return error.response()

    async def bad_request(request, error: BadRequest):
        return ApiError(400, str(error), param=error.param, code=error.code).response()

    async def internal_error(request, error: Exception):  # a bug: say so in OpenAI's shape too
        return ApiError(500, f"internal server error ({type(error).__name__}: see the server's log)", type="server_error").response()

    async def http_error(request, error: HTTPException):
        kind = "not_found" if error.status_code == 404 else "invalid_request_error"
        return ApiError(error.status_code, f"{request.method} {request.url.path}: {error.detail}", type=kind).response()

    routes = [
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/models/{name:path}", server.model, methods=["GET"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/", server.index, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        ApiError: api_error, BadRequest: bad_request, HTTPException: http_error, Exception: internal_error})
    app.state.server = server
    return app
