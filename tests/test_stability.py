"""Instability signals and the verdict rules, on synthetic curves."""

import math

import pytest
import torch

from slwtune import metrics as M
from slwtune.errors import SpecError
from slwtune.spec import StabilitySpec, parse_spec
from slwtune.stability import LossRatioTracker, StabilityMonitor, Verdict, adam_variance_stats

T = StabilitySpec()
WINDOW = 400


def smooth_train(n=400):
    return [(s, 10.0 / (1 + 0.01 * s)) for s in range(1, n + 1)]


def smooth_val(n=400, every=25):
    return [(s, math.log(200.0 / (1 + 0.01 * s))) for s in range(every, n + 1, every)]


def with_val_ppls(ppls, every=25):
    return [((i + 1) * every, math.log(p)) for i, p in enumerate(ppls)]


def run_monitor(train, val, thresholds=T, window=WINDOW, vocab_size=None):
    """Feed whole curves to a monitor in the training loop's order: train at s, then val at s.
    Train points are (step, loss) or (step, loss, grad_norm); val points (step, val_loss)."""
    monitor = StabilityMonitor(thresholds, window, vocab_size)
    events = sorted([(p[0], 0, p) for p in train] + [(p[0], 1, p) for p in val], key=lambda e: e[:2])
    for _, kind, point in events:
        if kind == 0:
            monitor.observe_train(*point)
        else:
            monitor.observe_val(*point)
    return monitor


def verdict_of(train, val, thresholds=T, window=WINDOW) -> Verdict:
    return run_monitor(train, val, thresholds, window).verdict


# ---- the verdict over whole curves ------------------------------------------


def test_smooth_decreasing_curve_is_stable():
    v = verdict_of(smooth_train(), smooth_val(), T, WINDOW)
    assert v == Verdict("stable", "", None, False)


def blowup(train, start, factor=3.0):
    """`train` whose loss jumps to `factor` x at `start` and stays there (a real divergence)."""
    return [(s, loss * factor if s >= start else loss) for s, loss in train]


def warmup_curve(spike_at=11, spike=10.04):
    """The issue's measured warmup transient: loss from ln(2048) = 7.6 down fast, one step
    far above the minimum so far (10.04 against 6.5), then back on the curve and still falling."""
    train = [(s, 7.6 * math.exp(-0.04 * s) + 1.0) for s in range(1, 121)]
    train[spike_at - 1] = (spike_at, spike)
    return train


def test_recovered_warmup_spike_is_recorded_not_diverged():
    # today's rules: ratio 1.5+ at one step = diverged for good; the new ones ask for evidence
    train = warmup_curve()
    monitor = run_monitor(train, [], T, 60)
    assert monitor.verdict.status == M.STABLE
    assert (monitor.spike_count, monitor.max_spike_step) == (1, 11)
    assert monitor.max_spike_ratio == pytest.approx(10.04 / train[9][1])
    assert monitor.summary() == {M.SPIKE_COUNT: 1, M.SPIKE_MAX_RATIO: monitor.max_spike_ratio, M.SPIKE_STEP: 11}


def test_two_step_spike_that_recovers_is_stable():
    train = warmup_curve()
    train[11] = (12, 9.0)
    monitor = run_monitor(train, [], T, 60, vocab_size=2048)  # 10.04 and 9.0 are above ln(2048) + 1 too
    assert monitor.verdict.status == M.STABLE and monitor.spike_count == 1


def test_persistent_blowup_diverges_after_patience_steps():
    train = blowup(smooth_train(), 80)
    v = verdict_of(train, smooth_val(), T, WINDOW)
    assert (v.status, v.step) == (M.DIVERGED, 80)  # where it began
    assert v.reason.startswith(f"loss spike persisted {T.spike_patience} steps to step 84")


def test_spike_that_does_not_come_back_within_recovery_steps_diverges():
    # every other step spikes (never 5 in a row), the others stay above the level before it
    train = [(s, loss * (3.0 if s >= 80 and s % 2 == 0 else (1.4 if s >= 80 else 1.0)))
             for s, loss in smooth_train()]
    v = verdict_of(train, [], T, WINDOW)
    assert (v.status, v.step) == (M.DIVERGED, 80)
    assert "loss spike at step 80 not recovered within 25 steps" in v.reason


def test_loss_above_untrained_ceiling_diverges_only_with_a_vocab():
    train = [(s, math.log(2048) + 2.0) for s in range(1, 61)]  # no ratio rise: never a spike
    assert verdict_of(train, [], T, 60).status == M.STABLE
    v = run_monitor(train, [], T, 60, vocab_size=2048).verdict
    assert (v.status, v.step) == (M.DIVERGED, 1) and f"for {T.spike_patience} steps to step 5" in v.reason
    off = StabilitySpec(loss_ceiling_margin=1000.0)  # its largest value: off in effect
    assert run_monitor(train, [], off, 60, vocab_size=2048).verdict.status == M.STABLE


@pytest.mark.parametrize("loss, grad", [(float("nan"), 1.0), (float("inf"), 1.0), (5.0, float("nan"))])
def test_non_finite_at_step_one_diverges_at_once(loss, grad):
    v = verdict_of([(1, loss, grad)], [], T, WINDOW)
    assert (v.status, v.step, v.early) == (M.DIVERGED, 1, True)


def test_spike_within_loss_ratio_max_is_stable():
    train = smooth_train()
    train[79] = (80, train[79][1] * 1.4)
    assert verdict_of(train, smooth_val(), T, WINDOW).status == "stable"


def test_spike_within_the_windows_spread_is_not_a_spike():
    # a noisy window (1.7 / 2.4 alternating, ratios up to 1.41) makes a 1.65x step ordinary: the
    # spread judges it, as OLMo-core's rule does
    train = [(s, 2.4 if s % 2 else 1.7) for s in range(1, 41)]
    train[30] = (31, 2.8)  # ratio 1.65 over the minimum, inside mean 2.05 + 3 x 0.36
    monitor = run_monitor(train, [], T, 40)
    assert monitor.spike_count == 0 and monitor.verdict.status == M.STABLE
    assert run_monitor(train, [], StabilitySpec(spike_sigmas=0.5), 40).spike_count == 1


def test_spike_before_min_steps_is_not_counted():
    train = smooth_train()
    train[9] = (10, train[9][1] * 3)
    assert run_monitor(train, [], StabilitySpec(min_steps=10), WINDOW).spike_count == 0
    assert run_monitor(train, [], StabilitySpec(min_steps=9), WINDOW).spike_count == 1


def test_nan_train_loss_diverges():
    train = smooth_train()
    train[119] = (120, float("nan"))
    v = verdict_of(train, smooth_val(), T, WINDOW)
    assert (v.status, v.step) == ("diverged", 120)
    assert v.reason == "non-finite training loss (nan) at step 120"


def test_inf_grad_norm_diverges():
    train = [(s, loss, 1.0) for s, loss in smooth_train()]
    train[6] = (7, train[6][1], float("inf"))
    v = verdict_of(train, [], T, WINDOW)
    assert (v.status, v.step) == ("diverged", 7) and "gradient norm (inf)" in v.reason


def test_nan_val_loss_diverges():
    val = smooth_val()
    val[3] = (100, float("nan"))
    v = verdict_of(smooth_train(), val, T, WINDOW)
    assert (v.status, v.step) == ("diverged", 100) and "non-finite validation" in v.reason


def test_val_ppl_rise_that_persists_fluctuates():
    val = with_val_ppls([50.0, 40.0, 38.4, 41.2, 41.0, 37.0])  # 41.2 at step 100 is 7.3% above 38.4, and stays
    v = verdict_of(smooth_train(), val, T, WINDOW)
    assert (v.status, v.step) == ("fluctuating", 100)
    assert v.reason == ("val ppl 41.2 at step 100 is 7.3% above the best earlier 38.4 (tolerance 5%); "
                        "still risen at step 125 (2 evaluations)")


def test_one_off_val_blip_that_recovers_is_stable():
    # today's rules: one evaluation 7.3% above the best = fluctuating; now it must persist
    val = with_val_ppls([50.0, 40.0, 38.4, 41.2, 37.0])
    assert verdict_of(smooth_train(), val, T, WINDOW).status == "stable"


def test_val_rise_within_the_evaluations_noise_is_not_a_rise():
    # +20% in ppl = +0.18 nats, but each evaluation's standard error is 0.1: 1.3 combined SEs < 2
    monitor = StabilityMonitor(T, WINDOW)
    for step, ppl in ((25, 40.0), (50, 48.0), (75, 48.0)):
        monitor.observe_val(step, math.log(ppl), se=0.1)
    assert monitor.verdict.status == M.STABLE
    precise = StabilityMonitor(T, WINDOW)
    for step, ppl in ((25, 40.0), (50, 48.0), (75, 48.0)):
        precise.observe_val(step, math.log(ppl), se=0.01)
    v = precise.verdict
    assert (v.status, v.step) == (M.FLUCTUATING, 50) and "standard errors" in v.reason


def test_val_rise_at_the_runs_last_evaluation_fluctuates():
    monitor = StabilityMonitor(T, WINDOW)
    monitor.observe_val(25, math.log(40.0))
    assert monitor.observe_val(50, math.log(45.0)).status == M.STABLE
    monitor = StabilityMonitor(T, WINDOW)
    monitor.observe_val(25, math.log(40.0))
    v = monitor.observe_val(50, math.log(45.0), last=True)
    assert (v.status, v.step) == (M.FLUCTUATING, 50) and v.reason.endswith("at the run's last evaluation")


def test_val_ppl_bump_within_tolerance_is_stable():
    val = with_val_ppls([50.0, 40.0, 38.4, 40.0, 40.0, 37.0])  # +4.2% twice
    assert verdict_of(smooth_train(), val, T, WINDOW).status == "stable"


def test_val_perplexity_overflow_diverges():
    v = verdict_of(smooth_train(), [(25, math.log(50.0)), (50, 800.0)])  # exp(800) overflows a float
    assert (v.status, v.step) == ("diverged", 50) and "non-finite validation perplexity (inf)" in v.reason


def test_divergence_wins_over_earlier_fluctuation():
    train = smooth_train()
    train[299] = (300, float("inf"))
    val = with_val_ppls([50.0, 40.0, 45.0])
    v = verdict_of(train, val, T, WINDOW)
    assert (v.status, v.step) == ("diverged", 300)


@pytest.mark.parametrize("step, early", [(100, True), (101, False)])
def test_early_flag_is_the_first_quarter_of_the_window(step, early):
    train = smooth_train()
    train[step - 1] = (step, float("nan"))
    assert verdict_of(train, [], T, WINDOW).early is early


# ---- monitor -----------------------------------------------------------------


CURVES = {  # name: (train, val, expected (status, step))
    "smooth": (smooth_train(), smooth_val(), (M.STABLE, None)),
    "one_spike": ([(s, l * (3 if s == 80 else 1)) for s, l in smooth_train()], smooth_val(), (M.STABLE, None)),
    "spike": (blowup(smooth_train(), 80), smooth_val(), (M.DIVERGED, 80)),
    "nan_then_spike": ([(s, float("nan") if s == 200 else l) for s, l in blowup(smooth_train(), 250)],
                       smooth_val(), (M.DIVERGED, 200)),
    "one_off_blips": (smooth_train(), with_val_ppls([50, 40, 45, 39, 47, 30]), (M.STABLE, None)),
    "fluctuating": (smooth_train(), with_val_ppls([50, 40, 45, 46, 39, 30]), (M.FLUCTUATING, 75)),
    "fluct_then_nan_val": (smooth_train(), with_val_ppls([50, 40, 45, float("nan")]), (M.DIVERGED, 100)),
    # at one step the train point is seen first: its reason wins over the val one
    "same_step_train_and_val": ([(s, float("nan") if s == 100 else l) for s, l in smooth_train()],
                                with_val_ppls([50, 40, 30, float("inf")]), (M.DIVERGED, 100)),
}


@pytest.mark.parametrize("name", sorted(CURVES))
def test_monitor_on_whole_curves(name):
    train, val, expected = CURVES[name]
    v = verdict_of(train, val)
    assert (v.status, v.step) == expected


def test_same_step_train_problem_is_the_reason():
    train, val, _ = CURVES["same_step_train_and_val"]
    assert verdict_of(train, val).reason == "non-finite training loss (nan) at step 100"


def test_monitor_diverged_is_final_and_keeps_first_reason():
    monitor = StabilityMonitor(T, WINDOW)
    monitor.observe_train(1, 5.0)
    first = monitor.observe_train(2, float("nan"))
    assert monitor.observe_train(3, 100.0) == first
    assert monitor.observe_val(3, 1.0) == first
    assert first.reason == "non-finite training loss (nan) at step 2"


def test_monitor_fluctuating_can_turn_diverged():
    monitor = StabilityMonitor(T, WINDOW)
    monitor.observe_val(25, math.log(40.0))
    assert monitor.observe_val(50, math.log(50.0)).status == "stable"  # one risen evaluation: not yet
    assert monitor.observe_val(75, math.log(60.0)).status == "fluctuating"
    assert monitor.observe_val(100, math.log(70.0)).reason.startswith("val ppl 50.0 at step 50")  # first kept
    assert monitor.observe_train(80, float("inf")).status == "diverged"


def test_monitor_state_round_trip_resumes_exactly():
    train, val, _ = CURVES["fluctuating"]
    whole = run_monitor(train, val)
    first = run_monitor([p for p in train if p[0] <= 60], [p for p in val if p[0] <= 60])
    resumed = StabilityMonitor(T, WINDOW)
    resumed.load_state_dict(first.state_dict())
    for s, loss in train[60:]:
        resumed.observe_train(s, loss)
        for vs, vl in val:
            if vs == s:
                resumed.observe_val(vs, vl)
    assert resumed.state_dict() == whole.state_dict()


def test_monitor_summaries():
    monitor = run_monitor(*CURVES["one_spike"][:2])
    train = dict(CURVES["one_spike"][0])
    assert monitor.max_loss_ratio == pytest.approx(train[80] / train[79])
    assert (monitor.spike_count, monitor.max_spike_step) == (1, 80)
    assert monitor.best_val_ppl == pytest.approx(math.exp(smooth_val()[-1][1]))


def test_monitor_resumes_mid_spike_and_mid_rise():
    train = blowup(smooth_train(), 80)
    val = with_val_ppls([50, 40, 45, 46])
    whole = run_monitor(train, val)
    first = run_monitor([p for p in train if p[0] <= 82], [p for p in val if p[0] <= 82])
    assert first.verdict.status == M.STABLE and first.run_length == 3 and first.rise is not None
    resumed = StabilityMonitor(T, WINDOW)
    resumed.load_state_dict(first.state_dict())
    for s, loss in train[82:]:
        resumed.observe_train(s, loss)
        for vs, vl in val:
            if vs == s:
                resumed.observe_val(vs, vl)
    assert resumed.verdict == whole.verdict and resumed.state_dict() == whole.state_dict()


def test_monitor_loads_a_state_from_before_the_spike_rules():
    old = {"ratios": {"min_loss": 2.0, "max_ratio": 1.2}, "verdict": Verdict().to_dict(), "last_loss_ratio": 1.0,
           "max_loss_ratio": 1.2, "best_val_ppl": 30.0}
    monitor = StabilityMonitor(T, WINDOW)
    monitor.load_state_dict(old)
    assert monitor.best_val_loss == pytest.approx(math.log(30.0)) and monitor.spike_count == 0


def test_monitor_load_empty_state_is_fresh():
    monitor = StabilityMonitor(T, WINDOW)
    monitor.load_state_dict({})
    assert monitor.verdict == Verdict()


# ---- thresholds, verdict -----------------------------------------------------


@pytest.mark.parametrize("field, value", [("loss_ratio_max", 1.0), ("ppl_rise_tolerance", -0.1),
                                          ("min_steps", -1), ("early_fraction", 0.0),
                                          ("early_fraction", 1.5), ("loss_ratio_max", float("nan")),
                                          ("spike_window", 1), ("spike_sigmas", -1.0), ("spike_patience", 0),
                                          ("spike_recovery_steps", 0), ("loss_ceiling_margin", -0.5),
                                          ("val_se_sigmas", -0.1), ("fluctuation_patience", 0),
                                          ("spike_sigmas", float("inf"))])
def test_bad_threshold_is_rejected_in_the_spec_with_the_value(field, value):
    # the thresholds are the spec's tuning.stability: checked there, once
    with pytest.raises(SpecError, match=f"tuning.stability.{field}={value!r}") as err:
        parse_spec({"tuning": {"stability": {field: value}}})
    assert [p["loc"] for p in err.value.problems] == [f"tuning.stability.{field}"]


def test_monitor_uses_the_spec_thresholds():
    stability = parse_spec({"tuning": {"stability": {"loss_ratio_max": 3.5}}}).tuning.stability
    train = blowup(smooth_train(), 80)
    assert verdict_of(train, [], stability).status == M.STABLE
    assert verdict_of(train, []).status == M.DIVERGED


def test_window_steps_must_be_positive():
    with pytest.raises(SpecError):
        StabilityMonitor(T, 0)


def test_verdict_to_dict_and_bad_status():
    assert Verdict("diverged", "x", 3, True).to_dict() == {"status": "diverged", "reason": "x", "step": 3,
                                                          "early": True}
    with pytest.raises(ValueError):
        Verdict("exploded")


# ---- signals -----------------------------------------------------------------


def test_loss_ratio_is_current_over_min_so_far():
    tracker = LossRatioTracker()
    got = [tracker.update(x) for x in (4.0, 2.0, 3.0, float("nan"), 1.0, 1.5)]
    assert got[:3] == [1.0, 1.0, 1.5] and got[3] == math.inf and got[4:] == [1.0, 1.5]
    assert tracker.min_loss == 1.0 and tracker.max_ratio == math.inf


def test_loss_ratio_tracker_state_round_trip():
    a = LossRatioTracker()
    for x in (4.0, 2.0, 3.0):
        a.update(x)
    b = LossRatioTracker()
    b.load_state_dict(a.state_dict())
    assert b.update(2.5) == a.update(2.5) == 1.25
    assert b.state_dict() == a.state_dict()


def tiny_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def test_adam_variance_stats_zero_before_first_step():
    _, opt = tiny_optimizer()
    vmax, vl1 = adam_variance_stats(opt)
    assert vmax.item() == 0.0 and vl1.item() == 0.0


def test_adam_variance_stats_match_direct_computation():
    model, opt = tiny_optimizer()
    model(torch.randn(5, 4)).pow(2).sum().backward()
    opt.step()
    vmax, vl1 = adam_variance_stats(opt)
    states = [opt.state[p]["exp_avg_sq"] for p in model.parameters()]
    assert vmax.item() == pytest.approx(max(s.max().item() for s in states))
    assert vl1.item() == pytest.approx(sum(s.abs().sum().item() for s in states), rel=1e-6)
    # after one step exp_avg_sq = (1 - beta2) * grad^2
    assert vl1.item() == pytest.approx(0.001 * sum(p.grad.pow(2).sum().item() for p in model.parameters()),
                                       rel=1e-5)


def test_adam_variance_stats_are_device_tensors_without_host_sync():
    model, opt = tiny_optimizer()
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    for t in adam_variance_stats(opt):
        assert isinstance(t, torch.Tensor) and t.ndim == 0 and t.dtype == torch.float32
        assert t.device == next(model.parameters()).device


def test_the_rules_import_no_torch():
    import subprocess
    import sys

    code = "import sys, slwtune.stability; assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
