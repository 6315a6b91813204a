"""`slwtune export-config JOB_DIR`: a finished job's knobs as a DeepSpeed curriculum and Megatron flags."""

import json

import pytest

from slwtune import metrics as M
from slwtune.cli import main
from slwtune.export import curriculum_config, megatron_args
from slwtune.job import SPEC_FILE
from slwtune.pacing import make_pacing
from slwtune.spec import load_spec


def finished_job(tmp_path, chosen, overrides=(), full_run=None):
    spec = load_spec("gpt2-117m", list(overrides))
    (tmp_path / SPEC_FILE).write_text(spec.to_yaml())
    (tmp_path / "report.json").write_text(json.dumps({"outcome": M.OUTCOME_DONE, "chosen": chosen,
                                                      "full_run": full_run or {"slw_enabled": True}}))
    return spec


def deepspeed_fixed_linear(t, s, e, total, step):
    """DeepSpeed's fixed_linear (its curriculum_scheduler, slw-spec section 2), written out here."""
    length = int((t / total) * (e - s) + s)
    length -= length % step
    return min(length, e)


def test_mapping_of_the_chosen_knobs(tmp_path):
    spec = finished_job(tmp_path, {"start_length": 16, "duration_steps": 8660})
    cl = curriculum_config(spec, {"start_length": 16, "duration_steps": 8660})["curriculum_learning"]
    assert cl == {"enabled": True, "curriculum_type": "seqlen", "min_difficulty": 16, "max_difficulty": 1024,
                  "schedule_type": "fixed_linear",
                  "schedule_config": {"total_curriculum_step": 8660, "difficulty_step": 8}}
    # the lengths DeepSpeed would train on are slwtune's, step for step
    ours = make_pacing(spec.with_slw(16, 8660).slw)
    assert all(ours(t) == deepspeed_fixed_linear(t, 16, 1024, 8660, 8) for t in range(1, 9000, 7))
    assert megatron_args(spec) == ["--train-tokens 157000000000", "--lr-decay-tokens 157000000000",
                                   "--lr-warmup-iters 3000"]


def test_cli_prints_it_for_a_finished_job(tmp_path, capsys):
    finished_job(tmp_path, {"start_length": 8, "duration_steps": 8660})
    assert main(["export-config", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["deepspeed"]["curriculum_learning"]["schedule_config"]["total_curriculum_step"] == 8660
    assert main(["export-config", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert '"min_difficulty": 8' in text and "--train-tokens 157000000000" in text


def test_a_job_that_chose_nothing_has_nothing_to_export(tmp_path, capsys):
    finished_job(tmp_path, None)
    assert main(["export-config", str(tmp_path)]) == M.EXIT_NONE_STABLE
    assert "chose no SLW knobs" in capsys.readouterr().err
    assert main(["export-config", str(tmp_path / "nope")]) == M.EXIT_INVALID
    assert "no readable report.json" in capsys.readouterr().err


@pytest.mark.parametrize("pacing,extra,key", [("fixed_root", ["slw.root_degree=3"], "root_degree"),
                                                ("fixed_discrete", ["slw.discrete_lengths=[64,512,1024]",
                                                                    "slw.discrete_max_steps=[100,200]"], "max_step")])
def test_other_pacings_carry_their_parameters(tmp_path, pacing, extra, key):
    spec = finished_job(tmp_path, {"start_length": 8, "duration_steps": 100}, [f"slw.pacing={pacing}", *extra])
    cl = curriculum_config(spec, {"start_length": 8, "duration_steps": 100})["curriculum_learning"]
    assert cl["schedule_type"] == pacing and key in cl["schedule_config"]
