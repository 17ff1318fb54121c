"""Where videogen keeps its bytes: finished videos, intermediate latents, checkpoints.

Every component (API, CPU worker, GPU worker) talks to one small, blocking object-store interface,
`ObjectStore`, so the same code runs on a laptop (`FileStore`, a directory) and in production
(`S3Store`, any S3-compatible service). Pick one with `open_store(url)`:

    open_store("/var/lib/videogen/data")          # a directory
    open_store("file:///var/lib/videogen/data")   # the same, as a URL
    open_store("s3://my-bucket/videogen")         # S3; boto3 reads AWS_* from the environment

The contract both backends keep:

* Keys are '/'-separated relative paths ("jobs/abc/video.mp4"); `validate_key` rejects anything
  that could be read as a different path ('..', '.', empty segments, a leading '/', backslashes),
  so a key can never name a file outside a FileStore's root.
* Writes are atomic: a reader sees the whole old object, the whole new one, or nothing. Resumed
  and retried activities rely on this: a crash mid-write must never leave a half checkpoint that
  a later attempt would load.
* `put(..., if_absent=True)` is a create-only write (exactly-once markers and "first writer wins"
  results); it raises `AlreadyExists` if the key is there.
* `update(key, change)` is a compare-and-swap read-modify-write (admission ledgers): on S3 a
  conditional PUT (If-Match / If-None-Match) retried on a lost race, in a FileStore an exclusive
  `flock` held around the read and the write. Several processes and hosts may update one key.
* `list` and `delete_prefix` use plain string prefixes, as S3 does: prefix "a" matches "a/x" and
  "ab". Use a trailing '/' to mean a directory.

The methods block; call them from a thread (e.g. `asyncio.to_thread`) in async code. One
exception: `FileStore.holding`, which takes update locks only if no one holds them, so the
updates under it never wait.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import unquote, urlsplit

import boto3
from boto3.exceptions import Boto3Error
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
)

__all__ = [
    "AlreadyExists",
    "FileStore",
    "NotFound",
    "ObjectStore",
    "S3Store",
    "StorageError",
    "StoreUnavailable",
    "open_store",
    "validate_key",
]

DEFAULT_CHUNK_SIZE = 1 << 20

T = TypeVar("T")

# FileStore writes "<dir>/.vg-tmp-<random>" next to the final file and renames it into place.
# Keys whose segments start with this marker are rejected, so a temp file can never be mistaken
# for (or collide with) an object, and `list` can skip temp files by name alone.
TEMP_MARKER = ".vg-tmp-"
# FileStore's lock files for `update`, in a directory no key can name (the marker again).
LOCK_DIR = TEMP_MARKER + "locks"

# S3's own key length limit; FileStore enforces it too so a key valid on one backend is valid on
# the other.
MAX_KEY_BYTES = 1024

_SUPPORTED = (
    "supported storage URLs are file:// (or a plain path) and s3://, for example "
    "'/var/lib/videogen/data', 'file:///var/lib/videogen/data' or 's3://my-bucket/videogen'"
)


class StorageError(Exception):
    """Any failure of the object store (I/O error, S3 error, misconfiguration)."""


class StoreUnavailable(StorageError):
    """The store could not be reached or did not answer in time (connection refused or reset,
    a timeout, a 5xx or throttling). Transient: the same call later may succeed, so callers
    retry it or answer 503, never treat it as a missing object or a bug."""


class NotFound(StorageError):
    """The key has no object."""

    def __init__(self, key: str, where: str) -> None:
        super().__init__(f"no object {key!r} in {where}")
        self.key = key


class AlreadyExists(StorageError):
    """`put(..., if_absent=True)` found the key already there."""

    def __init__(self, key: str, where: str) -> None:
        super().__init__(f"object {key!r} already exists in {where}")
        self.key = key


def validate_key(key: str) -> str:
    """Return `key` if it is a valid object key, else raise ValueError naming it.

    Valid: non-empty, '/'-separated, no leading '/', no empty, '.' or '..' segments, no
    backslashes or control characters, at most 1024 UTF-8 bytes.
    """
    reason = _key_problem(key, allow_trailing_slash=False)
    if reason:
        raise ValueError(f"invalid storage key {key!r}: {reason}")
    return key


def _validate_prefix(prefix: str) -> str:
    """Like `validate_key`, but "" and a trailing '/' are allowed (list everything / a 'dir')."""
    if prefix == "":
        return prefix
    reason = _key_problem(prefix, allow_trailing_slash=True)
    if reason:
        raise ValueError(f"invalid storage prefix {prefix!r}: {reason}")
    return prefix


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _key_problem(key: object, *, allow_trailing_slash: bool) -> str | None:
    if not isinstance(key, str):
        return f"must be a str, not {type(key).__name__}"
    if key == "":
        return "must not be empty"
    if key.startswith("/"):
        return "must be relative (no leading '/')"
    if "\\" in key:
        # Backslashes are separators on Windows and a classic traversal trick; S3 keys with them
        # would not map back onto a FileStore.
        return "must not contain backslashes"
    if _CONTROL.search(key):
        return "must not contain control characters"
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        return f"longer than {MAX_KEY_BYTES} bytes"
    segments = key.split("/")
    if allow_trailing_slash and segments[-1] == "":
        segments.pop()
    for segment in segments:
        if segment == "":
            return "must not contain empty segments ('//' or a trailing '/')"
        if segment in (".", ".."):
            return f"must not contain {segment!r} segments"
        if segment.startswith(TEMP_MARKER):
            return f"segments must not start with {TEMP_MARKER!r} (reserved for temp files)"
    return None


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")


@runtime_checkable
class ObjectStore(Protocol):
    """A flat key -> bytes store with atomic writes. All methods block."""

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        """Store `data` under `key` atomically (replacing any old object).

        With `if_absent=True`, raise AlreadyExists instead of replacing an existing object.
        """
        ...

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Store the contents of local file `path` under `key` atomically."""
        ...

    def update(self, key: str, change: Callable[[bytes | None], bytes | None]) -> None:
        """Read-modify-write `key` atomically with respect to every other `update` of it.

        `change(current)` gets the object's bytes (None if there is none) and returns the new
        bytes, or None to leave the object as it is. It may be called more than once (after
        losing a race), so it must not have side effects. An exception from it propagates and
        nothing is written. Small objects only: counters, ledgers.

        Atomic for readers, as every write; but a FileStore does not fsync it (two fsyncs
        were most of an admission's cost): a power loss may lose the last updates. S3 keeps
        every acknowledged update.
        """
        ...

    def get(self, key: str) -> bytes:
        """Return the object's bytes; NotFound if there is none."""
        ...

    def get_to_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Write the object to local file `path` (parents created; never left half written)."""
        ...

    def iter_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        """Stream the object in chunks of at most `chunk_size` bytes.

        NotFound is raised by this call, not on the first `next()`, so an HTTP handler can turn
        it into a 404 before it starts a response.
        """
        ...

    def exists(self, key: str) -> bool:
        """Whether `key` has an object."""
        ...

    def size(self, key: str) -> int:
        """The object's size in bytes; NotFound if there is none."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with `prefix` (non-empty); return how many."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """All keys starting with `prefix`, sorted."""
        ...

    def describe(self) -> str:
        """Where the objects live, for logs: 'file:///abs/dir' or 's3://bucket/prefix'."""
        ...


# --------------------------------------------------------------------------------------------
# FileStore
# --------------------------------------------------------------------------------------------


class FileStore(ObjectStore):
    """Objects as files under a root directory; for development and single-host setups.

    Several processes may share one root: every write is temp file + fsync + rename, so
    concurrent readers never see partial files. `update` renames without fsync and never over
    an existing file (`_swap_in`). A key cannot be both an object and a "directory"
    of other objects here ("a" and "a/b"); S3 allows that, FileStore raises StorageError.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        # Resolve symlinks once so that the containment check in `_path` compares real paths.
        self._root = os.path.realpath(os.fspath(root))
        os.makedirs(self._root, exist_ok=True)

    @property
    def root(self) -> str:
        return self._root

    def describe(self) -> str:
        return Path(self._root).as_uri()

    def __repr__(self) -> str:
        return f"FileStore({self._root!r})"

    # -- paths ---------------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        validate_key(key)
        path = os.path.join(self._root, *key.split("/"))
        # Key validation already rules out '..'; this also catches a symlink planted inside the
        # root that points outside it, so the store can never read or write beyond its root.
        real = os.path.realpath(path)
        if real != self._root and not real.startswith(self._root + os.sep):
            raise ValueError(f"invalid storage key {key!r}: resolves outside {self.describe()}")
        return path

    @contextmanager
    def _os_errors(self, action: str, key: str) -> Iterator[None]:
        """Turn OSErrors into NotFound (missing object) or StorageError, keeping the cause."""
        try:
            yield
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            # NotADirectory: a parent segment is a file ("a" exists, "a/b" asked for).
            # IsADirectory: the key names a directory of other objects, not an object.
            raise NotFound(key, self.describe()) from e
        except OSError as e:
            raise StorageError(f"cannot {action} {key!r} in {self.describe()}: {e}") from e

    # -- writes --------------------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        path = self._path(key)
        if if_absent and os.path.lexists(path):
            # Cheap early exit; the real, race-free check is the link() in _write_atomic.
            raise AlreadyExists(key, self.describe())
        self._write_atomic(key, path, lambda f: f.write(data), if_absent=if_absent)

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        dest = self._path(key)
        # Open the source first: a missing local file is the caller's FileNotFoundError, not a
        # storage problem, and must not leave a temp file behind.
        with open(path, "rb") as src:
            self._write_atomic(
                key, dest, lambda f: shutil.copyfileobj(src, f, DEFAULT_CHUNK_SIZE), if_absent=False
            )

    def update(self, key: str, change: Callable[[bytes | None], bytes | None]) -> None:
        path = self._path(key)
        with self._key_lock(key):
            current = self._read_locked(key, path)
            new = change(current)
            if new is not None:
                self._swap_in(key, path, new)

    def _read_locked(self, key: str, path: str) -> bytes | None:
        """The object's bytes under its update lock: the file, else what an update that died
        mid-swap left (`_swap_in`), else None."""
        for candidate in (path, _prev_path(path)):
            try:
                with open(candidate, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                continue
            except OSError as e:
                raise StorageError(f"cannot read {key!r} in {self.describe()}: {e}") from e
        return None

    def _swap_in(self, key: str, path: str, new: bytes) -> None:
        """Publish `new` as `key` (the caller holds its lock) without renaming over an existing
        file: ext4 flushes a file's data when it is renamed over another (auto_da_alloc), which
        cost 0.3-0.4 ms per ledger update, most of an admission. The old file steps aside to
        `_prev_path` first; readers that find neither take the lock (`_settled`)."""
        directory = os.path.dirname(path)
        fd, tmp = self._create_temp(key, directory)
        prev = _prev_path(path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(new)
            stepped_aside = _rename_if_there(path, prev)
            try:
                os.rename(tmp, path)
            except BaseException:
                if stepped_aside:
                    os.rename(prev, path)  # the old version stays the object
                raise
            with suppress(FileNotFoundError):
                os.unlink(prev)
        except OSError as e:
            raise StorageError(f"cannot write {key!r} in {self.describe()}: {e}") from e
        finally:
            with suppress(OSError):
                os.unlink(tmp)  # gone if renamed into place

    def _lock_path(self, key: str) -> str:
        return os.path.join(self._root, LOCK_DIR, hashlib.sha256(key.encode()).hexdigest())

    def _open_lock(self, key: str) -> int:
        os.makedirs(os.path.join(self._root, LOCK_DIR), exist_ok=True)
        return os.open(self._lock_path(key), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)

    @contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        """An exclusive lock on `key` for every process on this host (flock on a lock file in
        the root's reserved lock directory, which `list` never shows)."""
        fd = self._open_lock(key)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @contextmanager
    def holding(self, keys: Iterable[str]) -> Iterator[FileStore | None]:
        """The update locks of `keys`, taken now without waiting and held for the block: it
        gets a view of this store whose `update`s of those keys need no lock and so never wait,
        or None (holding nothing) if another writer, in any process or thread, holds one.

        The one FileStore call meant for an event loop (`api.admission` does its ledger updates
        inline this way): with the locks held, an update is a read and a rename of a small
        local file, no fsync (`_swap_in`); anything that would wait is left to a thread."""
        wanted = frozenset(keys)
        fds: list[int] = []
        try:
            held = self._lock_all_now(sorted(wanted), fds)
            yield _Held(self._root, wanted) if held else None
        finally:
            for fd in fds:
                os.close(fd)  # closing releases the lock

    def _lock_all_now(self, keys: list[str], fds: list[int]) -> bool:
        """Lock each key without waiting, adding its fd to `fds`; False at the first one that
        another writer holds."""
        for key in keys:
            try:
                fds.append(self._open_lock(key))
                fcntl.flock(fds[-1], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            except OSError as e:
                raise StorageError(f"cannot lock {key!r} in {self.describe()}: {e}") from e
        return True

    def _settled(self, key: str, path: str, read: Callable[[str], T]) -> T:
        """`read(path)`; if the file is missing while an `update` swaps it (or one died doing
        so), wait for that update's lock and read what it left. Keys never updated have no
        lock file and cost one failed open more."""
        try:
            return read(path)
        except FileNotFoundError:
            try:
                fd = os.open(self._lock_path(key), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                pass
            else:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH)
                    try:
                        return read(path)
                    except FileNotFoundError:
                        return read(_prev_path(path))
                finally:
                    os.close(fd)
            raise

    def _write_atomic(
        self,
        key: str,
        path: str,
        write: Callable[[IO[bytes]], object],
        *,
        if_absent: bool,
    ) -> None:
        directory = os.path.dirname(path)
        fd, created = self._create_temp(key, directory)
        tmp: str | None = created
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                # Data must be on disk before the rename publishes it, or a power loss could
                # leave a complete-looking name pointing at empty/garbage blocks.
                os.fsync(f.fileno())
            try:
                if if_absent:
                    # link() fails if the name exists: an atomic create-only publish.
                    os.link(created, path)
                else:
                    os.replace(created, path)
            except FileExistsError:
                raise AlreadyExists(key, self.describe()) from None
            except IsADirectoryError as e:
                raise StorageError(
                    f"cannot write {key!r} in {self.describe()}: "
                    f"other objects live under {key + '/'!r}"
                ) from e
            if not if_absent:
                tmp = None  # renamed away; nothing to clean up
            _fsync_dir(directory)  # make the rename itself durable
        except OSError as e:
            raise StorageError(f"cannot write {key!r} in {self.describe()}: {e}") from e
        finally:
            if tmp is not None:
                with suppress(OSError):
                    os.unlink(tmp)

    def _create_temp(self, key: str, directory: str) -> tuple[int, str]:
        # A concurrent delete may prune the freshly made (still empty) directory before the temp
        # file lands in it; retry a few times instead of failing the write.
        for _ in range(5):
            try:
                os.makedirs(directory, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as e:
                raise StorageError(
                    f"cannot write {key!r} in {self.describe()}: a parent of it is an object"
                ) from e
            except OSError as e:
                raise StorageError(f"cannot write {key!r} in {self.describe()}: {e}") from e
            tmp = os.path.join(directory, TEMP_MARKER + secrets.token_hex(8))
            try:
                # O_EXCL: never share a temp file with another writer. Mode 0o666 lets the umask
                # decide permissions, as for any normally created file (mkstemp would force 0600).
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise StorageError(f"cannot write {key!r} in {self.describe()}: {e}") from e
            return fd, tmp
        raise StorageError(f"cannot write {key!r} in {self.describe()}: directory keeps vanishing")

    # -- reads ---------------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        path = self._path(key)
        with self._os_errors("read", key), self._settled(key, path, _open_read) as f:
            return f.read()

    def get_to_file(self, key: str, path: str | os.PathLike[str]) -> None:
        src_path = self._path(key)
        with self._os_errors("read", key):
            src = self._settled(key, src_path, _open_read)
        with src:
            _write_local_atomic(path, lambda f: shutil.copyfileobj(src, f, DEFAULT_CHUNK_SIZE))

    def iter_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        _check_chunk_size(chunk_size)
        path = self._path(key)
        with self._os_errors("read", key):
            f = self._settled(key, path, _open_read)  # the generator closes it
        return _file_chunks(f, chunk_size)

    def exists(self, key: str) -> bool:
        path = self._path(key)
        try:
            return stat.S_ISREG(self._settled(key, path, os.stat).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def size(self, key: str) -> int:
        path = self._path(key)
        with self._os_errors("stat", key):
            st = self._settled(key, path, os.stat)
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(key, self.describe())
        return st.st_size

    def list(self, prefix: str = "") -> list[str]:
        _validate_prefix(prefix)
        # Walk only the deepest directory the prefix pins down; filter the rest by string prefix
        # so that "a" matches "a/x" and "ab" exactly as on S3.
        base = prefix.rpartition("/")[0]
        top = self._path(base) if base else self._root  # _path: stays inside the root
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if not d.startswith(TEMP_MARKER)]
            rel = os.path.relpath(dirpath, self._root)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            for name in filenames:
                if name.startswith(TEMP_MARKER):
                    continue
                key = rel + name
                if key.startswith(prefix):
                    keys.append(key)
        keys.sort()
        return keys

    # -- deletes -------------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        path = self._path(key)
        with suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(_prev_path(path))  # left by an update that died mid-swap
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return  # nothing there (or a directory, which is not an object)
        except OSError as e:
            raise StorageError(f"cannot delete {key!r} in {self.describe()}: {e}") from e
        self._prune(os.path.dirname(path))

    def delete_prefix(self, prefix: str) -> int:
        if prefix == "":
            raise ValueError("delete_prefix needs a non-empty prefix (refusing to wipe the store)")
        count = 0
        for key in self.list(prefix):
            path = self._path(key)
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue  # deleted concurrently; not ours to count
            except OSError as e:
                raise StorageError(f"cannot delete {key!r} in {self.describe()}: {e}") from e
            count += 1
            self._prune(os.path.dirname(path))
        return count

    def _prune(self, directory: str) -> None:
        # Remove directories left empty, up to (not including) the root, so deleted jobs don't
        # leave a tree of empty folders behind. rmdir only ever removes empty directories.
        while directory != self._root and directory.startswith(self._root + os.sep):
            try:
                os.rmdir(directory)
            except OSError:
                return
            directory = os.path.dirname(directory)


class _Held(FileStore):
    """A FileStore whose caller holds the update locks of `held` (`FileStore.holding`)."""

    def __init__(self, root: str, held: frozenset[str]) -> None:
        # Not FileStore.__init__: `root` is already resolved and made, and this is built on
        # every inline admission.
        self._root = root
        self._held = held

    @contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        if key not in self._held:
            raise StorageError(f"{key!r} updated without its lock (held: {sorted(self._held)})")
        yield


def _prev_path(path: str) -> str:
    """Where `FileStore.update` moves an object's old file while it swaps in the new one."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f"{TEMP_MARKER}prev-{name}")


def _rename_if_there(src: str, dest: str) -> bool:
    try:
        os.rename(src, dest)
    except FileNotFoundError:
        return False
    return True


def _open_read(path: str) -> IO[bytes]:
    return open(path, "rb")


def _file_chunks(f: IO[bytes], chunk_size: int) -> Iterator[bytes]:
    with f:
        while chunk := f.read(chunk_size):
            yield chunk


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (network, FUSE) refuse fsync on directories; best effort
    finally:
        os.close(fd)


def _write_local_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> None:
    """Write a local (caller's) file via temp + rename so it is never seen half written."""
    dest = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(dest)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(dest)}{TEMP_MARKER}{secrets.token_hex(8)}")
    try:
        with open(tmp, "xb") as f:
            write(f)
        os.replace(tmp, dest)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------
# S3Store
# --------------------------------------------------------------------------------------------

_S3_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
# S3 answers 409 ConditionalRequestConflict when a conditional write races another write to the
# same key; AWS says to retry, and the retry then gets a definite 200 or 412.
_S3_CONFLICT_RETRIES = 5
# Compare-and-swap rounds before `update` gives up: each lost round means another writer won,
# so this only runs out under a sustained stampede on one key.
_S3_UPDATE_ATTEMPTS = 100


def _error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _http_status(err: ClientError) -> int | None:
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


# An unreachable store must fail a call within seconds, not after botocore's defaults (60 s
# connect and read timeouts, several retries): the API answers 503 within about 2 s and the
# workers retry with their own backoff. Big transfers are not limited by these: the read timeout
# is per socket read, not per object.
S3_CONNECT_TIMEOUT_S = float(os.environ.get("VIDEOGEN_S3_CONNECT_TIMEOUT_S", "1"))
S3_READ_TIMEOUT_S = float(os.environ.get("VIDEOGEN_S3_READ_TIMEOUT_S", "10"))
S3_MAX_ATTEMPTS = int(os.environ.get("VIDEOGEN_S3_MAX_ATTEMPTS", "2"))

# Throttling and server-side failures: transient, like a dropped connection.
_S3_TRANSIENT_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError", "Throttling"}
)


def _default_s3_client() -> Any:
    # boto3 itself reads credentials, region and AWS_ENDPOINT_URL(_S3). With a custom endpoint
    # (MinIO, Ceph, moto, ...) use path-style addressing: virtual-host style would need DNS for
    # "<bucket>.<host>", which such deployments rarely have.
    custom_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        connect_timeout=S3_CONNECT_TIMEOUT_S,
        read_timeout=S3_READ_TIMEOUT_S,
        retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
        s3={"addressing_style": "path"} if custom_endpoint else None,
    )
    return boto3.client("s3", config=config)


def _is_transient(err: Exception) -> bool:
    if isinstance(err, ClientError):
        status = _http_status(err) or 0
        return status >= 500 or status == 429 or _error_code(err) in _S3_TRANSIENT_CODES
    # Connection refused or reset, DNS, timeouts: botocore's network errors.
    return isinstance(
        err,
        (
            EndpointConnectionError,
            ConnectionClosedError,
            ReadTimeoutError,
            ConnectTimeoutError,
            HTTPClientError,
        ),
    )


class S3Store(ObjectStore):
    """Objects in an S3 bucket under a key prefix.

    The bucket must already exist (provisioning is not the application's job); `ensure_bucket`
    exists for dev tooling and tests. `page_size` (1..1000) sets how many keys one list request
    returns and one batch delete removes; tests lower it to exercise pagination cheaply.
    `transfer_config` tunes multipart uploads/downloads in put_file/get_to_file.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        client: Any | None = None,
        *,
        page_size: int = 1000,
        transfer_config: Any | None = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            reason = _key_problem(prefix, allow_trailing_slash=False)
            if reason:
                raise ValueError(f"invalid S3 key prefix {prefix!r}: {reason}")
        if not 1 <= page_size <= 1000:
            raise ValueError(f"page_size must be within 1..1000, got {page_size}")
        self._bucket = bucket
        self._prefix = prefix + "/" if prefix else ""
        self._client = client if client is not None else _default_s3_client()
        self._page_size = page_size
        self._transfer_config = transfer_config

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def prefix(self) -> str:
        """The key prefix, '' or ending in '/'."""
        return self._prefix

    @property
    def client(self) -> Any:
        return self._client

    def describe(self) -> str:
        return f"s3://{self._bucket}/{self._prefix.rstrip('/')}".rstrip("/")

    def presigned_get_url(self, key: str, ttl_s: float) -> str:
        """A URL anyone can GET the object with until it expires (S3 query-string auth)."""
        return str(
            self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self._bucket, "Key": self._key(key)},
                ExpiresIn=max(1, int(ttl_s)),
            )
        )

    def __repr__(self) -> str:
        return f"S3Store({self._bucket!r}, {self._prefix!r})"

    def _key(self, key: str) -> str:
        return self._prefix + validate_key(key)

    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Map boto errors: a missing object -> NotFound, anything else -> StorageError."""
        try:
            yield
        except (ClientError, BotoCoreError, Boto3Error) as e:
            raise self._error(action, key, e) from e

    def _error(self, action: str, key: str, err: Exception) -> StorageError:
        if isinstance(err, ClientError) and _error_code(err) in _S3_NOT_FOUND:
            return NotFound(key, self.describe())
        if _is_transient(err):
            return StoreUnavailable(
                f"cannot {action} {key!r}: {self.describe()} is unreachable ({err}); retry shortly"
            )
        return StorageError(f"cannot {action} {key!r} in {self.describe()}: {err}")

    # -- writes --------------------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        s3_key = self._key(key)
        extra: dict[str, str] = {"IfNoneMatch": "*"} if if_absent else {}
        for attempt in range(_S3_CONFLICT_RETRIES):
            try:
                self._client.put_object(Bucket=self._bucket, Key=s3_key, Body=data, **extra)
                return
            except ClientError as e:
                code = _error_code(e)
                if if_absent and (code == "PreconditionFailed" or _http_status(e) == 412):
                    raise AlreadyExists(key, self.describe()) from e
                if code == "ConditionalRequestConflict" and attempt + 1 < _S3_CONFLICT_RETRIES:
                    time.sleep(0.05 * (attempt + 1))
                    continue
                raise self._error("write", key, e) from e
            except (BotoCoreError, Boto3Error) as e:
                raise self._error("write", key, e) from e

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        s3_key = self._key(key)
        local = os.fspath(path)
        # upload_file would report a missing source as a generic upload failure; keep it the
        # caller's FileNotFoundError, as FileStore does.
        if not os.path.isfile(local):
            raise FileNotFoundError(f"no such file: {local!r}")
        with self._errors("write", key):
            # Multipart above the transfer threshold; the object appears only when the upload
            # completes, so this is as atomic as put().
            self._client.upload_file(local, self._bucket, s3_key, Config=self._transfer_config)

    def update(self, key: str, change: Callable[[bytes | None], bytes | None]) -> None:
        s3_key = self._key(key)
        for attempt in range(_S3_UPDATE_ATTEMPTS):
            current, etag = self._get_with_etag(key, s3_key)
            new = change(current)
            if new is None:
                return
            # If-Match: only over the version read; If-None-Match: only if still absent.
            cond = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
            try:
                self._client.put_object(Bucket=self._bucket, Key=s3_key, Body=new, **cond)
                return
            except ClientError as e:
                lost = _error_code(e) in ("PreconditionFailed", "ConditionalRequestConflict")
                if not (lost or _http_status(e) in (409, 412)):
                    raise self._error("write", key, e) from e
            except (BotoCoreError, Boto3Error) as e:
                raise self._error("write", key, e) from e
            # Lost a race: another writer got in between; read again after a jittered pause.
            time.sleep(random.uniform(0.002, 0.01) * min(attempt + 1, 10))
        raise StoreUnavailable(
            f"cannot update {key!r} in {self.describe()}: still contended after "
            f"{_S3_UPDATE_ATTEMPTS} attempts; retry shortly"
        )

    def _get_with_etag(self, key: str, s3_key: str) -> tuple[bytes | None, str | None]:
        try:
            resp = self._client.get_object(Bucket=self._bucket, Key=s3_key)
        except ClientError as e:
            if _error_code(e) in _S3_NOT_FOUND:
                return None, None
            raise self._error("read", key, e) from e
        except (BotoCoreError, Boto3Error) as e:
            raise self._error("read", key, e) from e
        with self._errors("read", key), resp["Body"] as body:
            return body.read(), str(resp["ETag"])

    # -- reads ---------------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        s3_key = self._key(key)
        with self._errors("read", key):
            resp = self._client.get_object(Bucket=self._bucket, Key=s3_key)
            with resp["Body"] as body:
                return body.read()

    def get_to_file(self, key: str, path: str | os.PathLike[str]) -> None:
        s3_key = self._key(key)
        dest = os.path.abspath(os.fspath(path))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with self._errors("read", key):
            # download_file writes a temp file and renames it, so `dest` is never half written;
            # it fetches ranges in parallel for big objects.
            self._client.download_file(self._bucket, s3_key, dest, Config=self._transfer_config)

    def iter_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        _check_chunk_size(chunk_size)
        s3_key = self._key(key)
        with self._errors("read", key):
            body = self._client.get_object(Bucket=self._bucket, Key=s3_key)["Body"]
        return self._body_chunks(key, body, chunk_size)

    def _body_chunks(self, key: str, body: Any, chunk_size: int) -> Iterator[bytes]:
        try:
            with self._errors("read", key):
                yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except NotFound:
            return False
        return True

    def size(self, key: str) -> int:
        s3_key = self._key(key)
        with self._errors("stat", key):
            head = self._client.head_object(Bucket=self._bucket, Key=s3_key)
        return int(head["ContentLength"])

    def list(self, prefix: str = "") -> list[str]:
        return sorted(self._iter_keys(prefix))

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        _validate_prefix(prefix)
        cut = len(self._prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self._bucket,
            Prefix=self._prefix + prefix,
            PaginationConfig={"PageSize": self._page_size},
        )
        with self._errors("list", prefix):
            for page in pages:
                for obj in page.get("Contents", ()):
                    yield obj["Key"][cut:]

    # -- deletes -------------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        s3_key = self._key(key)
        with self._errors("delete", key):
            self._client.delete_object(Bucket=self._bucket, Key=s3_key)

    def delete_prefix(self, prefix: str) -> int:
        if prefix == "":
            raise ValueError("delete_prefix needs a non-empty prefix (refusing to wipe the store)")
        # List everything first, then delete: deleting while paginating could make the listing
        # skip keys on servers whose continuation tokens are positional.
        keys = [self._prefix + k for k in self._iter_keys(prefix)]
        for start in range(0, len(keys), self._page_size):
            batch = keys[start : start + self._page_size]
            with self._errors("delete", prefix):
                resp = self._client.delete_objects(
                    Bucket=self._bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"cannot delete {len(errors)} object(s) under {prefix!r} in "
                    f"{self.describe()}, e.g. {first.get('Key')!r}: "
                    f"{first.get('Code')} {first.get('Message')}"
                )
        return len(keys)

    # -- provisioning (dev tooling and tests only) ----------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist. Not used by the services themselves."""
        try:
            self._client.head_bucket(Bucket=self._bucket)
            return
        except ClientError as e:
            if _error_code(e) not in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(f"cannot check bucket {self._bucket!r}: {e}") from e
        region = self._client.meta.region_name
        kwargs: dict[str, Any] = {}
        if region and region != "us-east-1":
            # us-east-1 is the one region that rejects an explicit LocationConstraint.
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(Bucket=self._bucket, **kwargs)
        except ClientError as e:
            if _error_code(e) != "BucketAlreadyOwnedByYou":  # lost a harmless race
                raise StorageError(f"cannot create bucket {self._bucket!r}: {e}") from e


# --------------------------------------------------------------------------------------------
# open_store
# --------------------------------------------------------------------------------------------

# A scheme needs at least two letters so that a Windows drive ("C:") is never taken for one.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


def open_store(url: str | os.PathLike[str]) -> ObjectStore:
    """Open the store named by `url`: 'file:///abs/dir', a plain path, or 's3://bucket/prefix'.

    A plain path may be relative (resolved against the current directory). A relative directory
    whose name contains ':' must be written with './' in front, or it reads as a URL scheme.
    """
    text = os.fspath(url)
    if not text:
        raise ValueError(f"empty storage URL; {_SUPPORTED}")
    match = _SCHEME.match(text)
    if match is None:
        return FileStore(os.path.abspath(text))
    scheme = match.group(1).lower()
    parts = urlsplit(text)
    if scheme not in ("file", "s3"):
        raise ValueError(f"unsupported storage URL scheme {scheme!r} in {text!r}; {_SUPPORTED}")
    if parts.query or parts.fragment:
        raise ValueError(f"storage URL {text!r} must not have a query or fragment; {_SUPPORTED}")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(
                f"file URL {text!r} names host {parts.netloc!r}; only local paths are supported, "
                "e.g. 'file:///var/lib/videogen/data'"
            )
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(
                f"file URL {text!r} must hold an absolute path, e.g. 'file:///var/lib/videogen/data'"
            )
        return FileStore(path)
    bucket = parts.netloc
    if not bucket:
        raise ValueError(f"S3 URL {text!r} has no bucket; expected e.g. 's3://my-bucket/videogen'")
    return S3Store(bucket, unquote(parts.path).strip("/"))
