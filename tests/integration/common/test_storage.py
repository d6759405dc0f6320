"""One contract suite for every object-store backend: the real S3 server and file://."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from reco_common.settings import S3Settings
from reco_common.storage import (
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectStore,
    file_sha256,
    open_store,
)


def test_put_get_list_and_delete(store: ObjectStore) -> None:
    store.put_bytes("a/one.json", b"1")
    store.put_bytes("a/two.json", b"22")
    store.put_bytes("b/three.json", b"333")
    assert store.get_bytes("a/two.json") == b"22"
    assert store.list("a/") == ["a/one.json", "a/two.json"]
    assert store.list() == ["a/one.json", "a/two.json", "b/three.json"]
    assert store.exists("b/three.json")
    store.delete("b/three.json")
    assert not store.exists("b/three.json")


def test_missing_objects_raise_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes("nope")
    with pytest.raises(ObjectNotFoundError):
        store.download_file("nope", Path("/tmp/never-written"))
    assert store.list("nope/") == []


def test_files_round_trip_with_their_checksum(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(range(256)) * 40_000)  # ~10 MB: multipart on S3
    sent = store.upload_file("blobs/big.bin", source)
    target = tmp_path / "back.bin"
    received = store.download_file("blobs/big.bin", target)
    assert target.read_bytes() == source.read_bytes()
    assert sent == received == store.sha256("blobs/big.bin") == file_sha256(source)
    assert store.put_bytes("small", b"abc") == store.sha256("small")
    assert not list(tmp_path.glob(".tmp-*"))


def test_keys_stay_below_the_root(store: ObjectStore) -> None:
    store.put_bytes("a/../b.txt", b"b")
    assert store.list() == ["b.txt"]
    with pytest.raises(ValueError, match="escapes the store root"):
        store.put_bytes("../outside", b"x")


def test_uris_name_the_object_and_reopen_the_same_store(
    store: ObjectStore, s3_settings: S3Settings
) -> None:
    store.put_bytes("x/y.txt", b"hello")
    reopened = open_store(store.uri("x"), s3=s3_settings)
    assert reopened.get_bytes("y.txt") == b"hello"


def test_unknown_schemes_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported storage URI"):
        open_store("ftp://host/x")


def test_a_write_once_object_is_created_once(store: ObjectStore) -> None:
    assert store.create_bytes("once/manifest.json", b"first") == store.sha256("once/manifest.json")
    with pytest.raises(ObjectExistsError):
        store.create_bytes("once/manifest.json", b"second")
    assert store.get_bytes("once/manifest.json") == b"first"
    assert store.list("once/") == ["once/manifest.json"], "no temporary file is left"


def test_of_racing_creators_exactly_one_wins(store: ObjectStore) -> None:
    """Check-then-write let both believe they wrote it; the exclusive create does not."""
    contenders = [f"writer-{n}".encode() for n in range(8)]

    def create(data: bytes) -> bytes | None:
        try:
            store.create_bytes("race/manifest.json", data)
        except ObjectExistsError:
            return None
        return data

    with ThreadPoolExecutor(max_workers=len(contenders)) as pool:
        winners = [w for w in pool.map(create, contenders) if w is not None]
    assert len(winners) == 1
    assert store.get_bytes("race/manifest.json") == winners[0]
