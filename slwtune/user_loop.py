"""Tune your own training function: `train_fn(ctx)` trains its own model on its own data and
reports to a `TrainContext`; slwtune runs it as every probe and as the full run on Ray Train,
judges its reports with the verdict rules of its own loop (`slwtune.stability`), stops probes
at their verdict, chooses the knobs and logs the same MLflow runs and metric names.

    def train(ctx):                          # module level, in a module Ray's workers can import
        model, opt, step, clock = ..., ..., 0, TokenClock(ctx.spec.optim.lr_warmup_steps)
        if ctx.resume_from:                  # a restarted run, or the full run continuing a probe
            step = load(ctx.resume_from, model, opt, clock)
        while True:
            step += 1
            lr = ctx.lr_schedule(step, clock.tokens, clock.warmup_tokens)
            x, y = get_batch()                                   # (B, e)
            if ctx.slw:                                          # None with SLW off (control probe, baseline)
                x, y, _ = ctx.slw.apply((x, y), step)            # (B, L)
            loss = ...; opt.step(); clock.advance(step, x.numel() * ctx.world_size)
            val = evaluate(model) if ctx.eval_due(step, clock.tokens) else None      # at full length
            ckpt = save(model, opt, step, clock) if ctx.checkpoint_due(step, clock.tokens) else None
            if ctx.report(step=step, tokens=clock.tokens, loss=loss.item(), val_loss=val,
                          grad_norm=gn, lr=lr, checkpoint_dir=ckpt):
                break                        # the verdict, the probe window or the token budget

    slwtune.tune_function(train, spec, out_dir="out")   # or model.entrypoint: "mypkg.train:train"

The contract of `report`, so every rank agrees and no Ray barrier hangs:
- call it on every rank at the same steps (every step is fine); `tokens` counts the tokens trained
  so far by all ranks together; losses and grad norms are averaged over ranks before judging;
- pass `val_loss` (a full-length validation loss) at the same steps on every rank: those steps,
  and the step that ends the run, are the reports Ray Train and Tune see; the others only log;
- pass `checkpoint_dir` (rank 0; a folder you wrote) only with such a report (`checkpoint_due`);
  slwtune adds its verdict state to it (`STATE_FILE`) and Ray keeps a copy, so the folder is yours
  to delete after. The full run continues from the winning probe's checkpoint, so write one at
  the end of the window.
- stop when it returns True; a report after that raises `StopTraining`, which ends the run cleanly.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from slwtune import metrics as M
from slwtune.checkpoint import TrainState, local_checkpoint_dir, seed_everything
from slwtune.errors import SlwtuneError, SpecError
from slwtune.schedule import LRSchedule, lr_schedule_from_spec
from slwtune.slw import SeqLengthWarmup
from slwtune.spec import JobSpec
from slwtune.stability import StabilityMonitor
from slwtune.tracking import RunLogger
from slwtune.train_loop import RunOptions, adam_stats, all_reduce_sum_, print_progress, report_row, should_stop

if TYPE_CHECKING:
    from slwtune.sessions import Session

__all__ = ["TrainContext", "Knobs", "StopTraining", "run_user_function", "load_entrypoint", "entrypoint_of",
           "STATE_FILE"]

STATE_FILE = "slwtune_state.json"  # the verdict so far, in each checkpoint a user loop reports


class StopTraining(SlwtuneError):
    """`TrainContext.report` was called after it had said to stop; the run ends there, cleanly."""


@dataclass(frozen=True)
class Knobs:
    """The SLW knobs of this run: a probe's candidate, the chosen pair, or SLW off (`enabled` False)."""

    start_length: int
    duration_steps: int
    enabled: bool


class TrainContext:
    """What a user training function gets: the knobs, the window, the budget, and `report`.

    spec: the job spec of this run (`spec.slw` has the knobs; `spec.data`, `spec.optim` are there
      for a loop that wants them). slw: a `SeqLengthWarmup` with this run's knobs, or None when SLW
      is off. max_steps: the probe window (None in the full run). train_tokens: the token budget.
    rank, world_size, device: this Ray Train worker. resume_from: a checkpoint folder to load (Ray's
      own after a restart, else the winning probe's for the full run) or None.
    Before `train_fn` runs, torch, numpy and random are seeded with `spec.seed` and, on CPU, torch
    uses `resources.cpus_per_worker` threads (probes share the machine).
    """

    def __init__(self, spec: JobSpec, options: RunOptions, session: Session):
        self.spec, self.options, self._session = spec, options, session
        self.rank, self.world_size, self.device = session.rank, session.world_size, session.device
        self.knobs = Knobs(spec.slw.start_length, spec.slw.duration_steps, spec.slw.enabled)
        self.slw: SeqLengthWarmup | None = SeqLengthWarmup.from_spec(spec) if spec.slw.enabled else None
        self.lr_schedule: LRSchedule = lr_schedule_from_spec(spec)
        self.max_steps: int | None = options.max_steps
        self.train_tokens: int = spec.budget.train_tokens
        self.monitor = StabilityMonitor(spec.tuning.stability, options.max_steps or spec.probe_steps())
        # Ray's own checkpoint (a restarted run) wins over an init checkpoint (a reused probe)
        self.resume_from: str | None = session.checkpoint_dir() or local_checkpoint_dir(options.init_checkpoint)
        if self.resume_from:
            self.monitor.load_state_dict(read_state(self.resume_from).monitor)
        self.should_stop = False
        self.last_report: dict[str, Any] = {}  # the last report sent to the session
        self._row: dict[str, float] | None = None  # the last step's metrics, for a closing report
        self._state = TrainState()
        self._first: tuple[float, int] | None = None  # (time, tokens) of the first report: the rate's origin
        self._start = time.time()
        self._logger = RunLogger(options.mlflow_uri if self.rank == 0 else None, options.mlflow_run_id,
                                 spill_dir=options.spill_dir)

    # ---- when to evaluate and checkpoint -------------------------------------------------

    @property
    def is_probe(self) -> bool:
        return self.max_steps is not None

    def length_at(self, step: int) -> int:
        """The sequence length of optimizer step `step`: the warmup's, or full length with SLW off."""
        return self.slw.length_at(step) if self.slw else self.spec.slw.full_length

    def is_last_step(self, step: int, tokens: int) -> bool:
        """The probe window or the token budget ends at this step (a verdict may end it sooner)."""
        return tokens >= self.train_tokens or (self.max_steps is not None and step >= self.max_steps)

    def eval_due(self, step: int, tokens: int) -> bool:
        """Evaluate at this step: every `run.eval_every_steps`, and at the last step."""
        return step % self.spec.run.eval_every_steps == 0 or self.is_last_step(step, tokens)

    def checkpoint_due(self, step: int, tokens: int) -> bool:
        """Write a checkpoint at this step (rank 0): an evaluation step that is the last one or
        falls on `run.checkpoint_every_steps`."""
        every = step % self.spec.run.checkpoint_every_steps == 0
        return self.rank == 0 and self.eval_due(step, tokens) and (every or self.is_last_step(step, tokens))

    # ---- reports -------------------------------------------------------------------------

    def report(self, step: int, tokens: int, loss: float, val_loss: float | None = None,
               grad_norm: float | None = None, *, lr: float | None = None, seqlen: int | None = None,
               optimizer: torch.optim.Optimizer | None = None, checkpoint_dir: str | None = None) -> bool:
        """Record optimizer step `step` (from 1) with `tokens` trained so far (all ranks); True: stop now.

        loss: this step's training loss; val_loss: a full-length validation loss (evaluation steps);
        grad_norm: before clipping; lr and seqlen: logged (seqlen defaults to `length_at(step)`);
        optimizer: an Adam-family optimizer whose `exp_avg_sq` max and L1 (the paper's instability
        signal) are logged every `run.stats_every_steps`.
        """
        if self.should_stop:
            raise StopTraining(f"ctx.report at step {step} after the run was told to stop at step "
                               f"{self._state.step} (stop when ctx.report returns True)")
        if step <= self._state.step or tokens < self._state.tokens:
            raise ValueError(f"ctx.report(step={step}, tokens={tokens}): steps must increase and tokens not "
                             f"decrease (the previous report was step={self._state.step}, "
                             f"tokens={self._state.tokens})")
        loss, val_loss, grad_norm = self._reduce(step, loss, val_loss, grad_norm)
        verdict = self.monitor.observe_train(step, loss, grad_norm)
        if val_loss is not None:
            verdict = self.monitor.observe_val(step, val_loss, last=self.is_last_step(step, tokens))
        self._state = TrainState(step=step, tokens=tokens, monitor=self.monitor.state_dict())
        self.should_stop = should_stop(verdict, self.options) or self.is_last_step(step, tokens)
        self._row = self._metrics(step, tokens, loss, val_loss, grad_norm, lr, seqlen)
        if optimizer is not None and (step % self.spec.run.stats_every_steps == 0 or step == 1):
            self._row[M.ADAM_VAR_MAX], self._row[M.ADAM_VAR_L1] = adam_stats(optimizer)
        if val_loss is None and not self.should_stop:
            if checkpoint_dir:
                raise ValueError(f"ctx.report(step={step}, checkpoint_dir=...): a checkpoint goes with a report "
                                 "to Ray, which is sent at evaluation steps (val_loss given) and at the last "
                                 "step; write it when ctx.checkpoint_due(step, tokens) says so")
            if step % self.spec.run.log_every_steps == 0 or step == 1:
                self._logger.log(self._row, step)
            return False
        self._send(checkpoint_dir)
        return self.should_stop

    def finish(self) -> dict:
        """After `train_fn` returned: a function that ended on its own gets a closing report (done)."""
        if self._row is None:
            raise SlwtuneError(f"model.entrypoint={self.spec.model.entrypoint!r}: the training function "
                               "returned without calling ctx.report, so there is nothing to judge")
        if not self.last_report.get(M.DONE):
            self.should_stop = True
            self._send(None)
        return self.last_report

    def close_after_error(self) -> None:
        """The function raised: send the metrics MLflow has not taken yet (the run is tagged failed elsewhere)."""
        self._logger.flush()

    def _reduce(self, step: int, loss, val_loss, grad_norm) -> tuple[float, float | None, float | None]:
        """Average the signals over ranks (one collective), so every rank reaches the same verdict."""
        if self.world_size == 1:
            return (float(loss), None if val_loss is None else float(val_loss),
                    None if grad_norm is None else float(grad_norm))
        given = [x is not None for x in (val_loss, grad_norm)]
        t = torch.tensor([float(loss), float(val_loss or 0.0), float(grad_norm or 0.0), *map(float, given)],
                         dtype=torch.float64, device=self.device)
        loss_sum, val_sum, grad_sum, n_val, n_grad = all_reduce_sum_(t, self.world_size).tolist()
        for name, n in (("val_loss", n_val), ("grad_norm", n_grad)):
            if 0 < n < self.world_size:
                raise SlwtuneError(f"ctx.report(step={step}): {name} given on {int(n)} of {self.world_size} "
                                   "ranks; pass it on every rank at the same steps")
        w = self.world_size
        return loss_sum / w, (val_sum / w if n_val else None), (grad_sum / w if n_grad else None)

    def _metrics(self, step: int, tokens: int, loss: float, val_loss: float | None, grad_norm: float | None,
                 lr: float | None, seqlen: int | None) -> dict[str, float]:
        """One step's metrics under the names slwtune's own loop logs."""
        row = {M.TRAIN_LOSS: loss, M.TRAIN_LOSS_RATIO: self.monitor.last_loss_ratio,
               M.TRAIN_SEQLEN: seqlen if seqlen is not None else self.length_at(step), M.TRAIN_TOKENS: tokens}
        if lr is not None:
            row[M.TRAIN_LR] = lr
        if grad_norm is not None:
            row[M.TRAIN_GRAD_NORM] = grad_norm
        if val_loss is not None:
            row[M.VAL_LOSS], row[M.VAL_PPL] = val_loss, M.perplexity(val_loss)
        now = time.perf_counter()
        if self._first is None:
            self._first = (now, tokens)  # a resumed run starts past 0 tokens: measure from here
        elif now > self._first[0]:
            row[M.TOKENS_PER_S] = (tokens - self._first[1]) / (now - self._first[0])
        return row

    def _send(self, checkpoint_dir: str | None) -> None:
        """A report to Ray (and Tune): the same keys as slwtune's loop, plus the checkpoint."""
        verdict, state, done = self.monitor.verdict, self._state, self.should_stop
        last = report_row(self._row, state, verdict, self.monitor, done, time.time() - self._start)
        if checkpoint_dir:
            write_state(checkpoint_dir, state)
        self._logger.log(self._row, state.step)
        if done:  # tag before the report: a Tune stopper may end this process right after it
            self._logger.set_tags({M.TAG_VERDICT: verdict.status, M.TAG_REASON: verdict.reason or "-"})
        self._logger.flush()
        if done:  # the last report says how many metrics MLflow never took (kept in spill_dir)
            last[M.MLFLOW_UNSENT] = self._logger.close()
        self._session.report(last, checkpoint_dir)
        self.last_report = last
        if self.rank == 0 and self.options.progress:
            line = print_progress(state, self.spec, int(self._row[M.TRAIN_SEQLEN]), self._row[M.TRAIN_LOSS],
                                  verdict, time.time() - self._start)
            if self.options.mlflow_uri and self.options.progress_run_id:
                self._logger.set_tags({M.TAG_PROGRESS: line}, run_id=self.options.progress_run_id)


# ---- the verdict state inside a user checkpoint --------------------------------------------


def write_state(checkpoint_dir: str, state: TrainState) -> None:
    """Put the counters and the verdict so far into a checkpoint folder (`STATE_FILE`)."""
    Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
    (Path(checkpoint_dir) / STATE_FILE).write_text(json.dumps(
        {"step": state.step, "tokens": state.tokens, "monitor": state.monitor}))


def read_state(checkpoint_dir: str) -> TrainState:
    """The counters and verdict a checkpoint was written with (empty for a folder without `STATE_FILE`)."""
    path = Path(checkpoint_dir) / STATE_FILE
    if not path.is_file():
        return TrainState()
    data = json.loads(path.read_text())
    return TrainState(step=int(data["step"]), tokens=int(data["tokens"]), monitor=data["monitor"])


# ---- entrypoints ------------------------------------------------------------------------------


def _entrypoint_error(entrypoint: str, msg: str) -> SpecError:
    return SpecError([{"loc": "model.entrypoint", "value": entrypoint, "msg": msg}])


def load_entrypoint(entrypoint: str) -> Callable:
    """The function `package.module:function` names; SpecError naming model.entrypoint when it cannot be had."""
    module_name, _, attr = entrypoint.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module itself raised while importing
        raise _entrypoint_error(entrypoint, f"cannot import {module_name!r} ({type(exc).__name__}: {exc}); it must "
                                "be importable where Ray runs the workers (install it, or put its folder on "
                                "PYTHONPATH)") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise _entrypoint_error(entrypoint, f"module {module_name!r} has no {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise _entrypoint_error(entrypoint, f"{attr!r} is a {type(target).__name__}, not a function")
    return target


def entrypoint_of(train_fn: Callable) -> str:
    """`module:qualname` of a module-level function, checked to import back to the same object."""
    module, qualname = getattr(train_fn, "__module__", None), getattr(train_fn, "__qualname__", None)
    if not callable(train_fn) or not module or not qualname:
        raise SlwtuneError(f"train_fn={train_fn!r} must be a function defined at module level")
    if module == "__main__":
        raise SlwtuneError(f"train_fn={qualname} is defined in __main__ (the script being run); Ray workers "
                           "import it by name: define it in a module (e.g. mypkg/train.py) and import it")
    if "<" in qualname:  # <locals>, <lambda>
        raise SlwtuneError(f"train_fn={module}.{qualname} is not a module-level function; Ray workers import "
                           "it by name, so define it at the top level of its module")
    entrypoint = f"{module}:{qualname}"
    if load_entrypoint(entrypoint) is not train_fn:
        raise SlwtuneError(f"train_fn: {entrypoint} imports to another object than the function given "
                           "(was it redefined or decorated?)")
    return entrypoint


def run_user_function(spec: JobSpec, options: RunOptions, session: Session) -> dict:
    """Run the spec's entrypoint on this worker with a `TrainContext`; returns the last report."""
    train_fn = load_entrypoint(spec.model.entrypoint)
    seed_everything(spec.seed)  # same init on every rank unless the function seeds otherwise
    if session.device.type == "cpu":
        torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    ctx = TrainContext(spec, options, session)
    try:
        train_fn(ctx)
    except StopTraining:
        pass  # it reported after being told to stop: the stopping report was already sent
    except BaseException:
        ctx.close_after_error()
        raise
    return ctx.finish()
