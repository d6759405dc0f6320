"""The object-store backends every storage test runs against: the real S3 server and file://."""

from __future__ import annotations

from pathlib import Path

import pytest

from reco_common.storage import ObjectStore, open_store


@pytest.fixture(params=["s3", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        return open_store((tmp_path / "root").as_uri())
    s3_store: ObjectStore = request.getfixturevalue("s3_store")
    return s3_store
