from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from reco_common.interactions import InteractionsError, read_interactions
from reco_trainer import dataset
from reco_trainer.dataset import Vocab
from reco_trainer.params import SplitKind, TrainParams, Weighting


def _log(tmp_path: Path, rows: list[str], header: str = "user_id,item_id,timestamp,action"):  # type: ignore[no-untyped-def]
    path = tmp_path / "log.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return read_interactions(str(path))


def test_temporal_split_holds_out_the_newest(tmp_path: Path) -> None:
    log = _log(tmp_path, [f"u{n % 3},i{n},{100 - n},view" for n in range(10)])
    parts = dataset.split(log, kind=SplitKind.AUTO, fraction=0.3, seed=0)
    assert parts.kind is SplitKind.TEMPORAL
    assert parts.held_out.timestamps().min() >= parts.train.timestamps().max()
    assert len(parts.held_out) == 3


def test_random_split_is_seeded_and_used_without_timestamps(tmp_path: Path) -> None:
    log = _log(tmp_path, [f"u{n % 3},i{n}" for n in range(20)], header="user_id,item_id")
    a = dataset.split(log, kind=SplitKind.AUTO, fraction=0.25, seed=4)
    b = dataset.split(log, kind=SplitKind.RANDOM, fraction=0.25, seed=4)
    assert a.kind is SplitKind.RANDOM
    assert a.held_out.table.equals(b.held_out.table)
    assert len(a.held_out) == 5
    with pytest.raises(InteractionsError, match="temporal split needs a timestamp"):
        dataset.split(log, kind=SplitKind.TEMPORAL, fraction=0.25, seed=4)


def test_a_split_with_an_empty_side_is_refused(tmp_path: Path) -> None:
    log = _log(tmp_path, ["u,i,1,view"])
    with pytest.raises(InteractionsError, match="one side would be empty"):
        dataset.split(log, kind=SplitKind.TEMPORAL, fraction=0.2, seed=0)


def test_matrix_sums_weights_and_drops_unknown_ids(tmp_path: Path) -> None:
    log = _log(tmp_path, ["u1,i1,1,view", "u1,i1,2,purchase", "u2,i2,3,cart", "u3,i1,4,view"])
    users = Vocab(pa.array(["u1", "u2"]))
    items = Vocab(pa.array(["i1", "i2"]))
    m = dataset.matrix(log, users, items)
    assert m.toarray().tolist() == [[9.0, 0.0], [0.0, 4.0]]
    assert users.codes(pa.chunked_array([["u2", "zz"]])).tolist() == [1, -1]


def test_lightfm_input_is_binary_with_transformed_weights(tmp_path: Path) -> None:
    log = _log(tmp_path, ["u1,i1,1,purchase", "u1,i2,2,view"])
    m = dataset.matrix(log, Vocab.of(log.user_ids()), Vocab.of(log.item_ids()))
    logged = dataset.lightfm_input(m, Weighting.LOG)
    assert logged.interactions.data.tolist() == [1.0, 1.0]
    assert logged.weights.data.tolist() == pytest.approx([np.log1p(8.0), np.log1p(1.0)])
    assert dataset.lightfm_input(m, Weighting.LINEAR).weights.data.tolist() == [8.0, 1.0]


def test_feature_matrix_is_identity_plus_one_hot_normalised() -> None:
    vocab = Vocab(pa.array(["i1", "i2", "i3"]))
    table = pa.table({"item_id": ["i2", "i1", "other"], "category": ["c1", "c1", "c2"]})
    m = dataset.feature_matrix(vocab, table, id_column="item_id")
    assert m is not None
    dense = m.toarray()
    assert dense.shape == (3, 4)  # 3 identity columns + "category=c1"
    assert dense[0].tolist() == [0.5, 0.0, 0.0, 0.5]
    assert dense[2].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert dataset.feature_matrix(vocab, None, id_column="item_id") is None


def test_prepare_builds_fit_validation_and_test_on_the_fit_vocabulary(tmp_path: Path) -> None:
    rows = [f"u{n % 4},i{n % 7},{n},view" for n in range(40)]
    log = _log(tmp_path, rows)
    parts = dataset.split(log, kind=SplitKind.TEMPORAL, fraction=0.2, seed=0)
    params = TrainParams(validation_fraction=0.25)
    prepared = dataset.prepare(parts.train, parts.held_out, params, SplitKind.TEMPORAL)
    assert prepared.validation is not None
    assert prepared.fit.shape == prepared.test.shape == (len(prepared.users), len(prepared.items))
    assert prepared.known_at_test.nnz >= prepared.fit.nnz
    no_validation = dataset.prepare(
        parts.train, parts.held_out, TrainParams(validation_fraction=0), SplitKind.TEMPORAL
    )
    assert no_validation.validation is None


def test_the_validation_split_holds_out_a_share_of_every_user(tmp_path: Path) -> None:
    rows = [f"u{n % 4},i{n},{n},view" for n in range(40)]  # 10 interactions per user
    log = _log(tmp_path, rows)
    newest = dataset.split_per_user(log, kind=SplitKind.TEMPORAL, fraction=0.2, seed=0)
    held = newest.held_out.table.to_pylist()
    assert sorted(r["item_id"] for r in held) == sorted(f"i{n}" for n in range(32, 40))
    shuffled = dataset.split_per_user(log, kind=SplitKind.RANDOM, fraction=0.2, seed=0)
    users = [r["user_id"] for r in shuffled.held_out.table.to_pylist()]
    assert sorted(users) == ["u0", "u0", "u1", "u1", "u2", "u2", "u3", "u3"]
    assert len(shuffled.train) == 32
