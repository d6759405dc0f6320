"""One contract suite for every object-store backend: the real S3 server and file://."""

from __future__ import annotations

from pathlib import Path

import pytest

from reco_common.storage import FileStore, ObjectNotFoundError, ObjectStore, S3Store, open_store


@pytest.fixture(params=["s3", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        return FileStore((tmp_path / "root").as_uri())
    s3_store: S3Store = request.getfixturevalue("s3_store")
    return s3_store


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
    store.upload_file("blobs/big.bin", source)
    target = tmp_path / "back.bin"
    store.download_file("blobs/big.bin", target)
    assert target.read_bytes() == source.read_bytes()
    from reco_common.storage import file_sha256

    assert store.sha256("blobs/big.bin") == file_sha256(source)


def test_uris_name_the_object_and_reopen_the_same_store(store: ObjectStore, s3_settings) -> None:  # type: ignore[no-untyped-def]
    store.put_bytes("x/y.txt", b"hello")
    reopened = open_store(store.uri("x"), s3=s3_settings)
    assert reopened.get_bytes("y.txt") == b"hello"


def test_unknown_schemes_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported storage URI"):
        open_store("ftp://host/x")
