from __future__ import annotations

import numpy as np
import pytest

from reco_common.id_lookup import DICT_MAX_IDS, IdDict, IdLookup, IdLookupError, for_serving


def test_ids_are_found_at_their_rows_and_unknown_ids_are_not() -> None:
    ids = ["i10", "i2", "é-ü", "i1", "a" * 300]
    lookup = IdLookup.build(ids)
    assert lookup.rows_of(ids).tolist() == [0, 1, 2, 3, 4]
    unknown = ["i", "i100", "i10 ", "a" * 301, "a" * 299, "", "zzz"]
    assert lookup.rows_of(unknown).tolist() == [-1] * len(unknown)
    assert lookup.get("é-ü") == 2
    assert lookup.get("nope") is None
    assert "i1" in lookup
    assert "i" not in lookup
    assert lookup.rows_of([]).tolist() == []


def test_an_id_with_a_nul_is_never_found() -> None:
    """An S column drops trailing NULs: ``"i1\\0"`` must not be taken for ``"i1"``."""
    lookup = IdLookup.build(["i1", "i2"])
    assert lookup.rows_of(["i1\0", "i2", "\0"]).tolist() == [-1, 1, -1]


@pytest.mark.parametrize("ids", [["a", "b", "a"], ["a", ""], ["a", "b\0"]])
def test_ids_that_a_lookup_cannot_tell_apart_are_refused(ids: list[str]) -> None:
    with pytest.raises(IdLookupError):
        IdLookup.build(ids)


def test_an_empty_lookup_finds_nothing() -> None:
    assert IdLookup.build([]).rows_of(["a"]).tolist() == [-1]


def test_check_refuses_a_lookup_of_other_ids_or_rows() -> None:
    ids = ["b", "a", "c"]
    lookup = IdLookup.build(ids)
    lookup.check(ids)
    with pytest.raises(IdLookupError, match="does not hold"):
        lookup.check(["b", "a", "d"])
    swapped = IdLookup(lookup.keys, lookup.rows[::-1].copy())
    with pytest.raises(IdLookupError, match="does not hold"):
        swapped.check(ids)


def test_arrays_that_are_not_a_lookup_are_refused() -> None:
    with pytest.raises(IdLookupError, match="bytes"):
        IdLookup(np.array(["a"]), np.array([0]))
    with pytest.raises(IdLookupError, match="1 keys but 2 rows"):
        IdLookup(np.array([b"a"]), np.array([0, 1]))


@pytest.mark.parametrize("n", [DICT_MAX_IDS, DICT_MAX_IDS + 1])
def test_serving_finds_the_same_rows_through_a_dict_or_the_keys(n: int) -> None:
    ids = [f"i{k}" for k in range(n)]
    rows = for_serving(IdLookup.build(ids), ids)
    assert isinstance(rows, IdDict if n <= DICT_MAX_IDS else IdLookup)
    assert rows.rows_of(["i7", f"i{n - 1}", "i", f"i{n}"]).tolist() == [7, n - 1, -1, -1]
    assert rows.get("i3") == 3
    assert "i3" in rows
    assert "x" not in rows
    assert len(rows) == n


def test_check_refuses_unsorted_keys_rows_out_of_range_and_bad_ids() -> None:
    lookup = IdLookup.build(["b", "a", "c"])
    with pytest.raises(IdLookupError, match="sorted and unique"):
        IdLookup(lookup.keys[::-1].copy(), lookup.rows[::-1].copy()).check(["b", "a", "c"])
    with pytest.raises(IdLookupError, match="3 rows"):
        IdLookup(lookup.keys, np.array([0, 1, 3])).check(["b", "a", "c"])
    with pytest.raises(IdLookupError, match="2 rows"):
        lookup.check(["a", "b"])
    with pytest.raises(IdLookupError, match="NUL"):
        lookup.check(["b\0", "a", "c"])
