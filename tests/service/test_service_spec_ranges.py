"""slwtune.spec as the service relies on it: every numeric field has a documented range, enforced
alike for the CLI (load_spec) and REST (422 naming the field), and every preset stays inside it."""

import re
from pathlib import Path

import pytest
from service_kit import TINY, bounds, doc_range, fields, numeric_fields, out_of_range, rejected

from slwtune.errors import SpecError
from slwtune.spec import list_presets, load_spec

# the job-spec table moved from the README to the reference it links (issue 24)
README = (Path(__file__).resolve().parents[2] / "docs" / "reference.md").read_text()
NUMERIC = dict(numeric_fields())


def test_every_numeric_field_has_both_bounds():
    unbounded = [name for name, info in NUMERIC.items() if None in bounds(info)]
    assert not unbounded, f"fields without a lower or upper bound: {unbounded}"


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_every_preset_stays_inside_the_ranges(name):
    spec = load_spec(name)
    assert spec.name == name


def _readme_rows() -> dict[str, str]:
    """{dotted field: its range} from the README's job-spec table (rows name several fields)."""
    table = README.split("| field | default | range | meaning |", 1)[1].split("\n\n", 1)[0]
    out = {}
    for line in table.splitlines()[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = []
        for n in re.findall(r"`([^`]+)`", cells[0]):
            head, *rest = n.split("/")
            names += [head] + [f"{head.rsplit('.', 1)[0]}.{r}" for r in rest]
        for n, r in zip(names, cells[2].split("; ")):
            out[n] = r
    return out


def test_readme_documents_each_range_as_the_model_enforces_it():
    documented = _readme_rows()
    wrong = {n: (documented.get(n), doc_range(info)) for n, info in NUMERIC.items()
             if documented.get(n) != doc_range(info)}
    assert not wrong, f"README range != model range: {wrong}"


@pytest.mark.parametrize("name", sorted(NUMERIC))
def test_out_of_range_values_are_refused_by_cli_and_rest_naming_the_field(api, name):
    for value in out_of_range(NUMERIC[name]):
        with pytest.raises(SpecError) as info:
            load_spec("shakespeare-tiny", {name: value})
        assert name in {p["loc"] for p in info.value.problems}, (value, info.value.problems)
        assert name in fields(rejected(api, {**TINY, "overrides": {name: value}})), value


@pytest.mark.parametrize("field,value", [
    ("resources.cpus_per_worker", 1e300), ("resources.gpus_per_worker", 1e300), ("resources.num_workers", 10000),
    ("optim.lr", 1e300), ("optim.eps", 1e300), ("tuning.probe_warmup_multiples", 1e300),
])
def test_the_issues_examples_are_refused(api, field, value):
    """The requests issue 12 found accepted with 201."""
    got = fields(rejected(api, {"spec": {field.split(".")[0]: {field.split(".")[1]: value}}}))
    assert field in got and got[field] == value


@pytest.mark.parametrize("value", [[0.9, 1.0], [-0.1, 0.95], [0.9, "NaN"], [0.9], "0.9"])
def test_betas_are_each_in_0_1(api, value):
    assert "optim.betas" in {k.rsplit(".", 1)[0] if k[-1].isdigit() else k
                             for k in fields(rejected(api, {**TINY, "overrides": {"optim.betas": value}}))}


@pytest.mark.parametrize("field,value", [
    ("tuning.durations", [100, 10**8]), ("tuning.start_lengths", [8, 0]), ("slw.discrete_max_steps", [10**8]),
    ("tuning.durations", list(range(1, 66))), ("slw.discrete_lengths", [-8]),
])
def test_list_entries_have_ranges_too(api, field, value):
    got = fields(rejected(api, {**TINY, "overrides": {field: value}}))
    assert any(k == field or k.startswith(field + ".") for k in got), got
