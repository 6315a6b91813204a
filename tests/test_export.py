"""The trained model as a result: export from a checkpoint, load in one call, same val loss."""

import pytest
import torch

from slwtune import metrics as M
from slwtune.data import DatasetMeta, eval_batches, open_tokens, resolve_dataset
from slwtune.export import MODEL_FILE, export_model, load_model
from slwtune.spec import parse_spec
from slwtune.sessions import LocalSession
from slwtune.train_loop import RunOptions, train_loop


def tiny_spec():
    return parse_spec({
        "name": "t", "model": {"preset": "tiny"},
        "data": {"path": "builtin:shakespeare", "tokenizer": "bytes", "batch_size": 4},
        "optim": {"lr": 3e-3, "lr_warmup_steps": 4},
        "slw": {"start_length": 8, "full_length": 32, "duration_steps": 8, "step_size": 8},
        "budget": {"train_tokens": 4 * 32 * 12},
        "run": {"eval_every_steps": 6, "eval_batches": 2, "checkpoint_every_steps": 100},
    })


def test_exported_model_loads_and_gives_the_logged_val_loss(tmp_path):
    spec = tiny_spec()
    session = LocalSession(checkpoint_root=str(tmp_path / "ckpt"))
    last = train_loop(spec, RunOptions(), session)
    path = export_model(spec, session.checkpoints[-1], tmp_path / "model")
    assert path.name == MODEL_FILE

    model = load_model(path)
    data = resolve_dataset(spec.data.path, spec.data.tokenizer, spec.data.vocab_size)
    assert model.config.vocab_size == DatasetMeta.load(data).vocab_size
    val = eval_batches(open_tokens(data, "val"), spec.slw.full_length + 1, spec.data.batch_size, spec.run.eval_batches)
    with torch.no_grad():
        losses = [model(w[:, :-1], w[:, 1:])[1].item() for w in val]
    assert sum(losses) / len(losses) == pytest.approx(last[M.VAL_LOSS], rel=1e-5)


def test_export_refuses_weights_of_another_architecture(tmp_path):
    spec = tiny_spec()
    session = LocalSession(checkpoint_root=str(tmp_path / "ckpt"))
    train_loop(spec, RunOptions(max_steps=2), session)
    other = parse_spec({**spec.to_dict(), "model": {"preset": "tiny", "n_layer": 3}})
    with pytest.raises(RuntimeError):
        export_model(other, session.checkpoints[-1], tmp_path / "model")
