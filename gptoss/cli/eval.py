"""The `eval` verb: measure a checkpoint on a text and on prompts with expected answers.

    gptoss eval --checkpoint DIR --text FILE|CORPUS      loss, perplexity, bits per byte (every window)
    gptoss eval --checkpoint DIR --answers FILE.jsonl    exact-match accuracy of greedy final answers

Both may be given; --json prints the results as one JSON object (the demo reads it).
"""

from __future__ import annotations

import json

from gptoss.cli.common import add_model_arguments, load_model_and_tokenizer
from gptoss.data.corpora import load_corpus
from gptoss.inference.evaluation import answer_accuracy, text_metrics


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="loss / perplexity / bits per byte on a text; accuracy on prompts with answers",
                                   description=__doc__.splitlines()[0])  # fmt: skip
    add_model_arguments(parser)
    parser.add_argument("--text", metavar="FILE|CORPUS", help="a text file, folder or glob, or a named corpus (shakespeare, pystdlib)")
    parser.add_argument("--max-chars", type=int, help="use only the first max_chars characters of the text")
    parser.add_argument("--seq-len", type=int, help="window length (default: the model's context)")
    parser.add_argument("--answers", metavar="FILE", help="JSONL of {\"messages\" or \"prompt\", \"answer\"}: greedy exact-match accuracy")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="longest reply to an --answers prompt (default: 64)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows or prompts per forward pass (default: 16)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    if not (args.text or args.answers):
        raise ValueError("give --text, --answers, or both: what to measure the model on")
    model, tokenizer = load_model_and_tokenizer(args)
    results = {}
    if args.text:
        results["text"] = text_metrics(model, tokenizer, load_corpus(args.text, args.max_chars), args.seq_len, args.batch_size, progress=not args.json)
    if args.answers:
        results["answers"] = answer_accuracy(model, tokenizer, args.answers, args.max_new_tokens, args.batch_size, progress=not args.json)
    if args.json:
        print(json.dumps({k: {n: v for n, v in r.items() if n != "replies"} for k, r in results.items()}))
        return 0
    if "text" in results:
        t = results["text"]
        print(f"text: loss {t['loss']:.4f} nats/token, perplexity {t['perplexity']:.3f}, {t['bits_per_byte']:.4f} bits/byte "
              f"({t['tokens']:,} tokens in {t['windows']:,} windows)")  # fmt: skip
    if "answers" in results:
        a = results["answers"]
        print(f"answers: {a['correct']} / {a['total']} exact matches = {a['accuracy']:.1%}")
    return 0
