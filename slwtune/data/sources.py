"""The sources `data prepare` reads, as a stream of texts.

Text files (each file one document); JSON lines (.jsonl/.ndjson/.json), Parquet (.parquet) and
folders written by `datasets.Dataset.save_to_disk` (every split of a DatasetDict), whose
records' `text_field` are the documents. Everything streams: a text file in ~1 MiB pieces,
records one batch at a time, so memory does not grow with the corpus.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from slwtune.errors import DataError

CHUNK_CHARS = 1 << 20  # text is read and encoded in ~1 MiB pieces cut at line ends
RECORD_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
RECORD_BATCH = 1024  # records read (Parquet, HF datasets) per batch


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
