"""Model configuration: one dataclass describes every model here, from the seed's GPT to gpt-oss.

The first seven fields are the seed's. The rest are the switches that turn GPT-2 into gpt-oss, one
architectural idea each; their defaults give the seed's GPT (GPT-2 style).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

from gptoss.util.checks import check_positive_int

NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
MLPS = ("gelu", "moe")


@dataclass
class GPTConfig:
    """Hyper-parameters of a decoder-only transformer (see the module doc)."""

    # --- the seed's fields ---
    vocab_size: int = 50257
    d_model: int = 768
    num_layers: int = 12
    num_heads: int = 12
    d_ff: int = 3072  # hidden size of the feed-forward (of each expert, for MoE)
    max_seq_len: int = 1024
    dropout: float = 0.1

    # --- from GPT-2 to gpt-oss, one switch each ---
    norm: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (gpt-oss, computed in fp32)
    norm_eps: float = 1e-5
    position: str = "learned"  # "learned" absolute embeddings (GPT-2) or "rope" rotary (gpt-oss)
    rope_theta: float = 10000.0
    # YaRN context extension of RoPE, e.g. {"factor": 32, "beta_fast": 32, "beta_slow": 1,
    # "original_max_seq_len": 4096}; None means plain RoPE.
    rope_scaling: dict | None = None
    num_kv_heads: int | None = None  # grouped-query attention; None means num_heads (plain MHA)
    head_dim: int | None = None  # None means d_model // num_heads
    sliding_window: int | None = None  # window of the sliding-window layers; None: all layers full
    sliding_window_pattern: str = "even"  # which layers slide: "even" (0, 2, 4, ...) or "all"
    attention_sinks: bool = False  # one learned extra logit per head in the softmax
    attention_bias: bool = True  # biases on the q/k/v and output projections
    mlp: str = "gelu"  # "gelu" feed-forward (GPT-2) or "moe": mixture of SwiGLU experts (gpt-oss)
    num_experts: int = 0
    experts_per_token: int = 0  # top-k routing
    swiglu_limit: float = 7.0  # gpt-oss clamps the gate (max) and the linear half (both sides)
    swiglu_alpha: float = 1.702
    router_aux_loss_coef: float = 0.0  # weight of the load-balancing loss when training MoE
    tie_embeddings: bool = True  # unembedding shares the token embedding matrix (GPT-2)
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ derived sizes
    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (equals num_heads without grouped-query attention)."""
        return self.num_kv_heads or self.num_heads

    @property
    def head_size(self) -> int:
        """Width of one attention head."""
        return self.head_dim or self.d_model // self.num_heads

    def is_sliding_layer(self, layer: int) -> bool:
        """Whether layer `layer` attends only to the last `sliding_window` positions."""
        if self.sliding_window is None:
            return False
        return self.sliding_window_pattern == "all" or layer % 2 == 0

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError naming the first bad value and what would be accepted."""
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "max_seq_len"):
            check_positive_int(f"GPTConfig.{name}", getattr(self, name))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(
                f"GPTConfig.d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads}), "
                "or set head_dim explicitly"
            )
        for name in ("num_kv_heads", "head_dim", "sliding_window"):
            check_positive_int(f"GPTConfig.{name}", getattr(self, name), optional=True)
        for name in ("norm_eps", "rope_theta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"GPTConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.num_heads % self.kv_heads:
            raise ValueError(
                f"GPTConfig.num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.kv_heads})"
            )
        for name, allowed in (("norm", NORMS), ("position", POSITIONS), ("mlp", MLPS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.sliding_window_pattern not in ("even", "all"):
            raise ValueError(f"GPTConfig.sliding_window_pattern must be 'even' or 'all', got {self.sliding_window_pattern!r}")
        if self.position == "rope" and self.head_size % 2:
            raise ValueError(f"rotary embeddings need an even head size, got {self.head_size}")
        if self.rope_scaling is not None:
            missing = {"factor", "beta_fast", "beta_slow", "original_max_seq_len"} - set(self.rope_scaling)
            if missing:
                raise ValueError(f"GPTConfig.rope_scaling lacks {sorted(missing)}")
            if not self.rope_scaling["factor"] >= 1:
                raise ValueError(f"GPTConfig.rope_scaling factor must be >= 1 (YaRN stretches the context), got {self.rope_scaling['factor']!r}")
            fast, slow = self.rope_scaling["beta_fast"], self.rope_scaling["beta_slow"]
            if not fast > slow > 0:
                raise ValueError(f"GPTConfig.rope_scaling needs beta_fast > beta_slow > 0 (rotations per context), got {fast!r} and {slow!r}")
            check_positive_int("GPTConfig.rope_scaling original_max_seq_len", self.rope_scaling["original_max_seq_len"])
        if self.mlp == "moe" and not 1 <= self.experts_per_token <= self.num_experts:
            raise ValueError(
                "a mixture of experts needs 1 <= experts_per_token <= num_experts, got "
                f"experts_per_token={self.experts_per_token}, num_experts={self.num_experts}"
            )

    # ------------------------------------------------------------------ presets and files
    @classmethod
    def preset(cls, name: str, **overrides) -> "GPTConfig":
        """A named configuration (see PRESETS), with any field overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown GPTConfig field(s) {sorted(unknown)}")
        return cls(**{**copy.deepcopy(PRESETS[name]), **overrides})  # deep: rope_scaling is a dict

    def to_dict(self) -> dict:
        """Plain-dict form, JSON-serialisable."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "GPTConfig":
        """Inverse of to_dict; rejects unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown GPTConfig key(s) {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**values)


def yarn_concentration(factor: float) -> float:
    """YaRN's attention temperature correction, multiplied into cos and sin: 0.1 ln(factor) + 1."""
    return 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0


_GPT_OSS = dict(
    vocab_size=201088,
    d_model=2880,
    num_heads=64,
    num_kv_heads=8,
    head_dim=64,
    d_ff=2880,
    max_seq_len=131072,
    dropout=0.0,
    norm="rmsnorm",
    position="rope",
    rope_theta=150000.0,
    rope_scaling={"factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "original_max_seq_len": 4096},
    sliding_window=128,
    attention_sinks=True,
    mlp="moe",
    experts_per_token=4,
    tie_embeddings=False,
)

PRESETS: dict[str, dict] = {
    # fast enough for tests and demos on a CPU
    "tiny": dict(vocab_size=256, d_model=128, num_layers=4, num_heads=4, d_ff=512, max_seq_len=256, dropout=0.0),
    # the seed's default configuration, GPT-2 small (124M)
    "gpt2-small": dict(),
    "gpt2-medium": dict(d_model=1024, num_layers=24, num_heads=16, d_ff=4096),
    "gpt2-large": dict(d_model=1280, num_layers=36, num_heads=20, d_ff=5120),
    "gpt2-xl": dict(d_model=1600, num_layers=48, num_heads=25, d_ff=6400),
    # the seed's "GPT-3 scale" suggestion (~20.2B parameters)
    "gpt3-20b": dict(d_model=6144, num_layers=44, num_heads=64, d_ff=24576),
    # OpenAI's open-weight models, as published
    "gpt-oss-20b": dict(_GPT_OSS, num_layers=24, num_experts=32),
    "gpt-oss-120b": dict(_GPT_OSS, num_layers=36, num_experts=128),
    # every gpt-oss component, small enough to train on a CPU
    "gpt-oss-tiny": dict(
        _GPT_OSS,
        vocab_size=256,
        d_model=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        d_ff=128,
        max_seq_len=1024,
        rope_theta=10000.0,
        rope_scaling=None,
        sliding_window=32,
        num_experts=8,
        experts_per_token=2,
        router_aux_loss_coef=0.01,
    ),
}
