"""slwtune.hf_model: Hugging Face causal LMs (family hf) built from a config, in slwtune's own loop."""

import json

import pytest
import torch

from slwtune import metrics as M
from slwtune.errors import ModelError, SpecError
from slwtune.hf_model import HfCausalLM, build_hf_model
from slwtune.model import estimate_mfu, flops_per_token, model_config
from slwtune.pacing import make_pacing
from slwtune.spec import parse_spec
from slwtune.model import build_model
from slwtune.sessions import LocalSession
from slwtune.train_loop import RunOptions, train_loop

LLAMA = {"family": "hf", "architecture": "llama", "n_layer": 2, "n_head": 4, "n_embd": 32,
         "hf_config": {"num_key_value_heads": 2, "intermediate_size": 64}}
GPT2 = {"family": "hf", "architecture": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 64, "context_length": 128}


def spec_with(model: dict, **sections):
    data = {"name": "hf", "model": model,
            "data": {"path": "builtin:shakespeare", "tokenizer": "bytes", "batch_size": 4},
            "optim": {"lr": 3e-3, "lr_warmup_steps": 4},
            "slw": {"start_length": 8, "full_length": 32, "duration_steps": 8, "step_size": 8},
            "budget": {"train_tokens": 4 * 32 * 12},
            "run": {"eval_every_steps": 4, "eval_batches": 1, "stats_every_steps": 2, "checkpoint_every_steps": 100}}
    data.update(sections)
    return parse_spec(data)


@pytest.mark.parametrize("model", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_built_from_the_spec_with_random_init(model):
    torch.manual_seed(0)
    net = build_model(spec_with(model), vocab_size=97)
    assert isinstance(net, HfCausalLM) and net.hf.config.model_type == model["architecture"]
    assert (net.hf.config.num_hidden_layers, net.hf.config.hidden_size, net.hf.config.vocab_size) == \
        (2, model["n_embd"], 97)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    x = torch.randint(0, 97, (3, 16))
    logits, loss = net(x, torch.roll(x, -1, 1))
    assert logits.shape == (3, 16, 97)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(97.0)).item(), abs=0.5)  # random init


@pytest.mark.parametrize("model", [LLAMA, GPT2], ids=["llama-rotary", "gpt2-learned"])
def test_a_truncated_batch_sees_the_positions_of_the_full_one(model):
    # Causal attention and positions 0..L-1: the first L logits of a full-length forward are
    # those of the batch cut to L (what SLW's truncation feeds the model).
    torch.manual_seed(0)
    net = build_model(spec_with(model), vocab_size=97).eval()
    x = torch.randint(0, 97, (2, 32))
    full, _ = net(x)
    for length in (8, 16):
        short, _ = net(x[:, :length])
        assert torch.allclose(short, full[:, :length], atol=1e-5)


def test_llama_config_fields_from_the_spec_reach_the_model():
    net = build_model(spec_with(LLAMA), vocab_size=97)
    attn = net.hf.model.layers[0].self_attn
    assert net.hf.config.num_key_value_heads == 2 and attn.k_proj.out_features == 2 * (32 // 4)
    assert net.hf.model.layers[0].mlp.up_proj.out_features == 64


def test_flops_match_the_builtin_gpt_for_the_same_gpt2_sizes():
    spec = spec_with({**GPT2, "hf_config": {"n_inner": None}})
    hf = build_model(spec, vocab_size=97)
    ours = model_config("tiny", vocab_size=97, n_layer=2, n_head=2, n_embd=64, context_length=128)
    for seq_len in (8, 128):
        assert flops_per_token(hf.config, seq_len) == flops_per_token(ours, seq_len)
    assert estimate_mfu(hf.config, 64, 1e4, 1e12) == pytest.approx(flops_per_token(ours, 64) * 1e4 / 1e12)


def test_llama_flops_count_the_untied_head_and_not_the_token_table():
    net = build_model(spec_with(LLAMA), vocab_size=97)
    total = sum(p.numel() for p in net.parameters())
    n = total - 97 * 32  # embed_tokens is a lookup; lm_head (untied) is a matmul
    assert net.config.non_embedding_params == n
    assert net.config.flops_per_token(16) == 6 * n + 12 * 2 * 32 * 16


def test_hf_path_config_json_is_the_starting_point(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
                max_position_embeddings=64, vocab_size=50).save_pretrained(tmp_path)
    net = build_model(spec_with({"family": "hf", "hf_path": str(tmp_path), "n_layer": 2}), vocab_size=97)
    c = net.hf.config
    assert (c.model_type, c.hidden_size, c.num_hidden_layers, c.vocab_size) == ("llama", 48, 2, 97)
    assert net.config.context_length == 64
    file_spec = spec_with({"family": "hf", "hf_path": str(tmp_path / "config.json")})
    assert build_model(file_spec, vocab_size=97).hf.config.num_hidden_layers == 3


def test_slwtunes_loop_trains_a_tiny_llama_with_slw():
    spec = spec_with(LLAMA)
    session = LocalSession()
    last = train_loop(spec, RunOptions(report_every_steps=1, max_steps=10), session)
    pacing = make_pacing(spec.slw)
    assert [r[M.TRAIN_SEQLEN] for r in session.reports] == [pacing(s) for s in range(1, 11)]
    assert last[M.TRAIN_TOKENS] == 4 * sum(pacing(s) for s in range(1, 11))
    assert last[M.VERDICT] != M.FAILED and last[M.VAL_LOSS] < session.reports[0][M.VAL_LOSS]


# ---- errors name the field and the value -----------------------------------------------

def test_family_hf_needs_an_architecture_or_a_path():
    with pytest.raises(SpecError, match="model.architecture"):
        spec_with({"family": "hf"})
    with pytest.raises(SpecError, match="need model.family='hf'"):
        spec_with({"preset": "tiny", "architecture": "llama"})


def test_hf_context_from_the_spec_is_checked_against_full_length():
    with pytest.raises(SpecError, match=r"slw.full_length.*context_length=16"):
        spec_with({**LLAMA, "hf_config": {**LLAMA["hf_config"], "max_position_embeddings": 16}})


@pytest.mark.parametrize("model, match", [
    ({"family": "hf", "architecture": "vit"}, r"model.architecture='vit': has no causal LM head"),
    ({"family": "hf", "architecture": "nope"}, r"model.architecture='nope': not a transformers model type"),
])
def test_bad_architectures_are_named(model, match):
    with pytest.raises(ModelError, match=match):
        build_model(spec_with(model), vocab_size=97)


def test_hf_path_without_config_json_is_named(tmp_path):
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(ModelError, match=r"model.hf_path=.*needs a folder with config.json"):
        build_model(spec_with({"family": "hf", "hf_path": str(tmp_path)}), vocab_size=97)


def test_full_length_beyond_the_configs_positions_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 16, "n_layer": 1,
                                                      "n_head": 2, "n_embd": 32}))
    with pytest.raises(ModelError, match=r"slw.full_length=32 exceeds the model's max_position_embeddings=16"):
        build_hf_model(spec_with({"family": "hf", "hf_path": str(tmp_path)}), vocab_size=97)


def test_the_readme_hf_model_spec_is_valid_and_builds():
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"\*\*A Hugging Face causal LM\*\*.*?```yaml\n(.*?)```", readme, re.S).group(1)
    data = yaml.safe_load(block)
    data["data"] = {"path": "builtin:shakespeare", "tokenizer": "bytes"}  # the README's data/my is a placeholder
    net = build_model(parse_spec(data), vocab_size=97)
    assert net.hf.config.model_type == "llama" and net.hf.config.num_key_value_heads == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_hf_llama_on_cuda_trains_in_bf16_and_reports_mfu():
    from slwtune.model import peak_flops

    session = LocalSession(device="cuda")
    last = train_loop(spec_with(LLAMA), RunOptions(report_every_steps=1, max_steps=6), session)
    assert last[M.VERDICT] != M.FAILED and all(r[M.TRAIN_LOSS] == r[M.TRAIN_LOSS] for r in session.reports)
    if peak_flops(torch.device("cuda")):  # a device in PEAK_FLOPS: MFU from the HF model's own FLOPs
        assert all(0.0 < r[M.MFU] < 1.0 for r in session.reports)
