"""The GPT model: sizes, forward/backward on CPU, loss mask, errors, cost formulas, optimizer groups."""

import pytest
import torch

from slwtune.errors import ModelError, SlwtuneError
from slwtune.model import (
    GPT,
    MODEL_PRESETS,
    GPTConfig,
    build_model,
    config_from_spec,
    configure_optimizer,
    estimate_mfu,
    flops_per_token,
    model_config,
    num_params,
    peak_flops,
)
from slwtune.spec import parse_spec


def tiny(**over) -> GPTConfig:
    return model_config("tiny", **{"vocab_size": 97, **over})


def batch(config: GPTConfig, B: int = 3, T: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, config.vocab_size, (B, T), generator=g)
    targets = torch.randint(0, config.vocab_size, (B, T), generator=g)
    return idx, targets


def test_gpt2_117m_param_count_analytic():
    # GPT-2 small with tied embeddings: the well-known 124M (nanoGPT prints 124.44M incl. wpe).
    config = model_config("gpt2-117m")
    assert num_params(config) == 124_439_808
    assert num_params(config, non_embedding=True) == 124_439_808 - 1024 * 768


def test_gpt2_presets_match_published_sizes():
    millions = {name: num_params(model_config(name)) / 1e6 for name in ("gpt2-345m", "gpt2-762m", "gpt2-1.5b")}
    assert millions["gpt2-345m"] == pytest.approx(354.8, abs=0.1)
    assert millions["gpt2-762m"] == pytest.approx(774.0, abs=0.1)
    assert millions["gpt2-1.5b"] == pytest.approx(1557.6, abs=0.1)


@pytest.mark.parametrize("bias", [True, False])
def test_num_params_equals_built_model(bias):
    model = GPT(tiny(bias=bias))
    assert num_params(model.config) == sum(p.numel() for p in model.parameters())  # tied counted once
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize("name", sorted(MODEL_PRESETS))
def test_every_preset_is_a_valid_config(name):
    config = model_config(name)
    assert config.n_embd % config.n_head == 0
    assert config.context_length == MODEL_PRESETS[name]["context_length"]


def test_model_config_overrides_and_ignores_none():
    config = model_config("tiny", vocab_size=123, dropout=0.1, n_layer=None)
    assert (config.vocab_size, config.dropout, config.n_layer) == (123, 0.1, 2)


def test_config_from_spec_applies_overrides_and_takes_the_data_vocab():
    spec = parse_spec({"model": {"preset": "small", "n_layer": 3, "dropout": 0.1, "bias": False},
                       "slw": {"full_length": 128}})
    config = config_from_spec(spec, vocab_size=321)
    assert (config.n_layer, config.n_head, config.n_embd, config.context_length) == (3, 4, 128, 256)
    assert (config.vocab_size, config.dropout, config.bias) == (321, 0.1, False)
    assert build_model(spec, 321).config == config


def test_config_from_spec_prefers_the_spec_vocab():
    spec = parse_spec({"model": {"preset": "tiny", "vocab_size": 500}})
    assert config_from_spec(spec, vocab_size=321).vocab_size == 500


def test_peak_flops_is_none_off_cuda():
    assert peak_flops(torch.device("cpu")) is None


def test_unknown_preset_lists_known_names():
    with pytest.raises(ModelError, match="gpt2-117m") as err:
        model_config("gpt5")
    assert "tiny" in str(err.value)


def test_unknown_override_field_is_rejected():
    with pytest.raises(ModelError, match="n_layers"):
        model_config("tiny", n_layers=3)


@pytest.mark.parametrize("over, shown", [
    (dict(n_embd=65), "n_embd=65"),
    (dict(n_layer=0), "n_layer=0"),
    (dict(vocab_size=-1), "vocab_size=-1"),
    (dict(context_length=0), "context_length=0"),
    (dict(dropout=1.0), "dropout=1.0"),
])
def test_bad_config_raises_with_the_value(over, shown):
    with pytest.raises(ModelError, match=shown):
        tiny(**over)
    assert issubclass(ModelError, SlwtuneError)


def test_tiny_forward_backward_on_cpu():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx, targets = batch(model.config)
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 16, 97)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(97.0)).item(), rel=0.1)  # ~uniform at init
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_no_targets_gives_no_loss():
    model = GPT(tiny())
    idx, _ = batch(model.config)
    logits, loss = model(idx)
    assert logits.shape == (3, 16, 97) and loss is None


def test_loss_mask_averages_only_masked_positions():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx, targets = batch(model.config)
    logits, full = model(idx, targets)
    per_pos = torch.nn.functional.cross_entropy(logits.reshape(-1, 97), targets.reshape(-1), reduction="none")
    mask = torch.zeros(3, 16)
    mask[:, :5] = 1
    _, masked = model(idx, targets, loss_mask=mask)
    assert masked.item() == pytest.approx(per_pos.view(3, 16)[:, :5].mean().item(), rel=1e-5)
    _, ones = model(idx, targets, loss_mask=torch.ones(3, 16))
    assert ones.item() == pytest.approx(full.item(), rel=1e-6)


def test_all_zero_loss_mask_gives_zero_not_nan():
    model = GPT(tiny())
    idx, targets = batch(model.config)
    _, loss = model(idx, targets, loss_mask=torch.zeros(3, 16))
    assert loss.item() == 0.0


def test_loss_mask_shape_mismatch_raises():
    model = GPT(tiny())
    idx, targets = batch(model.config)
    with pytest.raises(ModelError, match=r"\(3, 8\)"):
        model(idx, targets, loss_mask=torch.ones(3, 8))


def test_too_long_input_error_shows_both_numbers():
    model = GPT(tiny())
    idx = torch.zeros(1, 129, dtype=torch.long)
    with pytest.raises(ModelError, match="129") as err:
        model(idx)
    assert "128" in str(err.value)


def test_truncated_input_uses_the_first_positions():
    # Causal attention + positions arange(T): the first L outputs of a full-length
    # input equal the outputs of that input cut to L (what SLW truncation relies on).
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx, _ = batch(model.config, B=2, T=128)
    full, _ = model(idx)
    cut, _ = model(idx[:, :8])
    assert cut.shape == (2, 8, 97)
    torch.testing.assert_close(cut, full[:, :8], rtol=1e-4, atol=1e-5)


def test_same_seed_same_model_and_loss():
    def run():
        torch.manual_seed(1234)
        model = GPT(tiny(dropout=0.1))
        idx, targets = batch(model.config)
        return model(idx, targets)[1]

    assert run().item() == run().item()


def test_residual_projections_use_scaled_init():
    torch.manual_seed(0)
    model = GPT(model_config("small", vocab_size=97))  # 4 layers: std 0.02 / sqrt(8)
    c_proj = torch.cat([b.mlp.c_proj.weight.flatten() for b in model.transformer.h])
    c_fc = torch.cat([b.mlp.c_fc.weight.flatten() for b in model.transformer.h])
    assert c_proj.std().item() == pytest.approx(0.02 / 8 ** 0.5, rel=0.05)
    assert c_fc.std().item() == pytest.approx(0.02, rel=0.05)


def test_flops_per_token_golden_value():
    # gpt2-117m at 1024: 6 * (124,439,808 - 786,432) + 12 * 12 * 768 * 1024
    assert flops_per_token(model_config("gpt2-117m"), 1024) == 855_166_464
    # shorter sequences only shrink the attention term
    assert flops_per_token(model_config("gpt2-117m"), 64) == 6 * 123_653_376 + 12 * 12 * 768 * 64


def test_estimate_mfu():
    config = model_config("gpt2-117m")
    assert estimate_mfu(config, 1024, 1e5, 855_166_464 * 2e5) == pytest.approx(0.5)
    with pytest.raises(ModelError):
        estimate_mfu(config, 1024, 1e5, 0.0)


def test_optimizer_decays_only_2d_weights():
    model = GPT(tiny())
    opt = configure_optimizer(model, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == num_params(model.config)
    assert not opt.defaults.get("fused")  # CPU: never fused


def test_optimizer_fused_true_on_cpu_raises():
    with pytest.raises(ModelError, match="CUDA"):
        configure_optimizer(GPT(tiny()), 1e-3, (0.9, 0.95), 1e-8, 0.1, fused=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_optimizer_fused_on_cuda():
    model = GPT(tiny()).cuda()
    opt = configure_optimizer(model, 1e-3, (0.9, 0.95), 1e-8, 0.1)
    assert opt.defaults["fused"] is True
    idx, targets = batch(model.config)
    _, loss = model(idx.cuda(), targets.cuda())
    loss.backward()
    opt.step()
