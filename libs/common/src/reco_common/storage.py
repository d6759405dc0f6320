"""Object storage behind one small interface, chosen by URI: ``s3://bucket/prefix`` or ``file:///dir``.

A store is a root URI on a :mod:`pyarrow.fs` filesystem (``S3FileSystem`` with the configured
endpoint, region and credentials, or ``LocalFileSystem``); keys are ``/``-separated paths below
the root. Writes are atomic per object (S3 by nature, local files through a temporary name and
a rename) and return the sha256 of the bytes written, so callers hash while they write. S3
requests are retried by the AWS SDK's standard strategy. Calls are blocking: async callers wrap
them in ``asyncio.to_thread``.

Deleting the last object of an S3 "directory" leaves a ``dir/`` marker object (pyarrow keeps
the parent directory alive); :meth:`ObjectStore.list` shows objects only.

Write-once objects (an artifact's manifest, its commit point) go through
:meth:`ObjectStore.create_bytes`: an exclusive create, so that two writers (or a writer and a
re-run) can never both believe they wrote it. pyarrow has no conditional put, so on S3 this one
call is botocore's ``PutObject`` with ``If-None-Match: *`` (the server answers 412 when the key
exists: AWS S3 since 2024, VersityGW, tested on the local one); on ``file://`` the temporary
file is hard-linked to its name, which fails if the name exists.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import posixpath
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from reco_common.settings import S3Settings

if TYPE_CHECKING:  # imported where used: only a write-once put needs botocore (~0.3 s to import)
    from botocore.client import BaseClient

_CHUNK = 1 << 20
_TMP = ".tmp-"


class ObjectNotFoundError(FileNotFoundError):
    """No object at that key."""


class ObjectExistsError(FileExistsError):
    """A write-once object is already there."""


# S3's answers to a conditional put whose condition does not hold (412), or that raced another
# conditional write of the same key (409): either way, this writer did not create the object.
_EXISTS_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


class ObjectStore:
    """Objects below one root URI on a pyarrow filesystem (see :func:`open_store`)."""

    def __init__(
        self,
        root_uri: str,
        filesystem: pafs.FileSystem,
        base: str,
        *,
        s3: S3Settings | None = None,
    ) -> None:
        self.root_uri = root_uri.rstrip("/")
        self._fs = filesystem
        self._base = base.rstrip("/")
        self._local = isinstance(filesystem, pafs.LocalFileSystem)
        self._s3 = s3

    def uri(self, key: str) -> str:
        """The absolute URI of ``key``."""
        return f"{self.root_uri}/{key.lstrip('/')}" if key else self.root_uri

    def below(self, prefix: str) -> ObjectStore:
        """The store rooted at ``prefix`` (same filesystem and credentials)."""
        return ObjectStore(self.uri(prefix), self._fs, self._path(prefix), s3=self._s3)

    def _path(self, key: str) -> str:
        relative = posixpath.normpath(key.lstrip("/"))
        if relative == ".." or relative.startswith("../"):
            raise ValueError(f"key {key!r} escapes the store root {self.root_uri}")
        return self._base if relative == "." else f"{self._base}/{relative}"

    def put_bytes(self, key: str, data: bytes) -> str:
        """Store ``data`` at ``key``; return its sha256."""
        return self._write(key, pa.BufferReader(data))

    def create_bytes(self, key: str, data: bytes) -> str:
        """Store ``data`` at ``key`` only if no object is there (write-once); return its sha256.
        ``ObjectExistsError`` if one is."""
        if self._local:
            return self._create_local(self._path(key), data)
        from botocore.exceptions import ClientError

        bucket, _, name = self._path(key).partition("/")
        try:
            _s3_client(self._s3 or S3Settings()).put_object(
                Bucket=bucket, Key=name, Body=data, IfNoneMatch="*"
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _EXISTS_CODES:
                raise ObjectExistsError(self.uri(key)) from None
            raise
        return hashlib.sha256(data).hexdigest()

    def _create_local(self, path: str, data: bytes) -> str:
        parent = posixpath.dirname(path)
        self._fs.create_dir(parent, recursive=True)
        temporary = f"{parent}/{_TMP}{uuid.uuid4().hex}"
        try:
            stream = self._fs.open_output_stream(temporary, compression=None)
            digest = _copy(pa.BufferReader(data), stream)
            os.link(temporary, path)  # atomic, and refused when ``path`` exists
        except FileExistsError:
            raise ObjectExistsError(path) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        return digest

    def upload_file(self, key: str, path: Path) -> str:
        """Store the file at ``path`` under ``key``; return the sha256 of what was sent."""
        with path.open("rb") as source:
            return self._write(key, source)

    def _write(self, key: str, source: BinaryIO | pa.NativeFile) -> str:
        path = self._path(key)
        if not self._local:
            return _copy(source, self._fs.open_output_stream(path, compression=None))
        parent = posixpath.dirname(path)
        self._fs.create_dir(parent, recursive=True)
        temporary = f"{parent}/{_TMP}{uuid.uuid4().hex}"
        try:
            digest = _copy(source, self._fs.open_output_stream(temporary, compression=None))
            self._fs.move(temporary, path)
        except Exception:
            with contextlib.suppress(FileNotFoundError):
                self._fs.delete_file(temporary)
            raise
        return digest

    def get_bytes(self, key: str) -> bytes:
        with self._open(key, whole=True) as file:
            return bytes(file.read())

    def download_file(self, key: str, path: Path) -> str:
        """Copy the object at ``key`` to ``path`` (atomically: a reader never sees half a file);
        return the sha256 of what was received."""
        temporary = path.with_name(f"{_TMP}{uuid.uuid4().hex}")
        try:
            with self._open(key) as stream, temporary.open("wb") as target:
                digest = hashlib.sha256()
                while chunk := stream.read(_CHUNK):
                    digest.update(chunk)
                    target.write(chunk)
            temporary.replace(path)
        finally:
            temporary.unlink(missing_ok=True)
        return digest.hexdigest()

    def sha256(self, key: str) -> str:
        """Digest of the stored object, streamed back from the store (not from a local copy)."""
        digest = hashlib.sha256()
        with self._open(key) as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def _open(self, key: str, *, whole: bool = False) -> pa.NativeFile:
        """A stream of the object, or (``whole``) a file of known size: one read of it all."""
        try:
            if whole:
                return self._fs.open_input_file(self._path(key))
            return self._fs.open_input_stream(self._path(key), compression=None)
        except FileNotFoundError:
            raise ObjectNotFoundError(self.uri(key)) from None

    def exists(self, key: str) -> bool:
        return self._fs.get_file_info(self._path(key)).type is pafs.FileType.File

    def list(self, prefix: str = "") -> list[str]:
        """Keys below ``prefix``, sorted, relative to the store's root."""
        return sorted(k for k in self._walk(prefix.rpartition("/")[0]) if k.startswith(prefix))

    def _walk(self, directory: str) -> Iterator[str]:
        selector = pafs.FileSelector(self._path(directory), recursive=True, allow_not_found=True)
        for info in self._fs.get_file_info(selector):
            if info.type is pafs.FileType.File and not info.base_name.startswith(_TMP):
                yield info.path[len(self._base) + 1 :]

    def delete(self, key: str) -> None:
        try:
            self._fs.delete_file(self._path(key))
        except FileNotFoundError:
            return


def _copy(source: BinaryIO | pa.NativeFile, target: pa.NativeFile) -> str:
    digest = hashlib.sha256()
    with target:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            target.write(chunk)
    return digest.hexdigest()


def open_store(uri: str, *, s3: S3Settings | None = None) -> ObjectStore:
    """The store rooted at ``uri``: ``s3://bucket[/prefix]`` or ``file:///abs/dir``."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return ObjectStore(uri, pafs.LocalFileSystem(), unquote(parsed.path) or "/")
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"{uri!r}: an s3:// URI must name a bucket (s3://bucket/prefix)")
        base = f"{parsed.netloc}/{parsed.path.strip('/')}"
        settings = s3 or S3Settings()
        return ObjectStore(uri, s3_filesystem(settings), base, s3=settings)
    raise ValueError(f"{uri!r}: unsupported storage URI (use s3://bucket/prefix or file:///dir)")


def s3_filesystem(settings: S3Settings) -> pafs.S3FileSystem:
    """The (shared) pyarrow S3 filesystem for ``settings``."""
    secret = settings.secret_key.get_secret_value() if settings.secret_key else None
    return _s3_filesystem(settings.endpoint_url, settings.region, settings.access_key, secret)


@functools.lru_cache(maxsize=8)
def _s3_filesystem(
    endpoint: str | None, region: str, access_key: str | None, secret_key: str | None
) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(
        access_key=access_key,
        secret_key=secret_key,
        region=region,
        endpoint_override=endpoint,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=5),
    )


def _s3_client(settings: S3Settings) -> BaseClient:
    """The (shared) botocore S3 client for ``settings``: only for what pyarrow cannot do."""
    secret = settings.secret_key.get_secret_value() if settings.secret_key else None
    return _cached_s3_client(settings.endpoint_url, settings.region, settings.access_key, secret)


@functools.lru_cache(maxsize=8)
def _cached_s3_client(
    endpoint: str | None, region: str, access_key: str | None, secret_key: str | None
) -> BaseClient:
    import botocore.session
    from botocore.config import Config

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard"}),
    )


def as_uri(location: str) -> str:
    """A URI for ``location``: URIs pass through, plain paths become ``file://`` URIs."""
    if urlparse(location).scheme in {"file", "s3"}:
        return location
    return Path(location).resolve().as_uri()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
