"""How int8 weights change the perplexity of a model trained here: the text metrics of `gptoss eval`
for a checkpoint as stored, in bf16, and with int8 linear weights, on the last tenth of Tiny
Shakespeare (where its validation split lies).

    gptoss train --config configs/shakespeare_bpe.toml        # ~100 s on 2 quiet cores
    .venv/bin/python bench/bench_int8_perplexity.py --checkpoint runs/shakespeare_bpe/final

Rows: the model as stored (fp32, unprepared: the reference); prepare_for_inference(weights="bf16");
weights="int8" as prepare_for_inference applies it (the layers of at least MIN_PACKED_WEIGHT
weights: in the recipe's tiny model, the unembedding only); and int8 in every linear layer (the
threshold set to 0), the whole model's worst case. The relative change of perplexity is the
issue's measure (target: under 1%).
"""

from __future__ import annotations

import argparse

import torch


def perplexities(checkpoint: str, max_chars: int | None = None, seq_len: int | None = None) -> list[tuple[str, float, int]]:
    """[(row, perplexity, int8 layers)] of the rows above (see the module doc)."""
    import gptoss.inference.prepare as prepare
    from gptoss.checkpoints import load_checkpoint_tokenizer
    from gptoss.data.corpora import load_corpus
    from gptoss.inference import InferenceLinear, prepare_for_inference
    from gptoss.inference.evaluation import text_metrics
    from gptoss.model import GPT

    tokenizer = load_checkpoint_tokenizer(checkpoint)
    text = load_corpus("shakespeare")
    text = text[int(len(text) * 0.9) :][:max_chars]
    rows = []
    threshold = prepare.MIN_PACKED_WEIGHT
    for name, weights, min_weight in [
        ("as stored (fp32)", None, threshold),
        ("bf16", "bf16", threshold),
        ("int8 (prepare_for_inference)", "int8", threshold),
        ("int8, every linear layer", "int8", 0),
    ]:
        model = GPT.from_pretrained(checkpoint).eval()
        prepare.MIN_PACKED_WEIGHT = min_weight
        try:
            if weights is not None:
                prepare_for_inference(model, weights=weights)
        finally:
            prepare.MIN_PACKED_WEIGHT = threshold
        quantized = sum(isinstance(m, InferenceLinear) and m.int8 is not None for m in model.modules())
        rows.append((name, text_metrics(model, tokenizer, text, seq_len)["perplexity"], quantized))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint trained here, e.g. runs/shakespeare_bpe/final")
    parser.add_argument("--max-chars", type=int, help="only the first max_chars characters of the text")
    args = parser.parse_args()
    rows = perplexities(args.checkpoint, args.max_chars)
    reference = rows[0][1]
    print(f"{args.checkpoint}, last tenth of Tiny Shakespeare; torch {torch.__version__}\n")
    print("| weights | int8 layers | perplexity | change |")
    print("|---|---|---|---|")
    for name, perplexity, quantized in rows:
        print(f"| {name} | {quantized} | {perplexity:.4f} | {perplexity / reference - 1:+.3%} |")


if __name__ == "__main__":
    main()
