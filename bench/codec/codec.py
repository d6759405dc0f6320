"""The contract codec: msgspec (what reco_common.contracts uses) against pydantic and orjson.

    uv run python bench/codec/codec.py [--number 20000] [--rounds 5]

Encodes and decodes the two hottest contract values: a ``RecommendationList`` of 100 items (the
worker writes one per user per batch, the API reads one per request) and a ``UserAction`` (the
worker decodes every event). ``pydantic`` is the same contract as a pydantic v2 model (built
from the struct's fields) in pydantic-core's JSON mode (``model_validate_json`` / ``to_json``: no
Python dict in between), what the contracts were before; it checks slightly less (not the
weight's bounds nor the timestamp's timezone, which the old models checked with a Python
validator). ``orjson, fields picked`` is how the API read the stored list before
(``orjson.loads`` into a dict and the four fields picked by name, no validation). Process CPU time, best of ``--rounds``; prints a Markdown table in µs per call.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
from msgspec import Struct
from pydantic import BaseModel, ConfigDict, create_model

from reco_common.contracts import ActionType, RecommendationList, UserAction, decode, encode

ITEMS = 100


def pydantic_twin(struct: type[Struct]) -> type[BaseModel]:
    """The same contract as a pydantic model: the struct's fields, types and defaults (pydantic
    applies the ``Field`` rules of the identifier aliases; it ignores msgspec's ``Meta``)."""
    fields: dict[str, Any] = {
        f.name: (f.type, ... if f.required else f.default) for f in msgspec.structs.fields(struct)
    }
    config = ConfigDict(extra="forbid")
    return create_model(f"Pydantic{struct.__name__}", __config__=config, **fields)


PydanticList = pydantic_twin(RecommendationList)
PydanticAction = pydantic_twin(UserAction)


def cases() -> dict[str, dict[str, Callable[[], object]]]:
    """Per value, per codec: one encode and one decode call."""
    now = datetime.now(UTC)
    listed = RecommendationList(
        model_version="20261130-bd00420228a6",
        computed_at=now,
        event_id="e-123456",
        event_ts=now,
        items=[f"i{rank}" for rank in range(ITEMS)],
        scores=[2.5 - rank / 100 for rank in range(ITEMS)],
    )
    action = UserAction(
        event_id="e-123456", user_id="u-42", item_id="i-7", action=ActionType.CLICK, ts=now
    )
    raw_list, raw_action = encode(listed), encode(action)
    p_list = PydanticList.model_validate_json(raw_list)
    p_action = PydanticAction.model_validate_json(raw_action)
    fields = ("model_version", "computed_at", "items", "scores")
    return {
        f"RecommendationList, {ITEMS} items": {
            "msgspec encode": lambda: encode(listed),
            "msgspec decode": lambda: decode(RecommendationList, raw_list),
            "pydantic encode": lambda: p_list.__pydantic_serializer__.to_json(p_list),
            "pydantic decode": lambda: PydanticList.model_validate_json(raw_list),
            "orjson, fields picked decode": lambda: _pick(raw_list, fields),
        },
        "UserAction": {
            "msgspec encode": lambda: encode(action),
            "msgspec decode": lambda: decode(UserAction, raw_action),
            "pydantic encode": lambda: p_action.__pydantic_serializer__.to_json(p_action),
            "pydantic decode": lambda: PydanticAction.model_validate_json(raw_action),
        },
    }


def _pick(raw: bytes, fields: tuple[str, ...]) -> list[object]:
    value = orjson.loads(raw)
    return [value[name] for name in fields]


def cpu_us(call: Callable[[], object], *, number: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(number):
            call()
        best = min(best, time.process_time() - started)
    return best / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print("| value | codec, operation | CPU µs/call |")
    print("|---|---|---:|")
    for value, calls in cases().items():
        for name, call in calls.items():
            us = cpu_us(call, number=args.number, rounds=args.rounds)
            print(f"| {value} | {name} | {us:.2f} |")


if __name__ == "__main__":
    main()
