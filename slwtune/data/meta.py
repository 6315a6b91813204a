"""A prepared dataset's description: the meta.json sidecar beside train.bin and val.bin.

train.bin and val.bin hold flat little-endian token ids of `DatasetMeta.dtype`; meta.json names
the tokenizer, the sizes, the files' sha256 checksums and the sources they came from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from slwtune.errors import DataError
from slwtune.files import META_FILE, SPLIT_FILES

FORMAT_VERSION = 1


def token_dtype(vocab_size: int) -> str:
    """uint16 when every id fits in it, else uint32."""
    return "uint16" if vocab_size <= 2**16 else "uint32"


def train_token_count(n_tokens: int, val_fraction: float) -> int:
    """How many leading tokens of an `n_tokens` document go to train; the rest go to val."""
    return n_tokens - round(n_tokens * val_fraction)


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
    """The meta.json sidecar of a prepared dataset; `root` is the folder (not saved)."""

    tokenizer: str
    vocab_size: int
    dtype: str
    eot_id: int | None
    train_tokens: int
    val_tokens: int
    sha256: dict[str, str]  # file name -> hex digest
    sources: tuple[str, ...]
    val_fraction: float
    seed: int
    split: str = "tail-of-each-document"
    text_field: str = ""  # the record field read from JSONL / Parquet / HF dataset sources
    tokenizer_source: str = ""  # the path of an `hf` tokenizer
    requested_vocab_size: int = 0  # bpe: the --vocab-size asked for (vocab_size is what was learned)
    slwtune_version: str = ""
    format_version: int = FORMAT_VERSION
    root: Path | None = dataclasses.field(default=None, compare=False, repr=False)

    @classmethod
    def load(cls, directory: str | Path) -> DatasetMeta:
        """Read `directory/meta.json`; DataError if it is missing or not this format."""
        path = Path(directory) / META_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{directory}: not a prepared dataset (no {META_FILE}); "
                            "run `slwtune data prepare`") from None
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: unreadable ({e})") from e
        if raw.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{path}: format_version={raw.get('format_version')!r}, this slwtune reads "
                            f"{FORMAT_VERSION}; prepare the dataset again")
        try:
            return cls(**{**raw, "sources": tuple(raw["sources"]), "root": Path(directory)})
        except (TypeError, KeyError) as e:
            raise DataError(f"{path}: malformed ({e})") from e

    @staticmethod
    def is_prepared(directory: str | Path) -> bool:
        """Whether `directory` holds a prepared dataset (its meta.json, written last)."""
        return (Path(directory) / META_FILE).is_file()

    def save(self, directory: str | Path) -> None:
        """Write meta.json atomically (readers never see half a file)."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "root"}
        data["sources"] = list(self.sources)
        tmp = Path(directory) / f"{META_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, Path(directory) / META_FILE)

    def bin_path(self, split: str) -> Path:
        """The token file of `split`; DataError if it is missing or its size does not match."""
        if split not in SPLIT_FILES:
            raise DataError(f"split={split!r}: use 'train' or 'val'")
        path = Path(self.root or ".") / SPLIT_FILES[split]
        tokens = self.train_tokens if split == "train" else self.val_tokens
        if not path.is_file() or path.stat().st_size != tokens * np.dtype(self.dtype).itemsize:
            raise DataError(f"{path}: expected {tokens} {self.dtype} tokens; the file is missing or truncated")
        return path

    def verify_checksums(self) -> None:
        """Raise DataError if a .bin file's size or sha256 differs from the recorded one."""
        for split, name in SPLIT_FILES.items():
            path = self.bin_path(split)
            digest = _sha256_file(path)
            if digest != self.sha256[name]:
                raise DataError(f"{path}: sha256 {digest} != {self.sha256[name]} in {META_FILE}")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
