"""The argument vocabulary every verb shares: which model (checkpoint or preset), its tokenizer, its
dtype, device and threads, and how to sample; and the model and tokenizer they describe."""

from __future__ import annotations

import torch

from gptoss.checkpoints import load_checkpoint_tokenizer
from gptoss.config import GPTConfig
from gptoss.data.tokenizers import check_tokenizer_fits, resolve_tokenizer
from gptoss.inference import prepare_for_inference
from gptoss.inference.prepare import WEIGHTS
from gptoss.model import GPT
from gptoss.util.devices import DEVICE_HELP, resolve_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# the tokenizer of a checkpoint that saved none, guessed from its vocabulary size
TOKENIZER_BY_VOCAB_SIZE = {50257: "gpt2", 201088: "o200k_harmony"}


def add_dtype_argument(parser, help: str) -> None:
    """--dtype: one of DTYPES."""
    parser.add_argument("--dtype", choices=sorted(DTYPES), help=help)


def add_tokenizer_argument(parser, help: str) -> None:
    """--tokenizer: a kind (gpt2, o200k_harmony) or a saved tokenizer folder (see tokenizer_from)."""
    parser.add_argument("--tokenizer", help=help)


def add_model_arguments(parser) -> None:
    """The options that pick a model, its tokenizer and how it runs (generate, chat, serve)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="DIR", help="a checkpoint directory: this project's, Hugging Face GPT-2 / gpt-oss, or OpenAI's gpt-oss")
    source.add_argument("--preset", help="a model preset with random weights (for speed checks; its text is noise), e.g. gpt2-small")
    add_tokenizer_argument(parser, "tokenizer kind (gpt2, o200k_harmony) or saved tokenizer folder; default: the checkpoint's own, "
                           "else gpt2 for GPT-2 models and o200k_harmony for gpt-oss ones")  # fmt: skip
    parser.add_argument("--tokenizer-files", metavar="DIR", help="folder with OpenAI's tokenizer files, for offline gpt2 / o200k_harmony")
    add_dtype_argument(parser, "compute in this dtype (default: as stored; presets: float32)")
    parser.add_argument("--weights", choices=list(WEIGHTS), default="auto",
                        help="the linear layers' weight format on a CPU: auto (the dtype's), fp32, bf16 (halves the bytes read per "
                        "token), int8 (a quarter of fp32's; per-row scales); read by the C kernels (default: auto)")  # fmt: skip
    parser.add_argument("--device", default="auto", help=f"where the model runs: {DEVICE_HELP} (default: auto)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's, one per core)")


def add_sampling_arguments(parser, max_new_tokens: int | str) -> None:
    """The sampling options (see gptoss.inference.sampling.SamplingOptions). max_new_tokens: the
    default, or how the command chooses it (a str for the help; the option is then None when not given)."""
    default = max_new_tokens if isinstance(max_new_tokens, int) else None
    parser.add_argument("--max-new-tokens", type=int, default=default, help=f"at most this many new tokens (default: {max_new_tokens})")
    randomness = parser.add_mutually_exclusive_group()
    randomness.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: 1.0; 0 is greedy)")
    randomness.add_argument("--greedy", action="store_true", help="always pick the most likely token (temperature 0)")
    parser.add_argument("--top-k", type=int, help="sample among the k most likely tokens only")
    parser.add_argument("--top-p", type=float, help="sample among the most likely tokens that make up probability p, in (0, 1]")
    parser.add_argument("--min-p", type=float, help="drop tokens less likely than min_p times the most likely one")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages tokens already present (default: 1, none)")
    parser.add_argument("--seed", type=int, help="random seed, for reproducible sampling (and preset weights)")


def sampling_arguments(args) -> dict:
    """The keyword arguments of stream() chosen on the command line."""
    temperature = 0.0 if args.greedy else (1.0 if args.temperature is None else args.temperature)
    return dict(
        temperature=temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        repetition_penalty=args.repetition_penalty, seed=args.seed,
    )  # fmt: skip


def tokenizer_from(spec: str | None, checkpoint=None, files_dir=None):
    """The tokenizer that --tokenizer names (a kind or a saved folder), else the checkpoint's own,
    else None."""
    if spec is not None:
        return resolve_tokenizer(spec, files_dir, what="--tokenizer")
    return load_checkpoint_tokenizer(checkpoint) if checkpoint is not None else None


def load_model_and_tokenizer(args):
    """The model (prepared for inference) and tokenizer that the command-line options describe."""
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype] if args.dtype else WEIGHTS[args.weights]
    device = resolve_device(args.device)
    if args.preset:
        kind = "gpt2" if GPTConfig.preset(args.preset).position == "learned" else "o200k_harmony"
        tokenizer = tokenizer_from(args.tokenizer or kind, files_dir=args.tokenizer_files)
        torch.manual_seed(args.seed or 0)
        model = GPT(GPTConfig.preset(args.preset, vocab_size=tokenizer.vocab_size, dropout=0.0)).to(device)
        if args.seed is None:
            torch.seed()  # fixed weights, but sampling without --seed stays random
    else:
        tokenizer = tokenizer_from(args.tokenizer, args.checkpoint, args.tokenizer_files)  # a typo fails before the load
        model = GPT.from_pretrained(args.checkpoint, dtype=dtype, device=device)
        if tokenizer is None:
            guess = TOKENIZER_BY_VOCAB_SIZE.get(model.config.vocab_size)
            if guess is None:
                raise ValueError(f"{args.checkpoint} holds no tokenizer: name one with --tokenizer")
            tokenizer = tokenizer_from(guess, files_dir=args.tokenizer_files)
    check_tokenizer_fits(tokenizer, model.config.vocab_size)
    return prepare_for_inference(model, dtype, weights=args.weights), tokenizer
