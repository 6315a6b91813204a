"""The docs cannot drift from the code: the configuration table lists every spec field (and no other),
the report section names every key a job's report.json holds."""

import re
from pathlib import Path

from pydantic import BaseModel

from slwtune import driver
from slwtune.simulation import Landscape
from slwtune.spec import JobSpec
from tests.test_driver import FakeCluster, fake, spec  # noqa: F401  (fake is a fixture)

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
REFERENCE = (ROOT / "docs" / "reference.md").read_text()


def spec_fields(model: type[BaseModel] = JobSpec, prefix: str = "") -> set[str]:
    """Every leaf field of the spec as a dotted name (`tuning.stability.min_steps`)."""
    out = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= spec_fields(ann, f"{prefix}{name}.")
        else:
            out.add(prefix + name)
    return out


def table_fields() -> set[str]:
    """The fields the configuration table names: `a.b`, `a.b/c/d` (siblings), several per row."""
    table = REFERENCE.split("### Job spec", 1)[1].split("\n### ", 1)[0]
    out = set()
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        for cell in re.findall(r"`([a-z_.]+(?:/[a-z_]+)*)`", line.split("|")[1]):
            first, *siblings = cell.split("/")
            out.add(first)
            out |= {first.rsplit(".", 1)[0] + "." + s for s in siblings}
    return out


def test_configuration_table_lists_every_spec_field_and_no_other():
    documented, fields = table_fields(), spec_fields()
    assert fields - documented == set(), f"spec fields missing from docs/reference.md: {sorted(fields - documented)}"
    assert documented - fields == set(), f"documented fields the spec lacks: {sorted(documented - fields)}"


def report_keys(report: dict) -> set[str]:
    keys = set(report)
    for name in ("trials", "comparison"):
        keys |= {f"{name}[].{k}" for row in report.get(name) or [] for k in row}
    for name in ("control", "full_run"):
        keys |= {f"{name}.{k}" for k in (report.get(name) or {})}
    return keys


def test_report_section_names_every_key_a_report_holds(fake, tmp_path):  # noqa: F811
    fake(FakeCluster(Landscape(diverged_below=20, fluctuating_above=40), control=("stable", 30.0)))
    report = driver.run_job(spec(), tmp_path, job_id="j1")
    section = README.split("### The report", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z_]+)`", section))
    missing = {k for k in report_keys(report) if k.rsplit(".", 1)[-1] not in named}
    assert missing == set(), f"report keys the README's 'The report' does not name: {sorted(missing)}"


def test_preset_cost_table_is_what_plan_computes():
    from slwtune.plan import make_plan
    from slwtune.spec import load_spec

    table = REFERENCE.split("| preset | probe window | SLW probes", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) >= 4
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        plan = make_plan(load_spec(cells[0].strip("`")))
        full = plan["full_run_tokens"]
        expected = [str(plan["trials"]), f"{(plan['tuning_tokens'] - plan['control_tokens']) / full:.2%}",
                    f"{plan['control_tokens'] / full:.2%}", f"{plan['tuning_fraction']:.2%}",
                    f"{plan['net_tuning_fraction']:.2%}"]
        assert cells[2:] == expected, cells[0]


def test_first_screen_carries_the_measured_bottom_line_of_results():
    import json

    results = (ROOT / "docs" / "results.md").read_text()
    last = json.loads(results.split("Last line:", 1)[1].split("```json", 1)[1].split("```", 1)[0])
    first_screen = "\n".join(README.splitlines()[:25])
    assert f"{last['tokens_to_target_speedup']:.1f}x fewer tokens" in first_screen
    assert f"{last['time_to_target_speedup']:.1f}x less wall time" in first_screen
    assert "docs/results.md" in first_screen
