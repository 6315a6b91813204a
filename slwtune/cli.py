"""The `slwtune` command line. Each command is a small function; heavy imports stay lazy."""

from __future__ import annotations

import argparse
import json
import sys

from slwtune.errors import SlwtuneError


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="a job spec YAML/JSON file or a preset name (see `slwtune presets`)")
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
    from slwtune.data import prepare_dataset, shakespeare_sources

    sources = args.sources or [str(p) for p in shakespeare_sources()]
    meta = prepare_dataset(sources if len(sources) > 1 else sources[0], args.out, tokenizer=args.tokenizer,
                           vocab_size=args.vocab_size, val_fraction=args.val_fraction, seed=args.seed)
    print(f"wrote {args.out}: {meta.train_tokens:,} train + {meta.val_tokens:,} val tokens "
          f"({meta.tokenizer}, vocab {meta.vocab_size}, {meta.dtype})")
    return 0


def cmd_train(args) -> int:
    from slwtune.train import train

    spec = _load(args)
    if args.no_slw:
        spec = spec.model_copy(update={"slw": spec.slw.model_copy(update={"enabled": False})})
    result = train(spec, address=args.address, storage=args.storage)
    print(json.dumps(result, indent=2, default=str))
    return {"diverged": 3, "failed": 1}.get(result.get("verdict"), 0)


def cmd_tune(args) -> int:
    from slwtune.driver import run_job

    spec = _load(args)
    report = run_job(spec, out_dir=args.out, address=args.address, job_id=args.job_id,
                     full_run=not args.no_full_run)
    chosen = report.get("chosen")
    print(json.dumps({"chosen": chosen, "report": f"{args.out}/report.json",
                      "mlflow_parent_run_id": report.get("mlflow_parent_run_id")}, indent=2))
    return 0 if chosen else 2


def cmd_plan(args) -> int:
    from slwtune.plan import format_plan, make_plan

    plan = make_plan(_load(args))
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    # By module path: the library stays free of the REST layer that sits above it.
    uvicorn.run("service.app:app", host=args.host, port=args.port, log_level="info")
    return 0


def cmd_demo(args) -> int:
    # The local dev stack is its own package beside the library (it knows the service's layout).
    from devstack.demo import run_demo

    return run_demo(keep_up=args.keep_up, preset=args.preset)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slwtune", description=(
        "Tune Sequence Length Warmup (start length, duration T) for GPT pre-training on Ray; "
        "everything logged to MLflow."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="validate a spec (after --set overrides) and print it")
    _spec_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("presets", help="list the search-space presets, or print one")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_presets)

    data = sub.add_parser("data", help="dataset commands").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("prepare", help="tokenize text files into a memory-mapped token file")
    p.add_argument("sources", nargs="*", help="folders, globs or files (default: the Shakespeare corpus)")
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--tokenizer", choices=["bytes", "bpe", "gpt2"], default="bpe")
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_prepare)

    p = sub.add_parser("train", help="one training run on Ray Train (local Ray if none configured)")
    _spec_args(p)
    p.add_argument("--no-slw", action="store_true", help="train the baseline at full length")
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS or a local Ray)")
    p.add_argument("--storage", default=None, help="Ray storage path (default: ~/.slwtune/ray_results)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="probe -> select -> full run (the whole tuning job)")
    _spec_args(p)
    p.add_argument("--out", default="slwtune-out", help="folder for the report, plots and checkpoints")
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS or a local Ray)")
    p.add_argument("--job-id", default=None, help="id used for MLflow tags (default: generated)")
    p.add_argument("--no-full-run", action="store_true", help="stop after selecting the knobs")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("plan", help="print the probe plan and its cost against the full run (runs nothing)")
    _spec_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

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
    except SlwtuneError as exc:
        print(f"slwtune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slwtune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
