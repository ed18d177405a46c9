"""The inspection report: one forward pass of a prompt, drawn with matplotlib as PNGs, and one HTML
file that holds them all (as data URIs, so it opens anywhere, alone).

Views: the attention of every head in every layer (the window's band drawn on sliding layers), the
sinks' share per head and layer, the experts each token chose in each layer and the load per
expert, the logit lens (the top token the unembedding reads from each layer's residual stream at
each position), and the positions (rotary speeds with and without YaRN; GPT-2's learned position
embeddings).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from gptoss.config import PRESETS, GPTConfig  # noqa: E402
from gptoss.inspection.record import Recording, inspect, logit_lens  # noqa: E402
from gptoss.model import GPT, rope_inverse_frequencies  # noqa: E402
from gptoss.util.files import write_file_atomically, write_text_atomically  # noqa: E402

# a prompt of more tokens than this makes the per-token pictures unreadable
MAX_TOKENS = 160
# tokens labelled on the axes at most (beyond, every n-th)
MAX_LABELS = 64


@dataclasses.dataclass
class Figure:
    """One picture of the report: its file name, title and what it shows."""

    name: str
    title: str
    caption: str


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    """Each token's text, made visible on an axis: spaces as '·', newlines as '\\n'."""
    labels = []
    for i in ids:
        text = tokenizer.decode([i])
        labels.append(text.replace("\n", "\\n").replace(" ", "·").replace("$", r"\$") or "∅")
    return labels


def label_axis(ax, labels: list[str], axis: str) -> None:
    """Token labels on the x or y axis, thinned to at most MAX_LABELS."""
    step = max(1, -(-len(labels) // MAX_LABELS))
    ticks = list(range(0, len(labels), step))
    size = 7 if len(ticks) <= 32 else 5
    if axis == "x":
        ax.set_xticks(ticks, [labels[t] for t in ticks], rotation=90, fontsize=size)
    else:
        ax.set_yticks(ticks, [labels[t] for t in ticks], fontsize=size)


def save(fig, out_dir: Path, name: str) -> None:
    """Write the figure as out_dir/name (PNG), atomically, and close it."""
    try:
        with warnings.catch_warnings():  # a token in a script DejaVu Sans lacks is drawn as a box
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")
            write_file_atomically(out_dir / name, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------ the views
def draw_attention(rec: Recording, labels, out_dir: Path) -> list[Figure]:
    """One picture per layer: every head's weights, query (row) by key (column)."""
    figures = []
    T = len(labels)
    for layer, weights in enumerate(rec.attention):
        heads = weights.shape[1]
        window = rec.windows[layer]
        fig, axes = plt.subplots(1, heads, figsize=(3.2 * heads, 3.6), squeeze=False)
        for h, ax in enumerate(axes[0]):
            ax.imshow(weights[0, h].numpy(), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            title = f"head {h}"
            if rec.sink_share[layer] is not None:
                title += f", sink {rec.sink_share[layer][0, h].mean():.2f}"
            ax.set_title(title, fontsize=9)
            if window is not None and window < T:
                # the band's lower edge: query i sees keys i - window + 1 .. i
                rows = torch.arange(window - 1, T)
                ax.plot(rows - window + 0.5, rows, color="cyan", linewidth=0.8)
            if h == 0:  # the heads share their tokens: labelling one is enough (and labels are slow to draw)
                label_axis(ax, labels, "x")
                label_axis(ax, labels, "y")
            else:
                ax.set_xticks([])
                ax.set_yticks([])
        kind = f"sliding window of {window} (cyan: its edge)" if window is not None else "full causal"
        fig.suptitle(f"layer {layer}: {kind}", fontsize=10)
        name = f"attention_layer{layer}.png"
        save(fig, out_dir, name)
        caption = (
            "Each row is a query token, each column a key it may attend to; brighter is more weight. "
            + (
                f"This layer is a sliding-window layer: nothing left of the cyan edge ({window} tokens back) gets weight."
                if window is not None
                else "This layer attends to the whole causal past: everything below the diagonal may get weight."
            )
        )
        figures.append(Figure(name, f"Attention, layer {layer}", caption))
    return figures


def draw_sinks(rec: Recording, labels, out_dir: Path) -> list[Figure]:
    """The sinks' share: mean per head and layer, and per query position."""
    if rec.sink_share[0] is None:
        return []
    shares = torch.stack([s[0] for s in rec.sink_share])  # (L, H, T)
    L, H, T = shares.shape
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw=dict(width_ratios=[1, 2.2]), layout="constrained")
    mean = shares.mean(-1)
    image = left.imshow(mean.numpy(), cmap="viridis", vmin=0, vmax=1)
    for layer in range(L):
        for h in range(H):
            left.text(h, layer, f"{mean[layer, h]:.2f}", ha="center", va="center", fontsize=8, color="white" if mean[layer, h] < 0.6 else "black")
    left.set_xlabel("head")
    left.set_ylabel("layer")
    left.set_xticks(range(H))
    left.set_yticks(range(L))
    left.set_title("mean share of the sink", fontsize=9)
    fig.colorbar(image, ax=left, fraction=0.046)
    for layer in range(L):
        for h in range(H):
            right.plot(shares[layer, h].numpy(), linewidth=0.9, label=f"layer {layer} head {h}")
    right.set_ylim(0, 1)
    right.set_ylabel("share of the sink")
    right.set_title("per query token", fontsize=9)
    label_axis(right, labels, "x")
    right.legend(fontsize=6, ncol=max(1, L // 2), loc="upper right")
    name = "sinks.png"
    save(fig, out_dir, name)
    caption = (
        "A sink is one learned logit per head that takes part in the softmax but carries no value: "
        "the weight a query gives it is attention paid to nothing. "
        "Left, each head's mean share over the prompt; right, the share at each query token."
    )
    return [Figure(name, "Attention sinks", caption)]


def draw_experts(rec: Recording, labels, num_experts: int, out_dir: Path) -> list[Figure]:
    """The routing: each token's experts and weights per layer, and the load of each expert."""
    if rec.experts[0] is None:
        return []
    L, T = len(rec.experts), len(labels)
    fig, axes = plt.subplots(L, 1, figsize=(min(3 + 0.12 * T, 20), 1.1 + 0.32 * num_experts * L), squeeze=False, layout="constrained")
    for layer, ax in enumerate(axes[:, 0]):
        routed = torch.zeros(num_experts, T)  # weight of expert e for token t (0: not chosen)
        routed.scatter_(0, rec.experts[layer][0].T, rec.expert_weights[layer][0].T)
        ax.imshow(routed.numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_ylabel(f"layer {layer}\nexpert", fontsize=8)
        ax.set_yticks(range(num_experts), [str(e) for e in range(num_experts)], fontsize=6)
        if layer == L - 1:
            label_axis(ax, labels, "x")
        else:
            ax.set_xticks([])
    fig.suptitle("experts chosen per token (darker: a larger routing weight)", fontsize=10)
    routing_name = "experts.png"
    save(fig, out_dir, routing_name)

    load = torch.stack([torch.bincount(e[0].flatten(), minlength=num_experts) for e in rec.experts]).float()
    load = load / load.sum(-1, keepdim=True)  # (L, E) fraction of the routed (token, expert) pairs
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * num_experts, 0.8 + 0.45 * L))
    ax.imshow(load.numpy(), cmap="Oranges", vmin=0, vmax=max(float(load.max()), 1e-6))
    for layer in range(L):
        for e in range(num_experts):
            ax.text(e, layer, f"{load[layer, e]:.0%}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(num_experts))
    ax.set_yticks(range(L))
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_title(f"load per expert (uniform: {1 / num_experts:.0%})", fontsize=9)
    load_name = "expert_load.png"
    save(fig, out_dir, load_name)
    k = rec.experts[0].shape[-1]
    return [
        Figure(routing_name, "Experts per token", f"In each layer the router sends every token to {k} of the {num_experts} experts; "
               "the shade is the weight that expert's output gets in the token's sum. Reading along a row shows "
               "which tokens one expert serves."),  # fmt: skip
        Figure(load_name, "Load per expert", "The share of the prompt's (token, expert) assignments each expert took, per layer. "
               "The load-balancing loss of training pushes these towards uniform."),  # fmt: skip
    ]


def draw_logit_lens(model: GPT, rec: Recording, tokenizer, labels, out_dir: Path) -> list[Figure]:
    """The top token and its probability read from the residual stream after each layer."""
    L, T = len(rec.residual), len(labels)
    shown = list(range(max(0, T - 40), T))  # the last 40 positions at most: each cell holds a token
    top_prob = torch.zeros(L, len(shown))
    top_text = []
    for layer in range(L):
        probs = torch.softmax(logit_lens(model, rec, layer)[0, shown].float(), dim=-1).cpu()
        p, i = probs.max(-1)
        top_prob[layer] = p
        top_text.append(token_labels(tokenizer, i.tolist()))
    fig, ax = plt.subplots(figsize=(1.5 + 0.42 * len(shown), 1 + 0.42 * L))
    ax.imshow(top_prob.numpy(), cmap="Greens", vmin=0, vmax=1, aspect="auto")
    for layer in range(L):
        for c in range(len(shown)):
            ax.text(c, layer, top_text[layer][c][:6], ha="center", va="center", fontsize=6,
                    color="white" if top_prob[layer, c] > 0.6 else "black")  # fmt: skip
    ax.set_yticks(range(L), ["embedding"] + [f"after block {i}" for i in range(L - 1)], fontsize=7)
    label_axis(ax, [labels[t] for t in shown], "x")
    ax.set_xlabel("input token (the cell: the most likely next token read at that layer)", fontsize=8)
    ax.set_title("logit lens (shade: that token's probability)", fontsize=9)
    name = "logit_lens.png"
    save(fig, out_dir, name)
    caption = (
        "Each row applies the model's final norm and unembedding to the residual stream after one more block, "
        "as if the model stopped there; the cell is the most likely next token and its shade its probability. "
        "The last row is the model's own prediction; reading upwards shows at which depth it forms."
    )
    return [Figure(name, "Logit lens", caption)]


def draw_positions(model: GPT, out_dir: Path) -> list[Figure]:
    """Rotary speeds with and without YaRN (rotary models), or the learned position embeddings' similarity."""
    config = model.config
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    if config.position == "rope":
        # the model's own scaling, else gpt-oss-20b's, to show what YaRN would do to these speeds
        scaling = config.rope_scaling or PRESETS["gpt-oss-20b"]["rope_scaling"]
        plain, _ = rope_inverse_frequencies(dataclasses.replace(config, rope_scaling=None))
        yarn, concentration = rope_inverse_frequencies(dataclasses.replace(config, rope_scaling=scaling))
        ax.semilogy(2 * torch.pi / plain, label="plain RoPE", marker=".")
        ax.semilogy(2 * torch.pi / yarn, label=f"YaRN, factor {scaling['factor']:g}", marker=".")
        ax.axhline(scaling["original_max_seq_len"], color="gray", linestyle=":", linewidth=1)
        ax.text(0, scaling["original_max_seq_len"] * 1.15, f"original context {scaling['original_max_seq_len']}", fontsize=7, color="gray")
        ax.axhline(config.max_seq_len, color="black", linestyle="--", linewidth=0.8)
        ax.text(0, config.max_seq_len * 1.15, f"this model's context {config.max_seq_len}", fontsize=7)
        ax.set_xlabel("rotary pair i (of head_size/2)")
        ax.set_ylabel("wavelength (tokens per turn)")
        own = "this model's" if config.rope_scaling else "gpt-oss-20b's (this model uses none)"
        ax.set_title(f"rotary speeds: theta {config.rope_theta:g}, YaRN settings: {own}", fontsize=9)
        ax.legend(fontsize=8)
        caption = (
            "Each pair of a head's dimensions turns at its own speed as the position grows: the fast pairs "
            "tell neighbours apart, the slow ones sense long distances. YaRN keeps the fast pairs, slows the "
            f"slow pairs by the factor so they stay within the turns seen in training, blends in between, "
            f"and scales cos/sin by {concentration:.3f}."
        )
    else:
        wpe = model.transformer.wpe.weight.detach().float().cpu()
        unit = wpe / wpe.norm(dim=-1, keepdim=True)
        image = ax.imshow((unit @ unit.T).numpy(), cmap="coolwarm", vmin=-1, vmax=1)
        fig.colorbar(image, ax=ax, fraction=0.046)
        ax.set_xlabel("position")
        ax.set_ylabel("position")
        ax.set_title("learned position embeddings: cosine similarity", fontsize=9)
        caption = (
            "GPT-2 learns one vector per position instead of rotating queries and keys; this is how alike "
            "those vectors are. Neighbouring positions end up similar, a smooth band that training finds on its own."
        )
    name = "positions.png"
    save(fig, out_dir, name)
    return [Figure(name, "Positions", caption)]


# ------------------------------------------------------------------------------------ the report
def model_summary(config: GPTConfig) -> str:
    """One line on what kind of model this is."""
    parts = [f"{config.num_layers} layers", f"d_model {config.d_model}", f"{config.num_heads} heads"]
    if config.kv_heads != config.num_heads:
        parts.append(f"{config.kv_heads} k/v heads (GQA)")
    parts.append("rotary positions" if config.position == "rope" else "learned positions")
    if config.sliding_window is not None:
        parts.append(f"sliding window {config.sliding_window} on even layers")
    if config.attention_sinks:
        parts.append("attention sinks")
    parts.append(f"{config.num_experts} experts, top-{config.experts_per_token}" if config.mlp == "moe" else "dense MLP")
    return ", ".join(parts)


def write_report(model: GPT, tokenizer, prompt: str, out_dir, title: str = "gptoss inspect") -> Path:
    """Run `prompt` through `model` once, recording, and write out_dir/index.html and its PNGs.
    Returns the HTML file's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty: give some text to inspect with --prompt")
    if len(ids) > min(MAX_TOKENS, model.config.max_seq_len):
        raise ValueError(
            f"the prompt is {len(ids)} tokens; inspect at most {min(MAX_TOKENS, model.config.max_seq_len)} "
            "(the pictures show every token): give a shorter --prompt"
        )
    model.eval()
    idx = torch.tensor([ids], device=model.lm_head.weight.device)
    _, rec = inspect(model, idx)
    labels = token_labels(tokenizer, ids)
    figures = (
        draw_attention(rec, labels, out_dir)
        + draw_sinks(rec, labels, out_dir)
        + draw_experts(rec, labels, model.config.num_experts, out_dir)
        + draw_logit_lens(model, rec, tokenizer, labels, out_dir)
        + draw_positions(model, out_dir)
    )
    sections = []
    for figure in figures:
        data = base64.b64encode((out_dir / figure.name).read_bytes()).decode("ascii")
        sections.append(
            f'<section id="{figure.name[:-4]}"><h2>{html.escape(figure.title)}</h2>'
            f'<img src="data:image/png;base64,{data}" alt="{html.escape(figure.title)}">'
            f"<p>{html.escape(figure.caption)}</p></section>"
        )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
pre {{ background: #f6f6f6; padding: 0.6em; white-space: pre-wrap; }}
section p {{ max-width: 60em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(model_summary(model.config))}; {len(ids)} prompt tokens:</p>
<pre>{html.escape(prompt)}</pre>
{chr(10).join(sections)}
</body></html>
"""
    path = out_dir / "index.html"
    write_text_atomically(path, page)
    return path
