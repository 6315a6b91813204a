"""Sequence Length Warmup inside a Hugging Face `transformers.Trainer` (needs `pip install 'slwtune[hf]'`).

    from slwtune.hf_trainer import slw_for_trainer, token_lr_lambda
    from slwtune.slw import SeqLengthWarmup

    slw = SeqLengthWarmup(start_length=8, full_length=1024, duration_steps=3000)   # knobs from `slwtune tune`
    collator, callback = slw_for_trainer(slw, DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer = Trainer(model=model, args=args, train_dataset=blocks, eval_dataset=val_blocks,
                      data_collator=collator, callbacks=[callback])
    trainer.train()

The collator truncates (or reshapes) each *training* batch to the SLW length of the optimizer
step that will train on it, `slw.length_at(state.global_step + 1)`; evaluation batches stay at
full length. The truncation has to happen in the collator, before the Trainer counts the label
tokens it normalises the loss by; and since the Trainer (and accelerate) fetch batches ahead of
the step that uses them, the collator does not read the live step: it numbers the training
batches it collates (gradient_accumulation_steps per optimizer step) from the step the callback
hands it at the start of every epoch, and the callback tells it when an evaluation is about to
run. (The length of step t is `slw.length_at(t)`; a callback's on_log cannot add it to the
Trainer's log history, which is written before callbacks see the logs.)

Limits: `dataloader_num_workers` must be 0 (worker processes would hold copies of the collator
and number their batches apart; truncating is cheap, tokenize in `dataset.map` beforehand);
resuming mid-epoch on an `IterableDataset` (whose skipped batches are collated) is not exact.
The batch's rows should be `full_length` tokens long (e.g. `group_texts` blocks); a shorter
(padded) batch is never lengthened.

For the paper's token-based LR decay, give the Trainer a `LambdaLR` with `token_lr_lambda`
(see there): with a fixed number of rows per step the tokens are a function of the step.
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import TrainerCallback, default_data_collator

from slwtune.schedule import LRSchedule
from slwtune.slw import SeqLengthWarmup

__all__ = ["SlwDataCollator", "SlwTrainerCallback", "slw_for_trainer", "token_lr_lambda"]


class SlwDataCollator:
    """Wraps a data collator: training batches come out at the SLW length of their step."""

    def __init__(self, slw: SeqLengthWarmup, collator: Callable | None = None, seq_key: str = "input_ids"):
        self.slw, self.collator, self.seq_key = slw, collator or default_data_collator, seq_key
        self.training = False  # set by SlwTrainerCallback; outside training batches pass at full length
        self._first_step, self._batches, self._accum = 1, 0, 1

    def start_epoch(self, global_step: int, gradient_accumulation_steps: int) -> None:
        """The next training batch belongs to optimizer step `global_step + 1`."""
        if gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps={gradient_accumulation_steps} must be >= 1")
        self._first_step, self._batches, self._accum = global_step + 1, 0, gradient_accumulation_steps
        self.training = True

    def next_step(self) -> int:
        """The optimizer step the next training batch is for."""
        return self._first_step + self._batches // self._accum

    def __call__(self, features):
        batch = self.collator(features)
        if not self.training:
            return batch  # evaluation / prediction: full length
        step = self.next_step()
        self._batches += 1
        batch, _tokens = self.slw.apply_dict(batch, step, self.seq_key)
        return batch


class SlwTrainerCallback(TrainerCallback):
    """Keeps an `SlwDataCollator` in step with the Trainer: numbering per epoch, pauses for evaluation."""

    def __init__(self, collator: SlwDataCollator):
        self.collator = collator
        self._in_training = False  # whether to resume training batches after an evaluation

    def on_train_begin(self, args, state, control, **kwargs):
        if args.dataloader_num_workers:
            raise ValueError(f"dataloader_num_workers={args.dataloader_num_workers}: SLW's collator needs 0 "
                             "(worker processes would each number their own batches)")
        self.collator.training = False  # eval_on_start runs before the first epoch, at full length

    def on_epoch_begin(self, args, state, control, **kwargs):
        # An epoch's last step may hold fewer batches: renumber from the Trainer's own count.
        self.collator.start_epoch(state.global_step, args.gradient_accumulation_steps)

    def on_step_end(self, args, state, control, **kwargs):
        self._pause_for_evaluation(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._pause_for_evaluation(control)

    def on_evaluate(self, args, state, control, **kwargs):
        self.collator.training = self._in_training
        self._in_training = False

    def on_train_end(self, args, state, control, **kwargs):
        self.collator.training = False

    def _pause_for_evaluation(self, control) -> None:
        # The Trainer evaluates right after this event when should_evaluate is set (the default
        # flow callback, which runs first, has decided by now); on_evaluate resumes training.
        if control.should_evaluate:
            self._in_training, self.collator.training = self.collator.training, False


def slw_for_trainer(slw: SeqLengthWarmup, collator: Callable | None = None,
                    seq_key: str = "input_ids") -> tuple[SlwDataCollator, SlwTrainerCallback]:
    """The collator (wrapping yours, default `default_data_collator`) and its callback, for
    `Trainer(data_collator=..., callbacks=[...])`."""
    wrapped = SlwDataCollator(slw, collator, seq_key)
    return wrapped, SlwTrainerCallback(wrapped)


def token_lr_lambda(slw: SeqLengthWarmup, schedule: LRSchedule, rows_per_step: int) -> Callable[[int], float]:
    """A `torch.optim.lr_scheduler.LambdaLR` multiplier with the paper's schedule: warmup over
    steps, decay over tokens. `rows_per_step`: full-length rows per optimizer step over all
    devices (per_device_train_batch_size x gradient_accumulation_steps x world size); tokens
    are counted as rows x L (truncation), `schedule.decay_tokens` in the same units.

        LambdaLR(optimizer, token_lr_lambda(slw, LRSchedule(lr=6e-4, ...), rows_per_step=64))
    """
    tokens_before: list[int] = [0]  # tokens_before[t-1]: tokens trained before step t

    warmup_end = max(schedule.warmup_steps, 1)  # as TokenClock: recorded after step max(W, 1)

    def tokens_until(step: int) -> int:
        while len(tokens_before) < step:
            t = len(tokens_before)
            tokens_before.append(tokens_before[-1] + rows_per_step * slw.length_at(t))
        return tokens_before[step - 1]

    def multiplier(scheduler_steps: int) -> float:
        step = scheduler_steps + 1  # LambdaLR counts the steps already taken; this LR is for the next
        warmup_tokens = tokens_until(warmup_end + 1) if step > warmup_end else None
        return schedule(step, tokens_until(step), warmup_tokens) / schedule.lr

    return multiplier
