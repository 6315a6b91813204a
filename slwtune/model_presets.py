"""The model preset table: GPT sizes by name.

Torch-free on purpose: the job spec checks presets and context lengths with it, so validating
a spec (CLI, REST) never imports torch. `slwtune.model` builds configs and models from it.
"""

__all__ = ["MODEL_PRESETS"]

# GPT-2 sizes (Radford et al. 2019) and GPT-3 125M (Brown et al. 2020); the CPU
# presets take their vocabulary from the data (4096 = the builtin BPE default).
MODEL_PRESETS: dict[str, dict] = {
    "gpt2-117m": dict(n_layer=12, n_head=12, n_embd=768, context_length=1024, vocab_size=50257),
    "gpt2-345m": dict(n_layer=24, n_head=16, n_embd=1024, context_length=1024, vocab_size=50257),
    "gpt2-762m": dict(n_layer=36, n_head=20, n_embd=1280, context_length=1024, vocab_size=50257),
    "gpt2-1.5b": dict(n_layer=48, n_head=25, n_embd=1600, context_length=1024, vocab_size=50257),
    "gpt3-125m": dict(n_layer=12, n_head=12, n_embd=768, context_length=2048, vocab_size=50257),
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, context_length=128, vocab_size=4096),
    "small": dict(n_layer=4, n_head=4, n_embd=128, context_length=256, vocab_size=4096),
    "mini": dict(n_layer=6, n_head=6, n_embd=192, context_length=256, vocab_size=4096),
}
