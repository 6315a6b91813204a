"""The `slwtune` command line. Each command is a small function; heavy imports stay lazy."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from slwtune import metrics as M
from slwtune.errors import SlwtuneError, SpecError
from slwtune.files import REPORT_FILE

EXIT_CODES_HELP = f"""exit codes (tune and train):
  {M.EXIT_OK}    done: knobs chosen and the full run finished (train: the run did not diverge or crash)
  {M.EXIT_RUN_FAILED}    the full run (train: the run) diverged or crashed; the reason names the step and signal
  {M.EXIT_NONE_STABLE}    no stable configuration (the report says what to change)
  {M.EXIT_INFRA}    infrastructure failure: every probe crashed, a backend is unreachable
  {M.EXIT_INVALID}    invalid input, nothing ran: the spec, a flag, a data source or model.entrypoint; one line per problem
"""


class _Parser(argparse.ArgumentParser):
    """argparse that exits with EXIT_INVALID on a bad flag (its own code, 2, means "no stable configuration")."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(M.EXIT_INVALID, f"{self.prog}: error: {message}\n")



def _spec_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("spec", nargs=None if required else "?",
                   help="a job spec YAML/JSON file or a preset name (see `slwtune presets`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set optim.lr=3e-4 (repeatable)")


def _load(args):
    from slwtune.spec import load_spec

    return load_spec(args.spec, args.overrides)


def cmd_validate(args) -> int:
    spec = _load(args)
    print(spec.to_json() if args.json else spec.to_yaml(), end="" if not args.json else "\n")
    return 0


def cmd_presets(args) -> int:
    from slwtune.spec import list_presets, load_spec

    if args.name:
        print(load_spec(args.name).to_yaml(), end="")
        return 0
    for name in list_presets():
        spec = load_spec(name)
        print(f"{name:20s} model={spec.model.preset:10s} tokens={spec.budget.train_tokens:,} "
              f"strategy={spec.tuning.strategy}")
    return 0


def cmd_data_prepare(args) -> int:
    from slwtune.data import prepare_dataset, shakespeare_sources, vocab_warning
    from slwtune.errors import DataError

    sources = args.sources or [str(p) for p in shakespeare_sources()]
    try:
        meta = prepare_dataset(sources if len(sources) > 1 else sources[0], args.out, tokenizer=args.tokenizer,
                               vocab_size=args.vocab_size, val_fraction=args.val_fraction, seed=args.seed,
                               text_field=args.text_field, eot_token=args.eot_token, force=args.force)
    except DataError as exc:  # here every one is about the sources or the flags: the user's input
        print(f"slwtune: error: {exc}", file=sys.stderr)
        return M.EXIT_INVALID
    print(f"wrote {args.out}: {meta.train_tokens:,} train + {meta.val_tokens:,} val tokens "
          f"({meta.tokenizer}, vocab {meta.vocab_size}, {meta.dtype})")
    if warning := vocab_warning(meta):
        print(f"slwtune: warning: {warning}", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    from slwtune.train import train

    spec = _load(args)
    if args.no_slw:
        spec = spec.model_copy(update={"slw": spec.slw.model_copy(update={"enabled": False})})
    result = train(spec, address=args.address, storage=args.storage)
    print(json.dumps(result, indent=2, default=str))
    return M.EXIT_RUN_FAILED if result.get("verdict") in M.RUN_FAILED_VERDICTS else M.EXIT_OK


def cmd_tune(args) -> int:
    from slwtune.driver import run_job

    if args.resume:
        report = run_job(None, out_dir=args.resume, address=args.address, full_run=not args.no_full_run,
                         resume=True)
        args.out = args.resume
    else:
        if not args.spec:
            raise SpecError([{"loc": "spec", "value": None, "msg": "a spec (file or preset) or --resume OUT is needed"}])
        report = run_job(_load(args), out_dir=args.out, address=args.address, job_id=args.job_id,
                         full_run=not args.no_full_run)
    said = {key: report.get(key) for key in (M.REPORT_OUTCOME, M.REPORT_ERROR, M.REPORT_CHOSEN, M.REPORT_FULL_RUN)}
    print(json.dumps({**said, "report": f"{args.out}/{REPORT_FILE}",
                      M.REPORT_PARENT_RUN_ID: report.get(M.REPORT_PARENT_RUN_ID)}, indent=2, default=str))
    return M.EXIT_FOR_OUTCOME[report[M.REPORT_OUTCOME]]


def cmd_plan(args) -> int:
    from slwtune.plan import format_plan, make_plan, plan_warnings
    from slwtune.simulation import format_simulation, parse_landscape, simulate

    spec = _load(args)
    if args.simulate is not None:
        sim = simulate(spec, parse_landscape(args.simulate))
        print(json.dumps(sim, indent=2) if args.json else format_simulation(sim))
        return 0
    plan = make_plan(spec)
    plan["warnings"] = plan_warnings(spec, plan)
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0


def cmd_export_config(args) -> int:
    from slwtune.errors import TuningError
    from slwtune.export import export_config

    try:
        cfg = export_config(args.job_dir)
    except TuningError as exc:
        print(f"slwtune: error: {exc}", file=sys.stderr)
        return M.EXIT_NONE_STABLE
    if args.json:
        print(json.dumps(cfg, indent=2))
        return 0
    print("# DeepSpeed config (merge into ds_config.json):")
    print(json.dumps(cfg["deepspeed"], indent=2))
    print("# Megatron-DeepSpeed flags (with --deepspeed_config ds_config.json; drop --rampup-batch-size):")
    print(" ".join(cfg["megatron_deepspeed_args"]))
    for note in cfg["notes"]:
        print(f"# note: {note}")
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    # By module path: the library stays free of the REST layer that sits above it.
    uvicorn.run("service.app:app", host=args.host, port=args.port, log_level="info")
    return 0


def cmd_demo(args) -> int:
    return installed_app("demo")(keep_up=args.keep_up, preset=args.preset)


def installed_app(name: str):
    """A command the library does not own, found through the `slwtune.apps` entry points that
    pyproject.toml declares (`demo`: the local dev stack, `devstack.demo:run_demo`): the library
    never imports the layers above it."""
    from importlib.metadata import entry_points

    found = list(entry_points(group="slwtune.apps", name=name))
    if not found:
        raise SlwtuneError(f"`slwtune {name}` is not installed here: install slwtune from its repository "
                           f"(`make install` or `pip install -e .`), which registers it")
    return found[0].load()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="slwtune", description=(
        "Tune Sequence Length Warmup (start length, duration T) for GPT pre-training on Ray; "
        "everything logged to MLflow."), epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="validate a spec (after --set overrides) and print it")
    _spec_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("presets", help="list the search-space presets, or print one")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_presets)

    data = sub.add_parser("data", help="dataset commands").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("prepare", help="tokenize text, JSONL, Parquet or a saved HF dataset into memory-mapped "
                                        "token files")
    p.add_argument("sources", nargs="*", help="folders (read recursively), globs (`**` too) or files: .txt (any other suffix is read as text), "
                   ".jsonl/.json, .parquet, or a datasets.save_to_disk folder (default: the Shakespeare corpus)")
    p.add_argument("--out", required=True, help="output dataset folder (written aside, renamed into place at the end)")
    p.add_argument("--force", action="store_true", help="replace --out when it already holds files")
    p.add_argument("--tokenizer", default="bpe", metavar="NAME_OR_PATH",
                   help="bytes, bpe (trained on the corpus), gpt2, or a local Hugging Face tokenizer: a folder or "
                   "a tokenizer.json (default: bpe)")
    p.add_argument("--text-field", default="text", help="the text field of JSONL / Parquet / HF dataset records")
    p.add_argument("--eot-token", default=None,
                   help="document separator token of an HF tokenizer (default: its EOS)")
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_prepare)

    p = sub.add_parser("train", help="one training run on Ray Train (local Ray if none configured)", epilog=EXIT_CODES_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _spec_args(p)
    p.add_argument("--no-slw", action="store_true", help="train the baseline at full length")
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS or a local Ray)")
    p.add_argument("--storage", default=None, help="Ray storage path (default: ~/.slwtune/ray_results)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="probe -> select -> full run (the whole tuning job)", epilog=EXIT_CODES_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _spec_args(p, required=False)
    p.add_argument("--resume", metavar="OUT", default=None,
                   help="go on with the job in folder OUT after its driver died: finished probes are not rerun "
                        "and the full run continues from its last checkpoint")
    p.add_argument("--out", default="slwtune-out", help="folder for the report, plots and checkpoints")
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS or a local Ray)")
    p.add_argument("--job-id", default=None, help="id used for MLflow tags (default: generated)")
    p.add_argument("--no-full-run", action="store_true", help="stop after selecting the knobs")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("plan", help="print the probe plan and its cost against the full run (runs nothing)")
    _spec_args(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--simulate", metavar="RULES", default=None,
                   help="run the configured search against a stated landscape instead of training, e.g. "
                        "'diverged<300,fluctuating>700,early<16' (T below 300 diverges, above 700 fluctuates, "
                        "start lengths below 16 go wrong at the very beginning)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("export-config", help="the chosen knobs of a finished job as a DeepSpeed curriculum and "
                                             "Megatron-DeepSpeed flags")
    p.add_argument("job_dir", metavar="JOB_DIR", help="the job's --out folder (report.json, spec.yaml)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export_config)

    p = sub.add_parser("serve", help="run the REST API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="start Ray, MLflow and the API locally and run the demo job through REST")
    p.add_argument("--keep-up", action="store_true", help="leave the services running for browsing")
    p.add_argument("--preset", default="shakespeare-demo")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as exc:
        print(f"slwtune: error: {exc}", file=sys.stderr)
        return M.EXIT_INVALID  # invalid input (spec, flag, data path, entrypoint): nothing ran
    except SlwtuneError as exc:
        print(f"slwtune: error: {exc}", file=sys.stderr)
        return M.EXIT_INFRA
    except KeyboardInterrupt:
        print("slwtune: interrupted", file=sys.stderr)
        return M.EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader left (`slwtune plan ... | head`): no traceback, as the Python docs
        # advise (library/signal.html, "Note on SIGPIPE"): point stdout at devnull so the flush at exit is quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return M.EXIT_INTERRUPTED
    except Exception:  # a backend (Ray, MLflow) or a bug: never exit 1, which means "the run failed"
        traceback.print_exc()
        print("slwtune: error: unexpected failure (traceback above)", file=sys.stderr)
        return M.EXIT_INFRA


if __name__ == "__main__":
    sys.exit(main())
