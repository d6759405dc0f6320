from __future__ import annotations

import csv
import gzip
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reco_common.contracts import ActionType, UserAction
from reco_common.interactions import (
    InteractionsError,
    LogFormat,
    action_weight_map,
    actions_table,
    column_map,
    format_of,
    is_log_file,
    read_features,
    read_interactions,
    write_log,
)


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_csv_with_header_rating_and_timestamp_is_sorted_by_time(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "log.csv", "user_id,item_id,rating,timestamp\n1,10,4,200\n\n2,11,3.5,100\n"
    )
    log = read_interactions(path)
    assert log.table.column("user_id").to_pylist() == ["2", "1"]
    assert log.table.column("item_id").to_pylist() == ["11", "10"]
    assert log.weights().tolist() == [3.5, 4.0]
    assert log.weights().dtype == np.float32
    assert log.timestamps().tolist() == [100.0, 200.0]
    assert log.sources[0].uri == Path(path).as_uri()
    assert log.sources[0].rows == 2


def test_tsv_without_weights_gets_action_weights_and_default_one(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "log.tsv",
        "user_id\titem_id\taction\nu1\ti1\tpurchase\nu1\ti2\t\nu2\ti1\tCLICK\n",
    )
    log = read_interactions(path)
    assert not log.has_timestamps
    assert log.weights().tolist() == [8.0, 1.0, 2.0]
    assert log.table.column("action").to_pylist() == ["purchase", None, "click"]
    custom = read_interactions(path, action_weights={"purchase": 3.0, "click": 0.5})
    assert custom.weights().tolist() == [3.0, 1.0, 0.5]


def test_explicit_weight_overrides_the_action_weight(tmp_path: Path) -> None:
    path = _write(tmp_path / "log.csv", "user_id,item_id,action,weight\nu,i,view,5\nu,j,cart,\n")
    assert read_interactions(path).weights().tolist() == [5.0, 4.0]


def test_movielens_u_data_headerless_layout(tmp_path: Path) -> None:
    path = _write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    log = read_interactions(path)
    assert log.table.column("user_id").to_pylist() == ["196", "186"]
    assert log.weights().tolist() == [3.0, 3.0]
    assert log.timestamps().tolist() == [881250949.0, 891717742.0]


def test_jsonl_accepts_int_ids_iso_and_millisecond_times(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "log.jsonl",
        '{"user_id": 7, "item_id": "a", "ts": "2026-01-01T00:00:10Z", "action": "cart"}\n'
        "\n"
        '{"user_id": "u2", "item_id": 3, "timestamp": 1767225600000}\n'
        '{"user_id": "u3", "item_id": "b", "ts": "2026-01-01T00:00:20", "weight": "2"}\n',
    )
    log = read_interactions(path)
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert log.timestamps().tolist() == [start, start + 10, start + 20]
    assert log.table.column("user_id").to_pylist() == ["u2", "7", "u3"]
    assert log.weights().tolist() == [1.0, 4.0, 2.0]


def test_parquet_with_integer_ids_and_timestamp_type(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    when = [datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)]
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1, 2], pa.int64()),
                "item_id": pa.array(["x", "y"]),
                "rating": pa.array([1, 2], pa.int32()),
                "timestamp": pa.array(when, pa.timestamp("ms", tz="UTC")),
            }
        ),
        path,
    )
    log = read_interactions(str(path))
    assert log.table.column("user_id").to_pylist() == ["2", "1"]
    assert log.timestamps().tolist() == [w.timestamp() for w in reversed(when)]


def test_gzip_and_directory_reading_skips_private_names(tmp_path: Path) -> None:
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(b"user_id,item_id\nu1,i1\n"))
    _write(tmp_path / "b.csv", "user_id,item_id\nu2,i2\n")
    (tmp_path / "_offsets").mkdir()
    _write(tmp_path / "_offsets" / "c.csv", "garbage")
    _write(tmp_path / "notes.json", "{}")
    log = read_interactions(tmp_path.as_uri())
    assert log.table.column("user_id").to_pylist() == ["u1", "u2"]
    assert [s.uri.rsplit("/", 1)[1] for s in log.sources] == ["a.csv.gz", "b.csv"]


def test_several_locations_concatenate_and_sort(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", "user_id,item_id,timestamp\nu1,i1,30\n")
    b = _write(tmp_path / "b.csv", "user_id,item_id,timestamp\nu2,i2,10\n")
    log = read_interactions([a, b])
    assert log.table.column("user_id").to_pylist() == ["u2", "u1"]
    assert len(log) == 2


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.csv", "user_id,item_id\nu1,i1\nu2\n", "a.csv: line 3: expected 2 fields"),
        ("a.csv", "user_id,item_id\nu1,i1\n\nu2,\n", "line 4, column 'item_id': empty id"),
        ("a.csv", "user_id,item_id,weight\nu,i,1\nu,j,abc\n", "line 3, column 'weight': 'abc'"),
        ("a.csv", "user_id,item_id,weight\nu,i,-1\n", "line 2, column 'weight': weight must"),
        ("a.csv", "user_id,item_id,timestamp\nu,i,1\nu,i,noon\n", "line 3, column 'ts': 'noon'"),
        ("a.csv", "user_id,item_id,timestamp\nu,i,1\nu,i,\n", "line 3, column 'ts': missing"),
        ("a.csv", "user_id,item_id,action\nu,i,view\nu,i,buy\n", "line 3, column 'action'"),
        ("a.csv", "user,item\nu,i\n", "line 1: no header naming 'user_id'"),
        ("a.csv", "user_id,product\nu,i\n", "line 1: missing column 'item_id'"),
        ("a.csv", "user_id,item_id\n", "no interactions"),
        ("a.jsonl", '{"user_id": "u", "item_id": "i"}\n{"user_id": \n', "a.jsonl: line 2: invalid"),
        ("a.jsonl", '{"user_id": "u", "item_id": "i"}\n[1]\n', "line 2: expected a JSON object"),
        ("a.jsonl", '{"user_id": "u", "item_id": "i"}\n\n{"user_id": "u"}\n', "line 3, column"),
        ("a.jsonl", '{"user_id": "u", "item_id": 1.5}\n', "line 1, column 'item_id'"),
        ("a.jsonl", '{"user_id": "u", "item_id": "i", "weight": "x"}\n', "column 'weight'"),
        ("a.jsonl", '{"user_id": "u"}\n', "line 1: missing field 'item_id'"),
        ("a.xml", "<x/>", "unknown interaction file type"),
        ("a.parquet", "not parquet", "not a readable Parquet file"),
        ("a.csv.gz", "not gzip", "not a valid gzip file"),
    ],
)
def test_malformed_input_names_file_line_and_column(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = _write(tmp_path / name, text)
    with pytest.raises(InteractionsError, match=message.replace("(", r"\(")) as err:
        read_interactions(path)
    assert name.split(".")[0] in str(err.value)


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"user_id": ["u", None], "item_id": ["i", "j"]}), path)
    with pytest.raises(InteractionsError, match=r"a.parquet: row 2, column 'user_id': missing id"):
        read_interactions(str(path))
    pq.write_table(pa.table({"user_id": [1.5], "item_id": ["i"]}), path)
    with pytest.raises(InteractionsError, match="ids must be strings or integers"):
        read_interactions(str(path))


def test_missing_location_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InteractionsError, match="no interaction files there"):
        read_interactions(str(tmp_path / "nothing"))


@pytest.mark.parametrize("fmt", [LogFormat.CSV, LogFormat.TSV, LogFormat.JSONL, LogFormat.PARQUET])
def test_write_log_round_trips_every_format(tmp_path: Path, fmt: LogFormat) -> None:
    actions = [
        UserAction(
            event_id=f"e{n}",
            user_id=f"u{n % 2}",
            item_id=f"i{n}",
            action=ActionType.CART if n else ActionType.VIEW,
            weight=2.5 if n == 2 else None,
            ts=datetime(2026, 1, 1, 0, 0, n, 250_000, tzinfo=UTC),
        )
        for n in range(3)
    ]
    uri = write_log(actions_table(actions), str(tmp_path / f"log.{fmt.value}.gz"), fmt=fmt)
    log = read_interactions(uri, fmt=fmt)
    assert log.table.column("event_id").to_pylist() == ["e0", "e1", "e2"]
    assert log.table.column("action").to_pylist() == ["view", "cart", "cart"]
    assert log.weights().tolist() == [1.0, 4.0, 2.5]
    assert log.timestamps().tolist() == pytest.approx([a.ts.timestamp() for a in actions])


def test_take_keeps_sources(tmp_path: Path) -> None:
    log = read_interactions(_write(tmp_path / "a.csv", "user_id,item_id\nu,i\nv,j\n"))
    assert log.take(np.array([False, True])).table.column("user_id").to_pylist() == ["v"]
    assert log.take(np.array([1, 0])).sources == log.sources


def test_format_of_ignores_gz_and_case() -> None:
    assert format_of("s3://b/x/LOG.CSV.gz") is LogFormat.CSV
    assert format_of("ml-100k/u.data") is LogFormat.MOVIELENS
    assert format_of("a.ndjson") is LogFormat.JSONL


def test_read_features_from_csv_and_jsonl(tmp_path: Path) -> None:
    csv_path = _write(tmp_path / "items.csv", "item_id,category,brand\ni1,c1,b\ni2,,b\n")
    features = read_features(csv_path, id_column="item_id")
    assert features.table.column("category").to_pylist() == ["c1", None]
    assert features.sources[0].rows == 2
    jsonl = _write(
        tmp_path / "users.jsonl", '{"user_id": 7, "segment": "a"}\n\n{"user_id": "u8"}\n'
    )
    users = read_features(jsonl, id_column="user_id")
    assert users.table.column("user_id").to_pylist() == ["7", "u8"]
    assert users.table.column("segment").to_pylist() == ["a", None]


def test_read_features_names_the_bad_row(tmp_path: Path) -> None:
    path = _write(tmp_path / "items.csv", "item_id,category\ni1,c1\n,c2\n")
    with pytest.raises(InteractionsError, match=r"items\.csv: line 3, column 'item_id'"):
        read_features(path, id_column="item_id")
    with pytest.raises(InteractionsError, match="missing column 'item_id'"):
        read_features(_write(tmp_path / "x.csv", "id,category\ni1,c1\n"), id_column="item_id")
    with pytest.raises(InteractionsError, match=r"bad\.jsonl: line 2: invalid JSON"):
        read_features(
            _write(tmp_path / "bad.jsonl", '{"item_id": 1}\n{oops\n'), id_column="item_id"
        )


def test_is_log_file_skips_private_and_unknown_names() -> None:
    assert is_log_file("abc/actions.parquet")
    assert is_log_file("x.csv.gz")
    assert not is_log_file("_offsets/trainer.json")
    assert not is_log_file("000-ab/_range.json")
    assert not is_log_file(".tmp-x.csv")
    assert not is_log_file("notes.txt")


MOVIELENS = Path(__file__).parents[2] / "data" / "movielens" / "ratings-slice.csv"
MOVIELENS_COLUMNS = "user=userId,item=movieId,weight=rating,timestamp=timestamp"


def test_a_real_dataset_reads_with_a_column_map_and_a_threshold() -> None:
    with MOVIELENS.open() as fh:
        rows = list(csv.DictReader(fh))
    positives = [r for r in rows if float(r["rating"]) >= 4]
    log = read_interactions(str(MOVIELENS), columns=column_map(MOVIELENS_COLUMNS), min_weight=4)
    assert len(log) == len(positives) < len(rows)
    assert log.weights().min() >= 4
    assert sorted(log.timestamps().tolist()) == sorted(float(r["timestamp"]) for r in positives)
    assert set(log.user_ids().to_pylist()) == {r["userId"] for r in positives}
    everything = read_interactions(str(MOVIELENS), columns={"user": "userid", "item": "MOVIEID"})
    assert len(everything) == len(rows)
    assert sorted(everything.weights().tolist()) == sorted(float(r["rating"]) for r in rows)


def test_unmapped_real_dataset_and_bad_maps_name_file_and_column(tmp_path: Path) -> None:
    with pytest.raises(
        InteractionsError, match=r"ratings-slice\.csv: line 1: no header .*--columns"
    ):
        read_interactions(str(MOVIELENS))
    with pytest.raises(InteractionsError, match=r"no column 'uid' \(mapped to 'user_id'\)"):
        read_interactions(str(MOVIELENS), columns={"user": "uid", "item": "movieId"})
    path = _write(tmp_path / "r.csv", "userId,movieId,rating\n1,2,4\n1,3,good\n")
    with pytest.raises(
        InteractionsError,
        match=r"r\.csv: line 3, column 'weight' \(column 'rating' in the file\): 'good'",
    ):
        read_interactions(path, columns=column_map("user=userId,item=movieId,weight=rating"))
    with pytest.raises(ValueError, match="COLUMN one of"):
        column_map("colour=red")
    with pytest.raises(ValueError, match="COLUMN=FILE_COLUMN pairs"):
        column_map("user")


def test_a_map_also_reads_files_already_in_our_layout(tmp_path: Path) -> None:
    path = _write(tmp_path / "ours.csv", "user_id,item_id\nu,i\n")
    log = read_interactions(path, columns={"user": "userId", "item": "movieId"})
    assert log.user_ids().to_pylist() == ["u"]


def test_per_action_weights_for_any_action_names_and_a_threshold(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "events.csv",
        "visitor,product,event\n1,a,view\n1,b,addtocart\n2,a,transaction\n2,c,view\n",
    )
    log = read_interactions(
        path,
        columns={"user": "visitor", "item": "product", "action": "event"},
        action_weights={"view": 1, "addtocart": 3, "transaction": 5},
        min_weight=3,
    )
    assert log.item_ids().to_pylist() == ["b", "a"]
    assert log.weights().tolist() == [3.0, 5.0]
    with pytest.raises(InteractionsError, match=r"line 3, column 'action' \(column 'event'"):
        read_interactions(path, columns={"user": "visitor", "item": "product", "action": "event"})


def test_jsonl_keeps_ids_that_look_like_dates_and_reads_well_typed_files_in_bulk(
    tmp_path: Path,
) -> None:
    path = _write(
        tmp_path / "d.jsonl",
        '{"user_id": "2026-01-01", "item_id": "i", "ts": "2026-01-01T00:00:10Z"}\n'
        "  \n"
        '{"user_id": "2026-01-02", "item_id": "j", "ts": "2026-01-01T00:00:20+01:00"}\n',
    )
    log = read_interactions(path)
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert log.user_ids().to_pylist() == ["2026-01-02", "2026-01-01"]
    assert log.timestamps().tolist() == [start + 20 - 3600, start + 10]
    path = _write(tmp_path / "e.jsonl", '{"user_id": "u", "item_id": "i", "weight": true}\n')
    with pytest.raises(InteractionsError, match=r"e\.jsonl: line 1, column 'weight': True"):
        read_interactions(path)


def test_any_action_name_weighs_as_mapped_and_bad_entries_are_named(tmp_path: Path) -> None:
    assert action_weight_map(["view=1", " like = 2.5", "purchase=5"]) == {
        "view": 1.0,
        "like": 2.5,
        "purchase": 5.0,
    }
    path = _write(tmp_path / "log.csv", "user_id,item_id,action\nu,a,like\nu,b,play\nv,a,like\n")
    log = read_interactions(path, action_weights={"like": 3, "play": 0.5})
    assert log.weights().tolist() == [3.0, 0.5, 3.0]
    with pytest.raises(InteractionsError, match=r"log\.csv: line 3.*unknown action 'play'"):
        read_interactions(path, action_weights={"like": 3})
    for bad, why in [
        ("purchase", "expected ACTION=WEIGHT"),
        ("=3", "action name is empty"),
        ("like=lots", "not a number"),
        ("like=0", "positive number"),
        ("like=-1", "positive number"),
        ("like=nan", "positive number"),
    ]:
        with pytest.raises(ValueError, match=why):
            action_weight_map([bad])
    with pytest.raises(ValueError, match="positive number"):
        read_interactions(path, action_weights={"like": -1, "play": 1})
