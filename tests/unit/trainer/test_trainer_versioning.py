from __future__ import annotations

from reco_common.interactions import LogSource
from reco_trainer.params import TrainParams
from reco_trainer.versioning import data_fingerprint, model_version

A = LogSource(uri="file:///a.csv", sha256="aa", rows=3)
B = LogSource(uri="s3://b/b.parquet", sha256="bb", rows=5)


def test_fingerprint_depends_on_content_not_location_or_order() -> None:
    moved = LogSource(uri="s3://elsewhere/a.csv", sha256="aa", rows=3)
    assert data_fingerprint([A, B]) == data_fingerprint([B, moved])
    assert data_fingerprint([A, B]) != data_fingerprint([A])
    assert data_fingerprint([A]).startswith("sha256:")


def test_version_is_deterministic_and_names_data_and_params() -> None:
    params = TrainParams().identity()
    one = model_version(data="sha256:x", params=params, newest_ts=1_767_225_600.0)
    assert one == model_version(data="sha256:x", params=params, newest_ts=1_767_225_600.0)
    assert one.startswith("20260101-")
    assert one != model_version(data="sha256:y", params=params, newest_ts=1_767_225_600.0)
    other = TrainParams(components=16).identity()
    assert one != model_version(data="sha256:x", params=other, newest_ts=1_767_225_600.0)
    assert "-" not in model_version(data="sha256:x", params=params, newest_ts=None)


def test_threads_do_not_change_the_version() -> None:
    assert TrainParams(threads=1).identity() == TrainParams(threads=8).identity()
