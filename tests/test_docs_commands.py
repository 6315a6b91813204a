"""Every command and snippet in README.md and docs/*.md, run by the suite.

Quick commands (`slwtune presets|validate|plan`) run exactly as written and must exit 0. Expensive
ones (a training job, a server, a data preparation, an export of a finished job) are parsed by the
real argument parser and their specs validated; they are listed below, so a new one is noticed.
Python snippets run as written (in a folder holding the model file the 10-minute path produces);
excerpts of larger programs are listed and compiled. YAML snippets are validated as job specs.
"""

import re
import shlex
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from slwtune.cli import build_parser, main
from slwtune.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

RUN = {"presets", "validate", "plan"}
# (subcommand, first argument): the expensive commands the docs show; parsed and validated, not run
EXPENSIVE = {("tune", "shakespeare-tiny"), ("train", "shakespeare-tiny"), ("demo", "--keep-up"),
             ("serve", "--host"), ("data", "prepare"), ("export-config", "out/")}
OTHER = {"make", "curl", "export", "cat", ".", "python", "flock"}   # checked below or by test_readme.py
EXCERPTS = ["def train(ctx):", "from slwtune.hf_trainer import slw_for_trainer"]


def blocks(lang: str) -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for body in re.findall(rf"```{lang}\n(.*?)```", doc.read_text(), re.S):
            out.append((doc.name, body))
    return out


def shell_commands() -> list[tuple[str, list[str]]]:
    """Each command of the bash blocks as argv (continuations joined, comments dropped, `&&` split)."""
    out = []
    for doc, body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            argv, current = shlex.split(line, comments=True), []
            for word in argv + ["&&"]:
                if word == "&&":
                    out += [(doc, current)] if current else []
                    current = []
                else:
                    current.append(word)
    return out


COMMANDS = shell_commands()
SLWTUNE = [argv[1:] for _, argv in COMMANDS if argv[0] == "slwtune"]


def test_every_shell_command_is_of_a_known_kind():
    kinds = {argv[0] for _, argv in COMMANDS}
    assert kinds <= OTHER | {"slwtune"}, kinds - OTHER
    assert {(a[0], a[1]) for a in SLWTUNE if a[0] not in RUN} == EXPENSIVE


@pytest.mark.parametrize("argv", [a for a in SLWTUNE if a[0] in RUN], ids=" ".join)
def test_quick_command_runs_as_written(argv, capsys):
    assert main(argv) == 0, capsys.readouterr().err


@pytest.mark.parametrize("argv", [a for a in SLWTUNE if a[0] not in RUN], ids=" ".join)
def test_expensive_command_parses_and_its_spec_validates(argv):
    args = build_parser().parse_args(argv)
    if getattr(args, "spec", None):
        load_spec(args.spec, args.overrides)


def test_make_targets_and_scripts_the_docs_name_exist():
    makefile = (ROOT / "Makefile").read_text()
    for _, argv in COMMANDS:
        if argv[0] == "make":
            assert re.search(rf"(?m)^{argv[1]}:", makefile), argv
        if argv[0] == "python" and argv[1].endswith(".py"):
            assert (ROOT / argv[1]).is_file(), argv
        if argv[0] == "flock":
            assert any((ROOT / a).is_file() for a in argv if a.startswith("tests/")), argv


@pytest.fixture
def tuned_out(tmp_path, monkeypatch):
    """A folder with out/model/model.pt as `slwtune tune --out out/` leaves it (a tiny model here)."""
    import torch

    from slwtune.model import GPT, GPTConfig

    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, context_length=32, vocab_size=64)
    (tmp_path / "out" / "model").mkdir(parents=True)
    torch.save({"config": asdict(config), "vocab_size": 64, "state_dict": GPT(config).state_dict(),
                "spec": load_spec("shakespeare-tiny").to_dict(), "step": 0, "tokens": 0},
               tmp_path / "out" / "model" / "model.pt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


SNIPPETS = blocks("python")


@pytest.mark.parametrize("snippet", [b for _, b in SNIPPETS], ids=lambda b: b.splitlines()[0][:40])
def test_python_snippet_runs_as_written(snippet, tuned_out):
    if any(snippet.lstrip().startswith(e) for e in EXCERPTS):
        compile(snippet, "<excerpt>", "exec")   # a part of a larger program: it must at least be Python
        return
    exec(compile(snippet, "<snippet>", "exec"), {"__name__": "__snippet__"})


def test_excerpts_are_the_listed_ones():
    starts = {b.lstrip().splitlines()[0] for _, b in SNIPPETS}
    assert {e for e in EXCERPTS if any(s.startswith(e) for s in starts)} == set(EXCERPTS)


@pytest.mark.parametrize("snippet", [b for _, b in blocks("yaml")], ids=lambda b: b.splitlines()[0][:40])
def test_yaml_snippet_is_a_valid_spec(snippet):
    parse_spec(yaml.safe_load(snippet))
