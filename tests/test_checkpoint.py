"""Checkpoints: model, optimizer, loop counters and every RNG come back exactly."""

import random

import numpy as np
import torch

from slwtune.checkpoint import TrainState, load_checkpoint, save_checkpoint, seed_everything, unwrap


def model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_round_trip_restores_state_weights_optimizer_and_rng(tmp_path):
    model, opt = model_and_optimizer(0)
    state = TrainState(step=7, tokens=896, warmup_tokens=512, monitor={"best_val_ppl": 3.5})
    seed_everything(11)
    save_checkpoint(tmp_path, model, opt, state)
    after_save = draws()

    other, other_opt = model_and_optimizer(1)
    seed_everything(99)
    assert load_checkpoint(str(tmp_path), other, other_opt) == state
    assert draws() == after_save  # the RNG continues where the saved run was
    assert torch.equal(other.weight, model.weight)
    assert torch.equal(other_opt.state_dict()["state"][0]["exp_avg_sq"], opt.state_dict()["state"][0]["exp_avg_sq"])


def test_unwrap_removes_compile_and_ddp_style_wrappers(tmp_path):
    model = torch.nn.Linear(2, 2)
    compiled = torch.compile(model)
    assert unwrap(compiled) is model
    wrapper = torch.nn.Module()
    wrapper.module = compiled  # what DistributedDataParallel looks like from outside
    assert unwrap(wrapper) is model
    # a checkpoint of the wrapped model loads into a bare one: no "_orig_mod." / "module." prefixes
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, wrapper, opt, TrainState())
    assert set(torch.load(tmp_path / "state.pt", weights_only=False)["model"]) == {"weight", "bias"}
