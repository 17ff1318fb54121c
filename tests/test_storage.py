"""Contract tests for videogen.storage, run identically against FileStore and S3Store.

The S3 variant talks HTTP to a real moto server (tests/s3server.py), so request signing,
pagination, conditional writes (a real 412) and multipart uploads are exercised end to end.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
from pathlib import Path

import pytest
import s3server
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from videogen import storage
from videogen.storage import (
    AlreadyExists,
    FileStore,
    NotFound,
    ObjectStore,
    S3Store,
    StorageError,
    open_store,
    validate_key,
)

# moto answers a request in ~5-10 ms over loopback, so >1000 keys (a real second list page at
# the default page size) costs ~20 s on 2 cores; S3 pagination is tested with a small page_size
# instead, and the full-size run is opt-in.

S3_PREFIX = "pfx/sub"


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.stack)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        return FileStore(tmp_path / "store")
    server: s3server.S3Server = request.getfixturevalue("moto_s3")
    # A fresh bucket per test, and a prefix so that key joining under it is always exercised.
    return S3Store(server.create_bucket(), S3_PREFIX, client=server.client())


@pytest.fixture
def fstore(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


class _Patched:
    """Stands in for a module inside videogen.storage only, with some attributes replaced.

    Patching `storage.os.fsync` directly would patch the real `os` for everyone (pytest too).
    """

    def __init__(self, module: object, **overrides: object) -> None:
        self._module = module
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> object:
        return getattr(self._module, name)


def _files_under(root: str) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


# --------------------------------------------------------------------------------------------
# contract: both backends
# --------------------------------------------------------------------------------------------


def test_is_an_object_store(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", bytes(range(256)), os.urandom(3 << 20)],
    ids=["empty", "small", "bin", "3MB"],
)
def test_put_get_roundtrip(store: ObjectStore, data: bytes) -> None:
    store.put("jobs/1/blob.bin", data)
    assert store.get("jobs/1/blob.bin") == data
    assert store.size("jobs/1/blob.bin") == len(data)
    assert store.exists("jobs/1/blob.bin")


def test_unicode_and_spaces_in_keys(store: ObjectStore) -> None:
    key = "jobs/ü ñ/vidéo 1 (final)+x.mp4"
    store.put(key, b"v")
    assert store.get(key) == b"v"
    assert store.list("jobs/") == [key]


def test_overwrite_replaces(store: ObjectStore) -> None:
    store.put("a/k", b"old content, longer")
    store.put("a/k", b"new")
    assert store.get("a/k") == b"new"
    assert store.size("a/k") == 3
    assert store.list() == ["a/k"]


def test_if_absent(store: ObjectStore) -> None:
    store.put("markers/done", b"first", if_absent=True)
    with pytest.raises(AlreadyExists) as info:
        store.put("markers/done", b"second", if_absent=True)
    assert "markers/done" in str(info.value)
    assert info.value.key == "markers/done"
    assert isinstance(info.value, StorageError)
    assert store.get("markers/done") == b"first"
    if isinstance(store, S3Store):
        # A real conditional write: moto answered 412 to If-None-Match: *.
        cause = info.value.__cause__
        assert isinstance(cause, ClientError)
        assert cause.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    else:
        assert store.list() == ["markers/done"]  # the losing write's temp file is gone
    # Without if_absent the same key is simply overwritten.
    store.put("markers/done", b"third")
    assert store.get("markers/done") == b"third"


def _increment(current: bytes | None) -> bytes:
    return str(int(current or b"0") + 1).encode()


def test_update_is_a_compare_and_swap(store: ObjectStore) -> None:
    # 4 threads x 15 increments of one counter: a lost update would show as a smaller total.
    def bump() -> None:
        for _ in range(15):
            store.update("ledgers/counter", _increment)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get("ledgers/counter") == b"60"


def test_update_can_decline_or_abort(store: ObjectStore) -> None:
    store.update("ledgers/x", lambda cur: None)  # no change: nothing is created
    assert not store.exists("ledgers/x")
    store.update("ledgers/x", lambda cur: b"one")
    assert store.get("ledgers/x") == b"one"

    def refuse(cur: bytes | None) -> bytes:
        raise ValueError("full")

    with pytest.raises(ValueError, match="full"):
        store.update("ledgers/x", refuse)
    assert store.get("ledgers/x") == b"one"
    assert store.list("ledgers/") == ["ledgers/x"]  # the lock files are not objects


def _bump_in_process(root: str, n: int, start_at: float) -> None:
    import time

    store = FileStore(root)
    time.sleep(max(0.0, start_at - time.time()))  # all processes at once, not one by one
    for _ in range(n):
        store.update("counter", _increment)


def test_file_update_holds_across_processes(tmp_path: Path) -> None:
    # Several API replicas on one host share a FileStore: the lock must hold between processes.
    import multiprocessing
    import time

    root = str(tmp_path / "store")
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 3
    procs = [ctx.Process(target=_bump_in_process, args=(root, 100, start_at)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert FileStore(root).get("counter") == b"300"


def _read_while_updated(root: str, until: float, out: list[str]) -> None:
    import time

    store = FileStore(root)
    seen = 0
    while time.time() < until:
        value = int(store.get("counter"))  # NotFound or a torn read would raise here
        assert value >= seen, (value, seen)
        assert store.exists("counter")
        seen = value
    out.append(str(seen))


def test_file_update_is_atomic_for_readers(tmp_path: Path) -> None:
    # An update moves the old file aside before it renames the new one in (no rename over a
    # file: ext4 flushes on that). A reader in that gap must wait for the update, not miss.
    import multiprocessing
    import time

    root = str(tmp_path / "store")
    store = FileStore(root)
    store.update("counter", _increment)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        out = manager.list()
        reader = ctx.Process(target=_read_while_updated, args=(root, time.time() + 4, out))
        reader.start()
        deadline = time.time() + 4
        while time.time() < deadline:
            store.update("counter", _increment)
        reader.join(30)
        assert reader.exitcode == 0 and len(out) == 1


def test_file_update_recovers_from_a_death_mid_swap(tmp_path: Path) -> None:
    # Killed between moving the old file aside and renaming the new one in: the old version
    # is still the object, for readers and for the next update.
    store = FileStore(tmp_path)
    store.update("ledgers/x", lambda cur: b"7")
    path = tmp_path / "ledgers" / "x"
    path.rename(path.parent / f"{storage.TEMP_MARKER}prev-x")
    assert store.get("ledgers/x") == b"7"
    assert store.exists("ledgers/x") and store.size("ledgers/x") == 1
    store.update("ledgers/x", _increment)
    assert store.get("ledgers/x") == b"8"
    assert os.listdir(path.parent) == ["x"]  # nothing left aside
    store.delete("ledgers/x")
    assert not store.exists("ledgers/x")


def test_missing_key(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound) as info:
        store.get("no/such/key")
    assert "no/such/key" in str(info.value)
    assert info.value.key == "no/such/key"
    assert isinstance(info.value, StorageError)
    assert store.describe() in str(info.value)
    with pytest.raises(NotFound):
        store.size("no/such/key")
    with pytest.raises(NotFound):
        store.iter_chunks("no/such/key")  # raised by the call, before any iteration
    dest = tmp_path / "out" / "dest.bin"
    with pytest.raises(NotFound):
        store.get_to_file("no/such/key", dest)
    assert not dest.exists()
    assert not store.exists("no/such/key")


def test_missing_key_below_existing_prefix(store: ObjectStore) -> None:
    store.put("dir/file", b"x")
    # "dir" is only a prefix of other objects, "dir/file/x" goes below an object: neither exists.
    for key in ("dir", "dir/file/x"):
        assert not store.exists(key)
        with pytest.raises(NotFound):
            store.get(key)
        with pytest.raises(NotFound):
            store.size(key)
        store.delete(key)  # no error, and nothing else removed
    assert store.list() == ["dir/file"]


def test_exists_and_size(store: ObjectStore) -> None:
    assert not store.exists("k")
    store.put("k", b"12345")
    assert store.exists("k")
    assert store.size("k") == 5


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put("a/b/c", b"x")
    store.put("a/b/d", b"y")
    store.delete("a/b/c")
    store.delete("a/b/c")
    store.delete("never/existed")
    assert not store.exists("a/b/c")
    assert store.list() == ["a/b/d"]


def test_delete_prefix(store: ObjectStore) -> None:
    keys = ["a/1", "a/2", "a/deep/er/3", "ab/1", "b/1", "b/a/1"]
    for key in keys:
        store.put(key, b"x")
    assert store.delete_prefix("a/") == 3
    assert store.list() == ["ab/1", "b/1", "b/a/1"]
    assert store.delete_prefix("a/") == 0
    assert store.delete_prefix("nothing/") == 0
    # Plain string prefix, as on S3: "b" matches "b/..." (and would match "bc").
    assert store.delete_prefix("b") == 2
    assert store.list() == ["ab/1"]
    with pytest.raises(ValueError, match="non-empty"):
        store.delete_prefix("")
    assert store.list() == ["ab/1"]


def test_list_sorted_and_filtered(store: ObjectStore) -> None:
    keys = ["jobs/2/out.mp4", "jobs/10/out.mp4", "jobs/1/a", "jobs/1/b/c", "jobsx", "zeta", "Z"]
    shuffled = keys[:]
    random.Random(0).shuffle(shuffled)
    for key in shuffled:
        store.put(key, b"")
    assert store.list() == sorted(keys)
    assert store.list("jobs/") == sorted(k for k in keys if k.startswith("jobs/"))
    assert store.list("jobs") == sorted(k for k in keys if k.startswith("jobs"))
    assert store.list("jobs/1") == ["jobs/1/a", "jobs/1/b/c", "jobs/10/out.mp4"]
    assert store.list("jobs/1/") == ["jobs/1/a", "jobs/1/b/c"]
    assert store.list("jobs/1/b/c") == ["jobs/1/b/c"]
    assert store.list("nope/") == []
    assert store.list("jobsx/") == []  # a prefix "below" an object


def test_put_file_and_get_to_file(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom((3 << 20) + 17)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    store.put_file("videos/v.mp4", src)
    store.put_file("videos/v2.mp4", str(src))
    assert store.size("videos/v.mp4") == len(data)
    assert store.get("videos/v2.mp4") == data
    dest = tmp_path / "new" / "dir" / "dest.bin"
    store.get_to_file("videos/v.mp4", dest)
    assert dest.read_bytes() == data
    dest.write_bytes(b"stale and longer than nothing")
    store.put("videos/empty", b"")
    store.get_to_file("videos/empty", dest)  # replaces an existing local file
    assert dest.read_bytes() == b""
    assert sorted(os.listdir(dest.parent)) == ["dest.bin"]  # no temp files left behind
    with pytest.raises(FileNotFoundError):
        store.put_file("videos/x", tmp_path / "missing.bin")
    assert not store.exists("videos/x")


def test_iter_chunks(store: ObjectStore) -> None:
    data = os.urandom(300_000)
    store.put("big", data)
    chunks = list(store.iter_chunks("big", chunk_size=64 * 1024))
    assert b"".join(chunks) == data
    assert all(0 < len(c) <= 64 * 1024 for c in chunks)
    assert len(chunks) >= 5
    assert b"".join(store.iter_chunks("big")) == data
    store.put("empty", b"")
    assert b"".join(store.iter_chunks("empty")) == b""
    with pytest.raises(ValueError):
        store.iter_chunks("big", chunk_size=0)


BAD_KEYS = [
    "",
    "/abs",
    "a/",
    "a//b",
    "..",
    "../x",
    "a/../b",
    "a/..",
    ".",
    "a/./b",
    "a\\b",
    "..\\x",
    "a\x00b",
    "a\nb",
    "x" * 1025,
    f"a/{storage.TEMP_MARKER}123",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_rejected(store: ObjectStore, key: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x")
    operations = [
        lambda: store.put(key, b"x"),
        lambda: store.put(key, b"x", if_absent=True),
        lambda: store.put_file(key, src),
        lambda: store.get(key),
        lambda: store.get_to_file(key, tmp_path / "dest"),
        lambda: store.iter_chunks(key),
        lambda: store.exists(key),
        lambda: store.size(key),
        lambda: store.delete(key),
    ]
    for operation in operations:
        with pytest.raises(ValueError) as info:
            operation()
        assert repr(key) in str(info.value)
    assert store.list() == []


@pytest.mark.parametrize("prefix", ["/a", "../", "a//", "a/../", "a\\"])
def test_invalid_prefixes_rejected(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        store.list(prefix)
    with pytest.raises(ValueError, match="prefix"):
        store.delete_prefix(prefix)


def test_validate_key() -> None:
    assert validate_key("jobs/1/video.mp4") == "jobs/1/video.mp4"
    assert validate_key(".hidden/..dots../x.") == ".hidden/..dots../x."
    with pytest.raises(ValueError, match="'a//b'"):
        validate_key("a//b")


# --------------------------------------------------------------------------------------------
# FileStore specifics
# --------------------------------------------------------------------------------------------


def test_filestore_layout_and_describe(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "new" / "root")  # created on demand
    store.put("a/b/c.txt", b"hi")
    assert (tmp_path / "new" / "root" / "a" / "b" / "c.txt").read_bytes() == b"hi"
    assert store.describe() == (tmp_path / "new" / "root").resolve().as_uri()
    assert store.describe().startswith("file:///")
    assert store.root == str((tmp_path / "new" / "root").resolve())


def test_filestore_cannot_escape_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    store = FileStore(tmp_path / "root")
    for key in ("../outside/secret", "a/../../outside/secret", "/etc/passwd", "..\\outside"):
        with pytest.raises(ValueError):
            store.get(key)
        with pytest.raises(ValueError):
            store.put(key, b"x")
    with pytest.raises(ValueError):
        store.list("../")
    # A symlink planted inside the root must not become a way out either.
    os.symlink(outside, tmp_path / "root" / "link")
    with pytest.raises(ValueError, match="outside"):
        store.get("link/secret")
    with pytest.raises(ValueError, match="outside"):
        store.put("link/new", b"x")
    with pytest.raises(ValueError, match="outside"):
        store.list("link/")
    assert sorted(os.listdir(outside)) == ["secret"]
    assert (outside / "secret").read_bytes() == b"secret"


def test_filestore_failed_write_keeps_old_content(
    fstore: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fstore.put("ckpt/latest", b"old checkpoint")

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    # The new bytes are written, then the "disk" fails before the rename publishes them.
    monkeypatch.setattr(storage, "os", _Patched(os, fsync=failing_fsync))
    with pytest.raises(StorageError, match="No space left"):
        fstore.put("ckpt/latest", b"new checkpoint, never published")
    with pytest.raises(StorageError):
        fstore.put("ckpt/other", b"never published either")
    monkeypatch.undo()
    assert fstore.get("ckpt/latest") == b"old checkpoint"
    assert not fstore.exists("ckpt/other")
    assert fstore.list() == ["ckpt/latest"]
    assert _files_under(fstore.root) == ["ckpt/latest"]  # temp files cleaned up


def test_filestore_write_failing_midway(fstore: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    fstore.put("v", b"A" * 1000)

    def copy_half_then_fail(src, dst, length=0):  # type: ignore[no-untyped-def]
        dst.write(src.read(500))
        raise OSError(5, "Input/output error")

    src = fstore.root + "-src"
    Path(src).write_bytes(b"B" * 1000)
    monkeypatch.setattr(storage, "shutil", _Patched(shutil, copyfileobj=copy_half_then_fail))
    with pytest.raises(StorageError, match="Input/output"):
        fstore.put_file("v", src)
    monkeypatch.undo()
    assert fstore.get("v") == b"A" * 1000
    assert _files_under(fstore.root) == ["v"]


def test_filestore_crash_leftovers_are_invisible(
    fstore: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer killed between write and rename leaves a temp file; nobody may see it."""
    fstore.put("jobs/1/frame", b"old")

    def crash(*args: object) -> None:
        raise KeyboardInterrupt  # stands in for SIGKILL: no chance to clean up...

    # ...and the cleanup never runs, so the temp file stays.
    monkeypatch.setattr(storage, "os", _Patched(os, replace=crash, unlink=lambda path: None))
    with pytest.raises(KeyboardInterrupt):
        fstore.put("jobs/1/frame", b"new, never published")
    monkeypatch.undo()
    leftovers = [f for f in _files_under(fstore.root) if storage.TEMP_MARKER in f]
    assert len(leftovers) == 1  # the simulated crash really left a temp file on disk
    assert fstore.list() == ["jobs/1/frame"]
    assert fstore.list("jobs/1/") == ["jobs/1/frame"]
    assert fstore.get("jobs/1/frame") == b"old"
    assert fstore.delete_prefix("jobs/") == 1


def test_filestore_readers_never_see_partial_writes(fstore: FileStore) -> None:
    a, b = b"a" * 200_000, b"b" * 300_000
    fstore.put("k", a)
    seen: set[bytes] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data = fstore.get("k")
            seen.add(data[:1] + str(len(data)).encode())
            assert data in (a, b)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(60):
            fstore.put("k", a if i % 2 else b)
    finally:
        stop.set()
        thread.join()
    assert seen <= {b"a200000", b"b300000"}


def test_filestore_if_absent_race_has_one_winner(fstore: FileStore) -> None:
    winners: list[int] = []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            fstore.put("once", str(i).encode(), if_absent=True)
            winners.append(i)
        except AlreadyExists:
            pass

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert fstore.get("once") == str(winners[0]).encode()
    assert _files_under(fstore.root) == ["once"]


def test_filestore_prunes_empty_directories(fstore: FileStore) -> None:
    fstore.put("jobs/1/a/b", b"x")
    fstore.put("jobs/2/c", b"x")
    fstore.delete("jobs/1/a/b")
    assert sorted(os.listdir(os.path.join(fstore.root, "jobs"))) == ["2"]
    assert fstore.delete_prefix("jobs/") == 1
    assert os.listdir(fstore.root) == []
    fstore.put("jobs/1/again", b"y")  # directories are recreated on demand
    assert fstore.list() == ["jobs/1/again"]


def test_filestore_object_vs_directory_conflict(fstore: FileStore) -> None:
    # S3 allows both "a" and "a/b"; a directory tree cannot, and says so clearly.
    fstore.put("a", b"x")
    with pytest.raises(StorageError):
        fstore.put("a/b", b"y")
    fstore.put("c/d", b"y")
    with pytest.raises(StorageError):
        fstore.put("c", b"x")
    assert fstore.list() == ["a", "c/d"]
    assert _files_under(fstore.root) == ["a", "c/d"]


def test_filestore_new_files_follow_umask(fstore: FileStore) -> None:
    old = os.umask(0o022)
    try:
        fstore.put("perm", b"x")
    finally:
        os.umask(old)
    assert os.stat(os.path.join(fstore.root, "perm")).st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------------------------
# S3Store specifics
# --------------------------------------------------------------------------------------------


class _CallCounter:
    """Counts S3 API calls made through a client (botocore event hook)."""

    def __init__(self, client: object) -> None:
        self.calls: list[str] = []
        client.meta.events.register("before-call.s3.*", self._record)  # type: ignore[attr-defined]

    def _record(self, model: object, **_: object) -> None:
        self.calls.append(model.name)  # type: ignore[attr-defined]

    def count(self, name: str) -> int:
        return self.calls.count(name)


def test_s3_pagination_and_batched_delete(moto_s3: s3server.S3Server) -> None:
    bucket = moto_s3.create_bucket()
    client = s3server.make_client(moto_s3.endpoint_url)  # own client: own event hooks
    store = S3Store(bucket, "p", client=client, page_size=10)
    keys = [f"k/{i:03d}" for i in range(25)]
    for key in reversed(keys):
        store.put(key, b"")
    store.put("other/1", b"")
    counter = _CallCounter(client)
    assert store.list("k/") == keys
    assert counter.count("ListObjectsV2") == 3  # 10 + 10 + 5
    assert store.delete_prefix("k/") == 25
    assert counter.count("DeleteObjects") == 3
    assert store.list() == ["other/1"]


def test_s3_prefix_isolation(moto_s3: s3server.S3Server) -> None:
    bucket = moto_s3.create_bucket()
    client = moto_s3.client()
    one = S3Store(bucket, "tenant/one", client=client)
    two = S3Store(bucket, "/tenant/one-two/", client=client)  # slashes normalised away
    root = S3Store(bucket, "", client=client)
    one.put("a", b"1")
    two.put("a", b"2")
    assert one.get("a") == b"1"
    assert one.list() == ["a"]
    assert two.list() == ["a"]
    assert root.list() == ["tenant/one-two/a", "tenant/one/a"]
    assert one.delete_prefix("a") == 1
    assert two.get("a") == b"2"
    assert one.describe() == f"s3://{bucket}/tenant/one"
    assert two.describe() == f"s3://{bucket}/tenant/one-two"
    assert root.describe() == f"s3://{bucket}"
    assert client.get_object(Bucket=bucket, Key="tenant/one-two/a")["Body"].read() == b"2"


def test_s3_multipart_put_file(moto_s3: s3server.S3Server, tmp_path: Path) -> None:
    bucket = moto_s3.create_bucket()
    five_mb = 5 << 20  # S3's (and moto's) minimum part size
    config = TransferConfig(multipart_threshold=five_mb, multipart_chunksize=five_mb)
    store = S3Store(bucket, "mp", client=moto_s3.client(), transfer_config=config)
    data = os.urandom(2 * five_mb + 123)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    store.put_file("big.bin", src)
    head = moto_s3.client().head_object(Bucket=bucket, Key="mp/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # really uploaded in 3 parts
    store.get_to_file("big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data


def test_s3_missing_bucket_is_an_error_not_missing_key(moto_s3: s3server.S3Server) -> None:
    store = S3Store(s3server.unique_bucket_name("absent"), "", client=moto_s3.client())
    with pytest.raises(StorageError) as info:
        store.get("k")
    assert not isinstance(info.value, NotFound)
    assert "NoSuchBucket" in str(info.value)
    with pytest.raises(StorageError, match="NoSuchBucket"):
        store.put("k", b"x")


def test_s3_ensure_bucket(moto_s3: s3server.S3Server) -> None:
    store = S3Store(s3server.unique_bucket_name("ensure"), "x", client=moto_s3.client())
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    store.put("k", b"v")
    assert store.get("k") == b"v"


def test_s3_endpoint_from_environment(
    moto_s3: s3server.S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in moto_s3.env.items():
        monkeypatch.setenv(name, value)
    for name in s3server.CLEAR_ENV:
        monkeypatch.delenv(name, raising=False)
    bucket = moto_s3.create_bucket()
    store = open_store(f"s3://{bucket}/env/prefix")  # no client: boto3 reads AWS_* itself
    assert isinstance(store, S3Store)
    assert store.client.meta.endpoint_url == moto_s3.endpoint_url
    store.put("k", b"via env", if_absent=True)
    assert store.get("k") == b"via env"
    obj = moto_s3.client().get_object(Bucket=bucket, Key="env/prefix/k")
    assert obj["Body"].read() == b"via env"
    assert open_store(store.describe()).list() == ["k"]  # describe() round-trips


def test_s3_more_than_1000_keys(moto_s3: s3server.S3Server) -> None:
    store = S3Store(moto_s3.create_bucket(), "many", client=moto_s3.client())
    keys = [f"k/{i:05d}" for i in range(1100)]
    for key in keys:
        store.put(key, b"")
    assert store.list() == keys
    assert store.delete_prefix("k/") == 1100
    assert store.list() == []


# --------------------------------------------------------------------------------------------
# open_store
# --------------------------------------------------------------------------------------------


def test_open_store_file_urls_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data dir"
    real = str(root.resolve())
    for url in (
        f"file://{root}",
        f"file://localhost{root}",
        root.as_uri(),  # percent-encoded space
        f"file:{root}",
        str(root),
        root,
    ):
        store = open_store(url)
        assert isinstance(store, FileStore), url
        assert store.root == real, url
    monkeypatch.chdir(tmp_path)
    store = open_store("rel/dir")
    assert isinstance(store, FileStore)
    assert store.root == str((tmp_path / "rel" / "dir").resolve())
    odd = open_store("./odd:name")
    assert isinstance(odd, FileStore)
    assert odd.root.endswith("odd:name")
    assert open_store(store.describe()).describe() == store.describe()


def test_open_store_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    # Constructing a client does no network I/O; dummy settings keep boto3 off any real config.
    for name, value in s3server.s3_env("http://127.0.0.1:9").items():
        monkeypatch.setenv(name, value)
    for name in s3server.CLEAR_ENV:
        monkeypatch.delenv(name, raising=False)
    cases = {
        "s3://bucket": ("bucket", ""),
        "s3://bucket/": ("bucket", ""),
        "s3://bucket/videogen": ("bucket", "videogen/"),
        "s3://bucket/a/b/": ("bucket", "a/b/"),
        "S3://bucket/x": ("bucket", "x/"),
    }
    for url, (bucket, prefix) in cases.items():
        store = open_store(url)
        assert isinstance(store, S3Store), url
        assert (store.bucket, store.prefix) == (bucket, prefix), url
    assert open_store("s3://bucket/a/b/").describe() == "s3://bucket/a/b"


@pytest.mark.parametrize(
    "url",
    [
        "gs://bucket/x",
        "http://example.com/x",
        "https://h/x",
        "ftp://h/x",
        "azure:container",
        "mem:",
    ],
)
def test_open_store_unsupported_scheme(url: str) -> None:
    with pytest.raises(ValueError) as info:
        open_store(url)
    message = str(info.value)
    assert "unsupported" in message
    assert url.split(":")[0] in message
    assert "file://" in message
    assert "s3://" in message
    assert "s3://my-bucket/videogen" in message  # an example to copy


@pytest.mark.parametrize(
    "url",
    [
        "",
        "s3://",
        "s3:///prefix",
        "s3://bucket/a//b",
        "s3://bucket/../x",
        "s3://bucket/x?versionId=1",
        "file://otherhost/data",
        "file:relative/path",
    ],
)
def test_open_store_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        open_store(url)


def test_holding_takes_every_lock_or_none(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    with store.holding(["a", "b"]) as held:
        assert held is not None
        held.update("a", lambda raw: b"1")
        with pytest.raises(StorageError, match="without its lock"):
            held.update("c", lambda raw: b"1")
        # Another holder, in this process or another, is refused at once, not kept waiting.
        with store.holding(["b", "c"]) as other:
            assert other is None
        got: list[bool] = []
        waiter = threading.Thread(target=lambda: store.update("a", lambda raw: (raw or b"") + b"2"))
        waiter.start()
        waiter.join(0.3)
        got.append(waiter.is_alive())  # a blocking update waits for the holder
    waiter.join(5)
    assert got == [True] and store.get("a") == b"12"
    with store.holding(["b", "c"]) as free:  # released, including the partly taken ones
        assert free is not None
