"""Hugging Face causal LMs in slwtune's own loop (`model.family: hf`; needs `pip install 'slwtune[hf]'`).

    model:
      family: hf
      architecture: llama            # any AutoConfig model type with a causal LM head: gpt2, llama, ...
      n_layer: 2                     # slwtune's size fields map to num_hidden_layers, num_attention_heads,
      n_head: 4                      # hidden_size, max_position_embeddings and vocab_size ...
      n_embd: 64
      hf_config: {num_key_value_heads: 2, intermediate_size: 172}   # ... and any field by its HF name
      # hf_path: ./my-model          # or start from a local config.json (a folder or the file)

The model is built from the config with random init (pre-training): nothing is downloaded,
and weights next to an `hf_path` config are not loaded. `build_hf_model` returns an
`HfCausalLM`, which looks to the loop like `slwtune.model.GPT`: `forward(idx, targets,
loss_mask) -> (logits, loss)` on already shifted inputs/targets, and a `config` that gives the
context length and the training FLOPs per token (for MFU). Positions are 0..L-1 for a batch of
length L, so learned (GPT-2) and rotary (Llama) positions both follow SLW's shorter sequences.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from slwtune.errors import ModelError
from slwtune.losses import masked_cross_entropy

__all__ = ["HfCausalLM", "HfModelConfig", "hf_config", "build_hf_model"]

# slwtune's generic ModelSpec size fields -> the standard Hugging Face config names (every
# config maps these onto its own, e.g. GPT2Config's n_layer, through its attribute_map).
GENERIC_TO_HF = {"n_layer": "num_hidden_layers", "n_head": "num_attention_heads", "n_embd": "hidden_size",
                 "context_length": "max_position_embeddings"}
# Dropout fields of common configs that model.dropout sets when the config has them.
DROPOUT_FIELDS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout", "hidden_dropout",
                  "hidden_dropout_prob", "attention_probs_dropout_prob", "dropout")


@dataclass(frozen=True)
class HfModelConfig:
    """What slwtune's loop reads from a model's `config`: the context and the cost per token."""

    model_type: str
    n_layer: int
    attn_dim: int            # query heads x head size: the width of the attention scores' matmuls
    context_length: int | None
    vocab_size: int
    non_embedding_params: int  # weights that are matmuls (a tied token table counts once, as a matmul)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token at `seq_len`: 6 N + 12 n_layer attn_dim T, the estimate
        `slwtune.model.flops_per_token` uses for the built-in GPT (PaLM app. B)."""
        return 6.0 * self.non_embedding_params + 12.0 * self.n_layer * self.attn_dim * seq_len


def _causal_lm_types() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _base_fields(architecture: str | None, hf_path: str | None) -> tuple[str, dict]:
    """(model type, config fields) to start from: `hf_path`'s config.json as written (derived
    fields such as head_dim are then recomputed from the final sizes), else `architecture`'s."""
    if not hf_path:
        if not architecture:
            raise ModelError("model.architecture: required for model.family='hf' without model.hf_path")
        return architecture, {}
    path = Path(hf_path).expanduser()
    file = path if path.is_file() else path / "config.json"
    if file.name != "config.json" or not file.is_file():
        raise ModelError(f"model.hf_path={hf_path!r}: needs a folder with config.json (or that file)")
    try:
        fields = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"model.hf_path={hf_path!r}: unreadable config.json ({e})") from e
    model_type = fields.pop("model_type", None) if isinstance(fields, dict) else None
    if not model_type:
        raise ModelError(f"model.hf_path={hf_path!r}: config.json names no model_type")
    if architecture and model_type != architecture:
        raise ModelError(f"model.architecture={architecture!r} but model.hf_path={hf_path!r} holds a "
                         f"{model_type!r} config")
    return model_type, fields


def _config_for(model_type: str, fields: dict):
    from transformers import AutoConfig

    try:
        return AutoConfig.for_model(model_type, **fields)
    except (ValueError, TypeError, KeyError) as e:
        raise ModelError(f"model.architecture={model_type!r}: not a transformers model type, or its config "
                         f"fields are invalid ({e})") from None


def hf_config(model_spec, vocab_size: int):
    """The transformers config of `model.family: hf`: the base fields, then slwtune's size fields,
    then `model.hf_config` (HF names, applied last); `vocab_size` is model.vocab_size or the data's."""
    m = model_spec
    model_type, fields = _base_fields(m.architecture, m.hf_path)
    defaults = _config_for(model_type, fields)  # fails on an unknown type; shows the dropout fields
    if model_type not in _causal_lm_types():
        raise ModelError(f"model.architecture={model_type!r}: has no causal LM head in transformers "
                         "(AutoModelForCausalLM); use e.g. gpt2 or llama")
    fields.update({hf: getattr(m, ours) for ours, hf in GENERIC_TO_HF.items() if getattr(m, ours) is not None})
    fields["vocab_size"] = m.vocab_size or vocab_size
    fields.update({name: m.dropout for name in DROPOUT_FIELDS if hasattr(defaults, name)})
    fields.update(m.hf_config)
    # Built with every field at once, so derived ones (head_dim, ...) follow the final sizes.
    config = _config_for(model_type, fields)
    # Special-token ids of the original vocabulary mean nothing for ours (and transformers warns).
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value >= config.vocab_size and name not in m.hf_config:
            setattr(config, name, None)
    return config


def build_hf_model(spec, vocab_size: int) -> HfCausalLM:
    """A randomly initialised causal LM for `spec.model` (family hf) over `vocab_size` tokens."""
    from transformers import AutoModelForCausalLM

    config = hf_config(spec.model, vocab_size)
    try:
        model = HfCausalLM(AutoModelForCausalLM.from_config(config))
    except (ValueError, TypeError, AttributeError) as e:  # transformers' own config checks
        raise ModelError(f"model (family hf, {config.model_type}): transformers cannot build it ({e})") from e
    ctx = model.config.context_length
    if ctx is not None and spec.slw.full_length > ctx:
        raise ModelError(f"slw.full_length={spec.slw.full_length} exceeds the model's "
                         f"max_position_embeddings={ctx}")
    return model


class HfCausalLM(nn.Module):
    """A transformers causal LM behind `slwtune.model.GPT`'s interface."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model
        self.config = describe(hf_model)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx, targets, loss_mask: (B, T), targets already shifted (the next token of each
        input) -> logits (B, T, V) and the masked mean cross-entropy (None without targets)."""
        T = idx.shape[1]
        if self.config.context_length is not None and T > self.config.context_length:
            raise ModelError(f"input length {T} exceeds the model's context_length {self.config.context_length}")
        # No labels to the HF model: it would shift them again. Positions default to 0..T-1.
        logits = self.hf(input_ids=idx, use_cache=False).logits  # (B, T, V)
        if targets is None:
            if loss_mask is not None:
                raise ModelError("loss_mask needs targets")
            return logits, None
        return logits, masked_cross_entropy(logits, targets, loss_mask)


def describe(hf_model: nn.Module) -> HfModelConfig:
    """Sizes and cost of a built transformers model, read from its config and its parameters."""
    config = hf_model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layer, n_head = int(text.num_hidden_layers), int(text.num_attention_heads)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_head
    inputs, outputs = hf_model.get_input_embeddings(), hf_model.get_output_embeddings()
    tied = outputs is not None and outputs.weight is inputs.weight
    params = {id(p): p.numel() for p in hf_model.parameters()}  # a tied matrix counted once
    # Lookup tables do no matmul: the position table(s), and the token table unless it is the head.
    lookups = {id(mod.weight) for mod in hf_model.modules() if isinstance(mod, nn.Embedding)}
    if tied:
        lookups.discard(id(inputs.weight))
    non_embedding = sum(n for key, n in params.items() if key not in lookups)
    ctx = getattr(text, "max_position_embeddings", None)
    return HfModelConfig(model_type=config.model_type, n_layer=n_layer, attn_dim=n_head * head_dim,
                         context_length=int(ctx) if ctx else None, vocab_size=int(text.vocab_size),
                         non_embedding_params=non_embedding)
