"""`python -m examples.nanogpt_slw [--out DIR] [--set KEY=VALUE ...]`: tune SLW for `train` on a local Ray."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import slwtune
from examples.nanogpt_slw.train import train
from slwtune.spec import load_spec

SPEC = Path(__file__).with_name("spec.yaml")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="slwtune-out/nanogpt-slw", help="the job folder (report.json, report.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of spec.yaml, e.g. --set optim.lr=0.01 (repeatable)")
    args = p.parse_args(argv)
    report = slwtune.tune_function(train, load_spec(SPEC, args.overrides), out_dir=args.out)
    print(json.dumps({k: report.get(k) for k in ("outcome", "chosen", "error")}, indent=2))
    return 0 if report["outcome"] == "done" else 1


if __name__ == "__main__":
    raise SystemExit(main())
