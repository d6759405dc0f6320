"""Object storage behind one small interface, chosen by URI: ``s3://bucket/prefix`` or ``file:///dir``.

A store is rooted at a URI; keys are ``/``-separated paths below it. Writes are atomic per
object (S3 by nature, files through a temporary name and ``os.replace``). Calls are blocking:
async callers wrap them in ``asyncio.to_thread``.
"""

from __future__ import annotations

import abc
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from reco_common.settings import S3Settings

_CHUNK = 1 << 20


class ObjectNotFoundError(FileNotFoundError):
    """No object at that key."""


class ObjectStore(abc.ABC):
    """Objects below one root URI."""

    def __init__(self, root_uri: str) -> None:
        self.root_uri = root_uri.rstrip("/")

    def uri(self, key: str) -> str:
        """The absolute URI of ``key``."""
        return f"{self.root_uri}/{key.lstrip('/')}" if key else self.root_uri

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abc.abstractmethod
    def upload_file(self, key: str, path: Path) -> None: ...

    @abc.abstractmethod
    def download_file(self, key: str, path: Path) -> None: ...

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys below ``prefix``, sorted, relative to the store's root."""

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    def sha256(self, key: str) -> str:
        """Digest of the stored object, read back from the store (not from a local copy)."""
        with tempfile.TemporaryDirectory(prefix="reco-sha-") as tmp:
            path = Path(tmp) / "object"
            self.download_file(key, path)
            return file_sha256(path)


class FileStore(ObjectStore):
    """A directory on a local or mounted filesystem: the embedded default for local runs."""

    def __init__(self, root_uri: str) -> None:
        super().__init__(root_uri)
        self.root = Path(unquote(urlparse(root_uri).path))

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in (path, *path.parents):
            raise ValueError(f"key {key!r} escapes the store root {self.root}")
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, path)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(self.uri(key)) from None

    def upload_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with (
            tempfile.NamedTemporaryFile(dir=target.parent, prefix=".tmp-", delete=False) as tmp,
            path.open("rb") as src,
        ):
            shutil.copyfileobj(src, tmp, _CHUNK)
        os.replace(tmp.name, target)

    def download_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise ObjectNotFoundError(self.uri(key))
        shutil.copyfile(source, path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(k for k in self._walk() if k.startswith(prefix))

    def _walk(self) -> Iterator[str]:
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if not name.startswith(".tmp-"):
                    yield (Path(dirpath) / name).relative_to(self.root).as_posix()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Store(ObjectStore):
    """A bucket and prefix on any S3-compatible endpoint, through boto3."""

    def __init__(self, root_uri: str, settings: S3Settings) -> None:
        super().__init__(root_uri)
        parsed = urlparse(root_uri)
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        secret = settings.secret_key.get_secret_value() if settings.secret_key else None
        self._s3 = boto3.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            aws_access_key_id=settings.access_key,
            aws_secret_access_key=secret,
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"},
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key.lstrip('/')}" if self.prefix else key.lstrip("/")

    def put_bytes(self, key: str, data: bytes) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as exc:
            raise _not_found_or(exc, self.uri(key)) from None
        data: bytes = body.read()
        return data

    def upload_file(self, key: str, path: Path) -> None:
        self._s3.upload_file(str(path), self.bucket, self._key(key))

    def download_file(self, key: str, path: Path) -> None:
        try:
            self._s3.download_file(self.bucket, self._key(key), str(path))
        except ClientError as exc:
            raise _not_found_or(exc, self.uri(key)) from None

    def exists(self, key: str) -> bool:
        try:
            self._s3.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _is_not_found(exc):
                return False
            raise
        return True

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=full
        ):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=self._key(key))


def _is_not_found(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}


def _not_found_or(exc: ClientError, uri: str) -> Exception:
    return ObjectNotFoundError(uri) if _is_not_found(exc) else exc


def open_store(uri: str, *, s3: S3Settings | None = None) -> ObjectStore:
    """The store rooted at ``uri``: ``s3://bucket[/prefix]`` or ``file:///abs/dir``."""
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return FileStore(uri)
    if scheme == "s3":
        if not urlparse(uri).netloc:
            raise ValueError(f"{uri!r}: an s3:// URI must name a bucket (s3://bucket/prefix)")
        return S3Store(uri, s3 or S3Settings())
    raise ValueError(f"{uri!r}: unsupported storage URI (use s3://bucket/prefix or file:///dir)")


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
