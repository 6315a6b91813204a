"""A GPT-2 model in one file: config, presets, the model, its cost, its optimizer.

Learned absolute position embeddings (so SLW's truncation needs nothing from
the model: a batch of length L uses positions 0..L-1), pre-LayerNorm blocks,
causal attention through `scaled_dot_product_attention`, a 4x GELU MLP, and
token embeddings tied to the output head. Init follows GPT-2.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from slwtune.errors import ModelError
from slwtune.losses import masked_cross_entropy
from slwtune.model_presets import MODEL_PRESETS

__all__ = ["GPTConfig", "MODEL_PRESETS", "model_config", "config_from_spec", "build_model", "GPT", "num_params",
           "flops_per_token", "PEAK_FLOPS", "peak_flops", "estimate_mfu", "configure_optimizer",
           "mark_length_dynamic"]


@dataclass
class GPTConfig:
    """Sizes of a GPT. `dropout` applies to attention, residual and embedding outputs."""

    n_layer: int
    n_head: int
    n_embd: int
    context_length: int  # the longest sequence the position table covers
    vocab_size: int
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers (GPT-2 has them)

    def __post_init__(self):
        problems = [f"{name}={getattr(self, name)!r} must be a positive integer"
                    for name in ("n_layer", "n_head", "n_embd", "context_length", "vocab_size")
                    if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0]
        if not problems and self.n_embd % self.n_head != 0:
            problems.append(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout={self.dropout!r} must be in [0, 1)")
        if problems:
            raise ModelError("invalid model config: " + "; ".join(problems))


def model_config(preset: str, **overrides) -> GPTConfig:
    """The preset's config with `overrides` applied; overrides that are None are ignored."""
    if preset not in MODEL_PRESETS:
        raise ModelError(f"unknown model preset {preset!r}; known presets: {', '.join(MODEL_PRESETS)}")
    known = {f.name for f in fields(GPTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ModelError(f"unknown model config fields {unknown}; known fields: {sorted(known)}")
    return GPTConfig(**{**MODEL_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})


def config_from_spec(spec, vocab_size: int) -> GPTConfig:
    """The model of a job spec: its preset with the spec's overrides. The vocabulary is
    `model.vocab_size` when set, else `vocab_size` (the dataset's). The one place a spec
    becomes a model config: the training loop and `slwtune plan` both use it."""
    m = spec.model
    return model_config(m.preset, n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd,
                        context_length=m.context_length, vocab_size=m.vocab_size or vocab_size,
                        dropout=m.dropout, bias=m.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # each (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2: `forward(idx, targets=None, loss_mask=None) -> (logits, loss)`."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.context_length, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied: one matrix, counted once
        self.apply(self._init_weights)
        # GPT-2: scale the projections into the residual stream so its variance
        # does not grow with depth (two residual adds per layer).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx, targets, loss_mask: (B, T) with T <= context_length -> logits (B, T, V) and the
        mean cross-entropy over positions where loss_mask is 1 (all when None); loss is None
        without targets."""
        B, T = idx.shape
        if T > self.config.context_length:
            raise ModelError(f"input length {T} exceeds the model's context_length {self.config.context_length}")
        pos = torch.arange(T, device=idx.device)  # (T,): a truncated batch uses the first T positions
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        if targets is None:
            if loss_mask is not None:
                raise ModelError("loss_mask needs targets")
            return logits, None
        return logits, masked_cross_entropy(logits, targets, loss_mask)


def num_params(config: GPTConfig, non_embedding: bool = False) -> int:
    """Parameters of `GPT(config)` from its sizes alone, the tied embedding counted once.

    non_embedding=True leaves out the position table (a lookup, no FLOPs), as nanoGPT
    does; the token table stays because, tied to lm_head, it is also a matmul.
    """
    d, b = config.n_embd, int(config.bias)
    layer_norm = d + b * d
    attn = (d * 3 * d + b * 3 * d) + (d * d + b * d)
    mlp = (d * 4 * d + b * 4 * d) + (4 * d * d + b * d)
    per_layer = 2 * layer_norm + attn + mlp
    total = config.vocab_size * d + config.context_length * d + config.n_layer * per_layer + layer_norm
    return total - config.context_length * d if non_embedding else total


def flops_per_token(config: GPTConfig, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token at sequence length `seq_len`.

    The PaLM (Chowdhery et al. 2022, app. B) / nanoGPT estimate 6*N + 12*L*d*T: 6 FLOPs per
    weight per token (2 forward, 4 backward) plus attention scores and values, whose cost grows
    with T. N = num_params(non_embedding=True). Shorter SLW sequences are cheaper per token.
    """
    if hasattr(config, "flops_per_token"):  # another family's config knows its own cost (slwtune.hf_model)
        return config.flops_per_token(seq_len)
    return 6.0 * num_params(config, non_embedding=True) + 12.0 * config.n_layer * config.n_embd * seq_len


# Peak dense bf16 FLOP/s per device (datasheets, without sparsity), for MFU; matched as a
# substring of the CUDA device name. Unknown devices report no MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def peak_flops(device: torch.device) -> float | None:
    """The device's peak FLOP/s from PEAK_FLOPS, or None (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def estimate_mfu(config: GPTConfig, seq_len: int, tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilization: achieved training FLOP/s over the device's peak FLOP/s."""
    if peak_flops <= 0:
        raise ModelError(f"peak_flops={peak_flops!r} must be positive")
    return flops_per_token(config, seq_len) * tokens_per_s / peak_flops


def mark_length_dynamic(*tensors: torch.Tensor, rows: bool = False) -> None:
    """Tell torch.compile, before it sees them, that the sequence dim (1) of these inputs varies,
    and the rows dim (0) too when `rows` (SLW's reshape mode: e // L rows per window).

    Without it dynamo compiles a static graph for the first length and a second, dynamic one
    at the next; with it, one graph serves every SLW length from the start. `maybe_` (not the
    strict `mark_dynamic`): should a backend specialize the length, dynamo recompiles as
    before instead of raising mid-run; `benchmarks/gpu_check.py` reports the graph count.
    Sizes 0 and 1 are always specialized by dynamo: a length-1 step gets its own graph.
    """
    for t in tensors:
        for dim in (0, 1) if rows else (1,):
            torch._dynamo.maybe_mark_dynamic(t, dim)


def build_model(spec, vocab_size: int) -> nn.Module:
    """The spec's model: `GPT(config_from_spec(spec, vocab_size))`, or a transformers causal LM behind
    GPT's interface for `model.family: hf` (slwtune.hf_model)."""
    if spec.model.family == "hf":
        from slwtune.hf_model import build_hf_model

        return build_hf_model(spec, vocab_size)
    return GPT(config_from_spec(spec, vocab_size))


def configure_optimizer(model: nn.Module, lr: float, betas: tuple[float, float], eps: float,
                        weight_decay: float, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW with weight decay on the 2-D weights (matmuls and embeddings) only, not on
    biases or LayerNorm gains.

    fused: None uses the fused CUDA kernel when every parameter is on CUDA, False never
    does, True insists (ModelError when it cannot).
    """
    params = [p for p in model.parameters() if p.requires_grad]  # a tied weight appears once
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    can_fuse = ("fused" in inspect.signature(torch.optim.AdamW).parameters
                and bool(params) and all(p.is_cuda and p.is_floating_point() for p in params))
    if fused and not can_fuse:
        raise ModelError("fused AdamW needs every parameter on a CUDA device")
    extra = {"fused": True} if can_fuse and fused is not False else {}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **extra)
