"""Optimizers: AdamW with weight decay on weight matrices only, and Muon for the hidden matrices.

    adamw(model, lr, weight_decay)          # every parameter by AdamW
    muon(model, lr, weight_decay)           # the blocks' weight matrices by Muon, the rest by AdamW

Muon (Keller Jordan's, as in modded-nanogpt and nanochat) keeps a momentum of each hidden weight
matrix's gradient and steps along its orthogonalisation: the matrix U V^T of the same singular
vectors with every singular value set to ~1 (by a Newton-Schulz iteration), so that each update
moves every direction of the matrix by the same amount instead of mostly the few largest ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

# The quintic Newton-Schulz coefficients of modded-nanogpt: chosen to raise small singular values
# as fast as possible, at the price of not converging exactly to 1 (see newton_schulz).
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_BATCH_ELEMENTS = 2**24  # matrices orthogonalised together in one batch, at most (elements)
# Muon's update is scaled to the RMS of a typical AdamW update, so that both share the learning rate
# and weight decay ("Muon is Scalable for LLM Training", Liu et al. 2025): 0.2 * sqrt(max(rows, cols)).
MUON_UPDATE_RMS = 0.2


def newton_schulz(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The orthogonalisation U V^T of matrix = U S V^T, approximately: (..., m, n) -> (..., m, n).

    Five quintic iterations X <- a X + (b A + c A^2) X, A = X X^T, from X = matrix / |matrix|_F
    (which puts every singular value in (0, 1]). The coefficients trade precision for speed: the
    singular vectors are kept, but the singular values of the result lie within about [0.68, 1.21]
    rather than at 1, for every input singular value at least 1/100 of the largest (a smaller one
    is raised but falls short: 1/1000 ends near 0.2). Training does not notice; the tests check the
    band [0.6, 1.25]. Computed in fp32; leading dimensions are a batch of matrices (the experts'
    stacked weights).
    """
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    x = matrix.float()
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide orientation: A = X X^T is then the smaller square
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(matrix.dtype)


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The model's trainable parameters by role: "hidden" (weight matrices inside the transformer
    blocks: attention, MLP, router and the experts' stacked matrices), "embedding" (the embedding
    tables, a tied unembedding with them), "output" (the other matrices: an untied unembedding) and
    "other" (biases, norm gains, sinks). A tied parameter appears once."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    groups = {"hidden": [], "embedding": [], "output": [], "other": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_matrix = p.dim() >= 2 and not name.endswith("bias")  # MoE expert biases are (E, n)
        if id(p) in embeddings:
            groups["embedding"].append(p)
        elif is_matrix:
            groups["hidden" if ".h." in f".{name}" else "output"].append(p)
        else:
            groups["other"].append(p)
    return groups


def adamw(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    *,
    decay_embeddings: bool = True,
    betas: tuple[float, float] = (0.9, 0.95),
    **kwargs,
) -> torch.optim.AdamW:
    """AdamW that decays only weight matrices: never biases, norm gains or sinks, and embeddings
    (with a tied unembedding) only when decay_embeddings. Decay pulls weights towards zero; a
    bias or a norm gain has no scale to regularise."""
    groups = parameter_groups(model)
    decay = groups["hidden"] + groups["output"] + (groups["embedding"] if decay_embeddings else [])
    no_decay = groups["other"] + ([] if decay_embeddings else groups["embedding"])
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **kwargs)


def muon(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    *,
    decay_embeddings: bool = True,
    betas: tuple[float, float] = (0.9, 0.95),
    momentum: float = 0.95,
) -> "Muon":
    """Muon for the blocks' weight matrices, AdamW (with betas) for the embeddings, the unembedding,
    biases, norm gains and sinks; weight decay as adamw() applies it."""
    groups = parameter_groups(model)
    decay = groups["output"] + (groups["embedding"] if decay_embeddings else [])
    no_decay = groups["other"] + ([] if decay_embeddings else groups["embedding"])
    return Muon(
        [
            {"params": groups["hidden"], "muon": True, "weight_decay": weight_decay},
            {"params": decay, "muon": False, "weight_decay": weight_decay},
            {"params": no_decay, "muon": False, "weight_decay": 0.0},
        ],
        lr=learning_rate, betas=betas, momentum=momentum,
    )  # fmt: skip


class Muon(torch.optim.Optimizer):
    """Muon on the param groups marked {"muon": True}, AdamW on the others, in one optimizer (one
    learning rate, schedule, state dict and grad scaler for both).

    Muon step of a weight W with gradient G: M <- momentum M + (1 - momentum) G; the Nesterov
    direction D = momentum M + (1 - momentum) G; W <- (1 - lr wd) W - lr 0.2 sqrt(max(m, n))
    newton_schulz(D). Its state is M ("momentum_buffer"); AdamW's is exp_avg and exp_avg_sq, with
    the step count in the group ("step"), so no step reads a tensor on the host.
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.95), momentum: float = 0.95, eps: float = 1e-8, weight_decay: float = 0.0):
        defaults = dict(lr=lr, betas=betas, momentum=momentum, eps=eps, weight_decay=weight_decay, muon=False, step=0)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self.muon_step if group["muon"] else self.adamw_step)(group, params)
        return loss

    def muon_step(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, momentum = group["lr"], group["momentum"]
        # the matrices of one shape (the same projection in every layer) are orthogonalised as one
        # batch: a few larger products instead of 15 small ones per matrix, whose fixed cost
        # dominates; batches of at most NEWTON_SCHULZ_BATCH_ELEMENTS, so that their fp32
        # working copies stay small next to the model (a 20b's stacked experts go one at a time)
        by_kind: dict[tuple, list[list[torch.Tensor]]] = {}
        for p in params:
            batches = by_kind.setdefault((p.shape, p.dtype, p.device), [[]])
            if batches[-1] and (len(batches[-1]) + 1) * p.numel() > NEWTON_SCHULZ_BATCH_ELEMENTS:
                batches.append([])
            batches[-1].append(p)
        for same_shape in (batch for batches in by_kind.values() for batch in batches):
            directions = []
            for p in same_shape:
                buffer = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buffer.lerp_(p.grad, 1 - momentum)
                directions.append(p.grad.lerp(buffer, momentum))  # Nesterov: the gradient, then the momentum
            updates = newton_schulz(torch.stack(directions))  # (matrices, ..., m, n)
            for p, update in zip(same_shape, updates):
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * MUON_UPDATE_RMS * math.sqrt(max(p.shape[-2:])))

    def adamw_step(self, group: dict, params: list[torch.Tensor]) -> None:
        (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
        group["step"] += 1
        for p in params:
            if not self.state[p]:
                self.state[p].update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        grads = [p.grad for p in params]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        bias_correction1, bias_correction2 = 1 - beta1 ** group["step"], 1 - beta2 ** group["step"]
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denominators, math.sqrt(bias_correction2))
        torch._foreach_add_(denominators, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denominators, value=-lr / bias_correction1)
