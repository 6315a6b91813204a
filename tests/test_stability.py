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


def run_monitor(train, val, thresholds=T, window=WINDOW):
    """Feed whole curves to a monitor in the training loop's order: train at s, then val at s.
    Train points are (step, loss) or (step, loss, grad_norm); val points (step, val_loss)."""
    monitor = StabilityMonitor(thresholds, window)
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


def test_single_train_spike_diverges_with_its_step():
    train = smooth_train()
    train[79] = (80, train[78][1] * 2.31)  # 2.31 x the minimum so far (step 79's loss)
    v = verdict_of(train, smooth_val(), T, WINDOW)
    assert v.status == "diverged" and v.step == 80
    assert "step 80" in v.reason and "2.31" in v.reason and "1.5" in v.reason


def test_spike_within_loss_ratio_max_is_stable():
    train = smooth_train()
    train[79] = (80, train[79][1] * 1.4)
    assert verdict_of(train, smooth_val(), T, WINDOW).status == "stable"


def test_spike_before_min_steps_is_ignored():
    train = smooth_train()
    train[9] = (10, train[9][1] * 3)
    assert verdict_of(train, [], StabilitySpec(min_steps=10), WINDOW).status == "stable"
    assert verdict_of(train, [], StabilitySpec(min_steps=9), WINDOW).status == "diverged"


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


def test_val_ppl_bump_beyond_tolerance_fluctuates():
    val = with_val_ppls([50.0, 40.0, 38.4, 41.2, 37.0])  # 41.2 at step 100 is 7.3% above 38.4
    v = verdict_of(smooth_train(), val, T, WINDOW)
    assert (v.status, v.step) == ("fluctuating", 100)
    assert v.reason == "val ppl 41.2 at step 100 is 7.3% above the best earlier 38.4 (tolerance 5%)"


def test_val_ppl_bump_within_tolerance_is_stable():
    val = with_val_ppls([50.0, 40.0, 38.4, 40.0, 37.0])  # +4.2%
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
    "spike": ([(s, l * (3 if s == 80 else 1)) for s, l in smooth_train()], smooth_val(), (M.DIVERGED, 80)),
    "nan_then_spike": ([(s, float("nan") if s == 200 else l * (3 if s == 250 else 1))
                        for s, l in smooth_train()], smooth_val(), (M.DIVERGED, 200)),
    "fluctuating": (smooth_train(), with_val_ppls([50, 40, 45, 39, 47, 30]), (M.FLUCTUATING, 75)),
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
    assert monitor.observe_val(50, math.log(50.0)).status == "fluctuating"
    assert monitor.observe_val(75, math.log(60.0)).reason.startswith("val ppl 50.0 at step 50")  # first kept
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
    monitor = run_monitor(*CURVES["spike"][:2])
    train = dict(CURVES["spike"][0])
    assert monitor.max_loss_ratio == pytest.approx(train[80] / train[79])
    assert monitor.best_val_ppl == pytest.approx(math.exp(smooth_val()[-1][1]))


def test_monitor_load_empty_state_is_fresh():
    monitor = StabilityMonitor(T, WINDOW)
    monitor.load_state_dict({})
    assert monitor.verdict == Verdict()


# ---- thresholds, verdict -----------------------------------------------------


@pytest.mark.parametrize("field, value", [("loss_ratio_max", 1.0), ("ppl_rise_tolerance", -0.1),
                                          ("min_steps", -1), ("early_fraction", 0.0),
                                          ("early_fraction", 1.5), ("loss_ratio_max", float("nan"))])
def test_bad_threshold_is_rejected_in_the_spec_with_the_value(field, value):
    # the thresholds are the spec's tuning.stability: checked there, once
    with pytest.raises(SpecError, match=f"tuning.stability.{field}={value!r}") as err:
        parse_spec({"tuning": {"stability": {field: value}}})
    assert [p["loc"] for p in err.value.problems] == [f"tuning.stability.{field}"]


def test_monitor_uses_the_spec_thresholds():
    stability = parse_spec({"tuning": {"stability": {"loss_ratio_max": 3.5}}}).tuning.stability
    train = smooth_train()
    train[79] = (80, train[78][1] * 3.0)
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
