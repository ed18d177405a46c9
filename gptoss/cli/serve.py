"""`gptoss serve --checkpoint DIR`: an OpenAI-compatible HTTP server with a chat page.

Any OpenAI client talks to it unchanged (base_url http://HOST:PORT/v1); the page is at
http://HOST:PORT/. See gptoss.serve.app for the endpoints and docs/serve.md for examples.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gptoss.cli.common import add_model_arguments, load_model_and_tokenizer
from gptoss.util.checks import check_positive_int

API_KEY_ENV = "GPTOSS_API_KEY"


def register(subparsers) -> None:
    """Add the `serve` verb."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over OpenAI's HTTP API, with a chat page",
        description="Serve a model over OpenAI's HTTP API (/v1/models, /v1/chat/completions, "
        "/v1/completions; streaming with server-sent events) and a chat page at /. Requests that "
        "arrive together are decoded together (continuous batching).",
    )
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${API_KEY_ENV} if set, else none)")
    parser.add_argument("--model-name", help="the model's name in the API (default: the checkpoint folder's name, or the preset)")
    parser.add_argument("--max-batch", type=int, default=16, help="requests decoded together at most (default: 16)")
    parser.add_argument("--max-queue", type=int, default=64, help="requests that may wait for a batch row; more are refused with 503 (default: 64)")
    parser.add_argument("--seed", type=int, help="seed of a preset's random weights")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Load the model, then serve until interrupted."""
    import uvicorn  # the server's own dependencies load only for this verb

    from gptoss.serve.app import create_app

    check_positive_int("--max-batch", args.max_batch)
    check_positive_int("--max-queue", args.max_queue)
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    model, tokenizer = load_model_and_tokenizer(args)
    name = args.model_name or args.preset or Path(args.checkpoint).resolve().name
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    app = create_app(model, tokenizer, model_name=name, api_key=api_key, max_batch=args.max_batch, max_queue=args.max_queue)
    if args.preset:
        print(f"(random weights: preset {args.preset}; the text is noise)", file=sys.stderr)
    print(f"serving {name} at http://{args.host}:{args.port}/ (OpenAI API under /v1"
          f"{', API key required' if api_key else ''})", file=sys.stderr)  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
