"""What a user gets for bad input: one line per problem naming the field and value, EXIT_INVALID, no traceback."""

import subprocess
import sys

import pytest

from slwtune import metrics as M
from slwtune.cli import main
from slwtune.errors import SpecError
from slwtune.simulation import parse_landscape
from slwtune.spec import load_spec


def error_of(argv, capsys) -> list[str]:
    assert main(argv) == M.EXIT_INVALID
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()


def test_non_utf8_spec_file_is_named_not_a_traceback(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(b"name: x\n\xff\xfe\n")
    lines = error_of(["validate", str(spec)], capsys)
    assert lines[1].strip() == f"<file>={str(spec)!r}: not UTF-8 text (byte 0xff at offset 8)"


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_spec_file_is_refused(tmp_path, capsys, text):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    lines = error_of(["validate", str(spec)], capsys)
    assert "is empty" in lines[1]


def test_a_folder_as_the_spec_is_named_as_a_folder(tmp_path, capsys):
    lines = error_of(["validate", str(tmp_path)], capsys)
    assert lines[1].strip().startswith(f"<file>={str(tmp_path)!r}: is a folder")


def test_a_missing_path_is_no_such_file_not_a_bad_preset_name(capsys):
    lines = error_of(["validate", "./specs/mine.yml"], capsys)
    assert lines[1].strip() == "<file>='./specs/mine.yml': no such file"


def test_unknown_section_and_field_get_did_you_mean_and_no_dict_dump(capsys):
    lines = error_of(["validate", "shakespeare-tiny", "--set", "optm.lr=0.003", "--set", "optim.lrr=3"], capsys)
    assert "  optm: unknown section; did you mean optim?" in lines
    assert "  optim.lrr=3: unknown field; did you mean optim.lr?" in lines
    assert not any("{" in line for line in lines)


def test_unknown_preset_suggests_the_close_one():
    with pytest.raises(SpecError) as err:
        load_spec("shakespeare-tiy")
    assert "did you mean shakespeare-tiny?" in err.value.problems[0]["msg"]


def test_short_tuple_is_reported_at_the_field(capsys):
    lines = error_of(["validate", "shakespeare-tiny", "--set", "optim.betas=[0.9]"], capsys)
    assert lines[1:] == ["  optim.betas=[0.9]: needs 2 items"]


def test_bpe_vocab_below_its_minimum_is_refused_by_validate_like_prepare(capsys):
    lines = error_of(["validate", "shakespeare-tiny", "--set", "data.vocab_size=256"], capsys)
    assert lines[1].strip().startswith("data.vocab_size=256: bpe needs at least 257")
    assert main(["validate", "shakespeare-tiny", "--set", "data.vocab_size=256", "--set",
                 "data.tokenizer=bytes"]) == 0


@pytest.mark.parametrize("rules", ["diverged<700,fluctuating>300", "diverged<700,diverged<800"])
def test_contradictory_or_repeated_simulate_rules_are_refused(rules, capsys):
    lines = error_of(["plan", "shakespeare-tiny", "--simulate", rules], capsys)
    assert lines[0] == "slwtune: error: invalid --simulate rules:"


def test_adjacent_failure_modes_are_not_a_contradiction():
    # T < 300 diverges, T > 299 fluctuates: no T is stable, and no T is both
    assert parse_landscape("diverged<300,fluctuating>299").fluctuating_above == 299


def test_bad_flag_exits_with_the_invalid_input_code():
    out = subprocess.run([sys.executable, "-m", "slwtune.cli", "plan", "shakespeare-tiny", "--bogus"],
                         capture_output=True, text=True)
    assert out.returncode == M.EXIT_INVALID and "unrecognized arguments: --bogus" in out.stderr


def test_data_prepare_input_errors_exit_invalid(tmp_path, capsys):
    lines = error_of(["data", "prepare", "--out", str(tmp_path / "d"), "--vocab-size", "100"], capsys)
    assert "vocab_size=100" in lines[0]


def test_help_lists_the_invalid_input_exit_code(capsys):
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    assert f"{M.EXIT_INVALID}    invalid input" in capsys.readouterr().out


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`slwtune plan PRESET | head -1`: the pipe closes before the plan is printed."""
    proc = subprocess.Popen([sys.executable, "-m", "slwtune.cli", "plan", "shakespeare-demo"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command (still importing) writes anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == M.EXIT_INTERRUPTED
    assert "Traceback" not in err and "BrokenPipeError" not in err
