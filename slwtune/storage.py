"""Where a job's files live: a local folder or a URI (file://, s3://, gs://), through pyarrow's filesystems.

Ray Train/Tune keep every run of a job under `<storage>/<job name>-<job id>-...`, so one prefix
finds, measures or deletes all of a job's checkpoints whatever the storage is.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def _fs_and_path(location: str):
    if "://" not in location:
        return None, location
    from pyarrow import fs

    return fs.FileSystem.from_uri(location)


def _join(location: str, name: str) -> str:
    return location.rstrip("/") + "/" + name


def job_prefix(spec_name: str, job_id: str) -> str:
    """The name every Ray run of a job starts with (Tune rounds, probes, the full run)."""
    return f"{spec_name}-{job_id}-"


def job_runs(storage: str, prefix: str) -> list[str]:
    """The run folders directly under `storage` whose name starts with `prefix`."""
    filesystem, root = _fs_and_path(storage)
    if filesystem is None:
        base = Path(root)
        return sorted(str(p) for p in base.glob(f"{prefix}*") if p.is_dir()) if base.is_dir() else []
    from pyarrow import fs

    infos = filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True))
    return sorted(_join(storage, Path(i.path).name) for i in infos
                  if i.type == fs.FileType.Directory and Path(i.path).name.startswith(prefix))


def size_bytes(location: str) -> int:
    """Bytes of the files under a folder (0 when it does not exist)."""
    filesystem, root = _fs_and_path(location)
    if filesystem is None:
        path = Path(root)
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0
    from pyarrow import fs

    infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True))
    return sum(i.size or 0 for i in infos if i.type == fs.FileType.File)


def delete(location: str) -> None:
    """Remove a folder and everything under it; a missing one is fine."""
    filesystem, root = _fs_and_path(location)
    if filesystem is None:
        shutil.rmtree(root, ignore_errors=True)
        return
    try:
        filesystem.delete_dir(root)
    except FileNotFoundError:
        pass


def run_folder(checkpoint: str) -> str:
    """The Train run folder that holds a checkpoint folder (`.../<run name>/checkpoint_...`)."""
    return checkpoint.rstrip("/").rsplit("/", 1)[0]
