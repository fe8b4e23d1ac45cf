"""How minillm writes files: atomic writes, staging folders, leftovers of interrupted writes, output path checks.

Low level on purpose (no model code): every module that writes a result imports it without import cycles.
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from minillm_core.errors import MiniLLMError
from minillm_core.settings import user_path

logger = logging.getLogger(__name__)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a temporary sibling, then `os.replace` it over `path`: a reader sees the old file or the new one, and a
    crash or a full disk leaves no half-written file (the temporary one is removed)."""
    path = Path(path)
    clean_leftovers(path)  # a writer killed between its two steps leaves its temporary file behind
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.partial-{os.getpid()}-", dir=path.parent)
    except OSError as exc:
        raise MiniLLMError(f"could not write {path}: {write_failure(exc)}") from exc
    try:
        public_mode(Path(tmp))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise MiniLLMError(f"could not write {path}: {write_failure(exc)}; the previous file, if any, is "
                           "unchanged") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_failure(exc: Exception) -> str:
    """Why a write failed, as a person says it (an OSError, or a library's error that wraps one: safetensors
    reports a full disk as "I/O error: No space left on device (os error 28)")."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.ENOSPC or f"os error {errno.ENOSPC})" in text:
        return "the disk is full"
    if code == errno.EROFS or f"os error {errno.EROFS})" in text:
        return "the file system is read-only"
    return getattr(exc, "strerror", None) or text


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """`write_text_atomic` of `data` as indented JSON (values JSON cannot hold are written as their `str`)."""
    return write_text_atomic(path, json.dumps(data, indent=1, default=str))


def check_output_file(out: str | Path, flag: str = "output") -> Path:
    """`out` as a file a command may write (checked before any work): never a directory, never under a file, its
    folder created if missing and writable. The write itself goes through a temporary sibling (atomic)."""
    out = user_path(out)
    if out.is_dir():
        raise MiniLLMError(f"{flag} {out} is a directory; give a file name")
    parent = next((p for p in out.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise MiniLLMError(f"cannot write {flag} {out}: {parent} is a file, not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MiniLLMError(f"cannot write {flag} {out}: {exc.strerror or exc}") from None
    if not os.access(out.parent, os.W_OK):
        raise MiniLLMError(f"cannot write {flag} {out}: {out.parent} is not writable")
    return out


def _umask() -> int:
    """The process umask, read without changing it where Linux says it (os.umask would, for an instant, for every
    thread of a server)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def public_mode(path: Path, directory: bool = False) -> None:
    """Give a file or folder made by `tempfile` (0600/0700) the mode the user's umask asks for, as `open` would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _dead(pid_text: str) -> bool:
    """Whether the process that wrote a leftover is gone (its pid is in the name)."""
    try:
        os.kill(int(pid_text), 0)
    except (ValueError, ProcessLookupError):
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def staging_dir(out: Path) -> Path:
    """A fresh folder beside `out` to build it in (then renamed over it): named after this process, so a later run
    can tell a dead writer's leftover (`clean_leftovers`), with the mode the umask gives."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    except OSError as exc:
        raise MiniLLMError(f"could not write {out}: {write_failure(exc)}; nothing was changed there") from exc
    public_mode(tmp, directory=True)
    return tmp


def clean_leftovers(out: Path) -> list[str]:
    """Finish what an interrupted save of `out` left (a killed prune, a crash between the two renames of an
    overwrite): a dead process's `.NAME.partial-PID-*` folder or `.NAME.partial-PID-*.gguf` file is removed; its
    `.NAME.old-PID` folder is moved back to `out` when `out` is missing (else removed). Returns what was done."""
    done = []
    name = glob.escape(out.name)  # a name with [ or * is matched literally
    for leftover in sorted(out.parent.glob(f".{name}.partial-*")):
        pid = leftover.name.removeprefix(f".{out.name}.partial-").split("-", 1)[0]
        if _dead(pid):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
            done.append(f"removed {leftover.name}")
    for old in sorted(out.parent.glob(f".{name}.old-*")):
        if not _dead(old.name.rsplit("-", 1)[-1]):
            continue
        if not out.exists():
            os.replace(old, out)
            done.append(f"restored {out.name} from {old.name}")
        else:
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"removed {old.name}")
    return done


