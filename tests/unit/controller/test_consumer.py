"""The batch handler: the newest event per model wins; different models are handled together."""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka import ConsumerRecord

from reco_common.contracts import EvalMetrics, ModelPublished, encode
from reco_common.kafka import Delivery
from reco_controller.consumer import PublishedModels
from reco_controller.rollout import Decision

METRICS = EvalMetrics(model={"p": 0.2}, baseline={"p": 0.1})


def _delivery(model: str, version: str, offset: int) -> Delivery[ModelPublished]:
    event = ModelPublished(
        model_name=model,
        version=version,
        artifact_uri=f"s3://reco/models/{model}/{version}",
        created_at=datetime.now(UTC),
        metrics=METRICS,
    )
    record = ConsumerRecord(
        topic="model-published",
        partition=0,
        offset=offset,
        timestamp=1_700_000_000_000 + offset,
        timestamp_type=0,
        key=model.encode(),
        value=encode(event),
        checksum=None,
        serialized_key_size=len(model),
        serialized_value_size=0,
        headers=(),
    )
    return Delivery(record, event)


class RecordingRollouts:
    def __init__(self) -> None:
        self.handled: list[tuple[str, float | None]] = []

    async def handle(
        self, event: ModelPublished, *, force: bool = False, published_at: float | None = None
    ) -> Decision:
        assert not force
        self.handled.append((event.version, published_at))
        return Decision.ROLLED_OUT


async def test_the_newest_event_of_each_model_is_handled_once() -> None:
    rollouts = RecordingRollouts()
    batch = [
        _delivery("shop", "v1", 0),
        _delivery("books", "b1", 1),
        _delivery("shop", "v2", 2),
        _delivery("shop", "v3", 3),
    ]
    rejections = await PublishedModels(rollouts)(batch)  # type: ignore[arg-type]
    assert rejections == []
    assert sorted(rollouts.handled) == [("b1", 1_700_000_000.001), ("v3", 1_700_000_000.003)]
