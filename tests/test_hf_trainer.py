"""slwtune.hf_trainer: SLW in a transformers.Trainer, on a tiny randomly initialised GPT-2 (no hub)."""

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from slwtune.hf_trainer import SlwDataCollator, slw_for_trainer, token_lr_lambda
from slwtune.schedule import LRSchedule, TokenClock
from slwtune.slw import SeqLengthWarmup

FULL, VOCAB = 32, 101


class Blocks(torch.utils.data.Dataset):
    """Fixed-length token blocks, as `group_texts` makes them; labels = input_ids (the model shifts)."""

    def __init__(self, n: int, seed: int):
        self.ids = torch.randint(0, VOCAB, (n, FULL), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(FULL, dtype=torch.long),
                "labels": self.ids[i]}


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=FULL, vocab_size=VOCAB))


def run_trainer(tmp_path, slw, **args):
    """Train with SLW; returns [(phase, seq_len, global_step)] for every forward and the log history."""
    model = tiny_gpt2()
    collator, callback = slw_for_trainer(slw)
    trainer = Trainer(
        model=model, data_collator=collator, callbacks=[callback],
        train_dataset=Blocks(10, seed=1), eval_dataset=Blocks(4, seed=2),
        args=TrainingArguments(**{**dict(output_dir=str(tmp_path), per_device_train_batch_size=2,
                                         per_device_eval_batch_size=2, learning_rate=1e-3, logging_steps=1,
                                         save_strategy="no", report_to=[], use_cpu=True,
                                         dataloader_num_workers=0, seed=0), **args}))
    seen = []
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(
        ("train" if m.training else "eval", kw["input_ids"].shape[1], trainer.state.global_step)), with_kwargs=True)
    trainer.train()
    return seen, trainer.state.log_history


def test_training_batches_follow_the_global_step_and_eval_stays_full_length(tmp_path):
    slw = SeqLengthWarmup(start_length=8, full_length=FULL, duration_steps=6, step_size=8)
    # 5 batches per epoch with 2 accumulation steps: each epoch ends on a one-batch step, and
    # evaluations come after steps 3 and 6 and at the very start.
    seen, logs = run_trainer(tmp_path, slw, gradient_accumulation_steps=2, num_train_epochs=3,
                             eval_strategy="steps", eval_steps=3, eval_on_start=True)
    train = [(length, step) for phase, length, step in seen if phase == "train"]
    assert len(train) == 15  # 3 epochs x 5 batches
    # global_step during a forward is the steps done so far: the batch is for step global_step + 1
    assert [length for length, _ in train] == [slw.length_at(step + 1) for _, step in train]
    assert {length for length, _ in train} == {8, 16, 24, 32}  # grows from s to e
    evals = [length for phase, length, _ in seen if phase == "eval"]
    assert len(evals) >= 6 and set(evals) == {FULL}
    assert [row["step"] for row in logs if "loss" in row] == list(range(1, 10))  # 3 epochs x 3 steps


def test_reshape_mode_trains_on_more_shorter_rows(tmp_path):
    slw = SeqLengthWarmup(start_length=8, full_length=FULL, duration_steps=4, step_size=8, mode="reshape")
    seen, _ = run_trainer(tmp_path, slw, max_steps=3)
    assert [length for phase, length, _ in seen if phase == "train"] == [8, 16, 24]


def test_collator_outside_training_passes_batches_at_full_length():
    collator = SlwDataCollator(SeqLengthWarmup(8, FULL, 6, 8))
    batch = collator([Blocks(2, seed=3)[i] for i in range(2)])
    assert batch["input_ids"].shape == (2, FULL)
    collator.start_epoch(global_step=4, gradient_accumulation_steps=1)  # e.g. resumed at step 4
    assert collator.next_step() == 5
    assert collator([Blocks(2, seed=3)[0]])["input_ids"].shape == (1, SeqLengthWarmup(8, FULL, 6, 8).length_at(5))


def test_worker_processes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="dataloader_num_workers=1"):
        run_trainer(tmp_path, SeqLengthWarmup(8, FULL, 6, 8), max_steps=1, dataloader_num_workers=1)


def test_token_lr_lambda_matches_the_token_clock():
    slw = SeqLengthWarmup(8, 64, 10, 8)
    sched = LRSchedule(lr=1e-3, min_lr=1e-5, warmup_steps=3, decay_tokens=20_000, decay="cosine")
    lam = token_lr_lambda(slw, sched, rows_per_step=16)
    clock, expected = TokenClock(3), []
    for step in range(1, 30):
        expected.append(sched(step, clock.tokens, clock.warmup_tokens))
        clock.advance(step, 16 * slw.length_at(step))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler, got = LambdaLR(opt, lam), []
    for _ in range(29):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert got == pytest.approx(expected)
