"""`slwtune data prepare`: sources tokenized into a prepared dataset folder.

The folder holds train.bin and val.bin (flat little-endian token ids), meta.json (`DatasetMeta`)
and, for `bpe` and `hf`, tokenizer.json. Each source's tokens go through a spill file, so memory
does not grow with the corpus.

Split: the last `val_fraction` of every source's tokens goes to val.bin, the rest to train.bin (a
text file is one document; a record source is its records joined by the separator, the eot id or
a newline for tokenizers without one, so its val part is its last records). Every source is
represented in both, and the split is a pure function of the token counts, so `seed` does not
change it (it is only recorded in meta.json).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from slwtune.data.meta import DatasetMeta, token_dtype, train_token_count
from slwtune.data.sources import resolve_sources, source_bytes, source_kind, source_texts
from slwtune.data.tokenizer import (Tokenizer, check_tokenizer_args, effective_vocab_size, is_tokenizer_path,
                                    make_tokenizer)
from slwtune.errors import DataError
from slwtune.files import META_FILE, TOKEN_FILES

TRAIN_FILE, VAL_FILE = TOKEN_FILES

SPILL_BLOCK = 1 << 22  # tokens copied per block from a source's spill file


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
    for name, lo, hi in ((TRAIN_FILE, 0, cut), (VAL_FILE, cut, n)):
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
        what = "a prepared dataset" if DatasetMeta.is_prepared(out) else "files"
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
    with open(tmp / TRAIN_FILE, "wb") as train_f, open(tmp / VAL_FILE, "wb") as val_f, \
            _progress(total, "tokenizing") as bar:
        outputs = {TRAIN_FILE: (train_f, hashlib.sha256()), VAL_FILE: (val_f, hashlib.sha256()),
                   "counts": dict.fromkeys(TOKEN_FILES, 0)}
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
                       train_tokens=counts[TRAIN_FILE], val_tokens=counts[VAL_FILE],
                       sha256={k: outputs[k][1].hexdigest() for k in TOKEN_FILES},
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
                f"(--vocab-size); {META_FILE} records {meta.vocab_size:,}, and a model trained on this dataset "
                f"gets that vocabulary; add text for a larger one")
    return None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("slwtune")
    except PackageNotFoundError:
        return "unknown"
