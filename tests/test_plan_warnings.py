"""`slwtune plan` warns when tuning costs more than the presets' target share, and names the knob."""

import re

from slwtune.cli import main
from slwtune.plan import TUNING_SHARE_TARGET, make_plan, plan_warnings
from slwtune.spec import load_spec


def test_costly_tuning_warns_with_the_knob_and_its_effect():
    spec = load_spec("shakespeare-tiny")
    plan = make_plan(spec)
    assert plan["tuning_fraction"] > TUNING_SHARE_TARGET
    (warning,) = plan_warnings(spec, plan)
    assert f"{plan['tuning_fraction']:.0%}" in warning
    m = re.search(r"--set (\S+)=(\S+) .*?, to (\d+)%", warning)
    assert m, warning
    cheaper = make_plan(load_spec("shakespeare-tiny", [f"{m.group(1)}={m.group(2)}"]))
    assert round(cheaper["tuning_fraction"] * 100) == int(m.group(3))
    assert cheaper["tuning_fraction"] < plan["tuning_fraction"]


def test_tuning_within_the_target_does_not_warn():
    spec = load_spec("shakespeare-tiny", ["budget.train_tokens=1000000000"])
    plan = make_plan(spec)
    assert plan["tuning_fraction"] <= TUNING_SHARE_TARGET
    assert plan_warnings(spec, plan) == []


def test_plan_command_prints_the_warning(capsys):
    assert main(["plan", "shakespeare-tiny"]) == 0
    out = capsys.readouterr().out
    assert "warning" in out and "tuning.probe_warmup_multiples" in out
    assert main(["plan", "shakespeare-tiny", "--set", "budget.train_tokens=1000000000"]) == 0
    assert "warning" not in capsys.readouterr().out
