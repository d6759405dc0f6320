"""The ``model-published`` consumer: each batch is decided and carried out before its commit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from reco_common.contracts import ModelPublished
from reco_common.kafka import Delivery, EventConsumer, Rejection
from reco_common.metrics import ConsumerMetrics
from reco_common.settings import KafkaSettings
from reco_controller.metrics import SERVICE
from reco_controller.rollout import Rollouts

logger = logging.getLogger(__name__)


class PublishedModels:
    """The batch handler: the newest event per model wins, models roll out side by side."""

    def __init__(self, rollouts: Rollouts) -> None:
        self._rollouts = rollouts

    async def __call__(self, batch: Sequence[Delivery[ModelPublished]]) -> Sequence[Rejection]:
        newest: dict[str, Delivery[ModelPublished]] = {}
        for delivery in batch:  # one model is one key, hence one partition: in publish order
            superseded = newest.get(delivery.event.model_name)
            if superseded is not None:
                logger.info(
                    "%s %s is superseded by %s in the same batch",
                    superseded.event.model_name,
                    superseded.event.version,
                    delivery.event.version,
                )
            newest[delivery.event.model_name] = delivery
        async with asyncio.TaskGroup() as group:
            for delivery in newest.values():
                group.create_task(
                    self._rollouts.handle(
                        delivery.event, published_at=delivery.record.timestamp / 1000
                    )
                )
        return []


def model_published_consumer(
    *, settings: KafkaSettings, group_id: str, rollouts: Rollouts, producer: AIOKafkaProducer
) -> EventConsumer[ModelPublished]:
    return EventConsumer(
        settings=settings,
        topic=settings.topics.model_published,
        group_id=group_id,
        model=ModelPublished,
        handler=PublishedModels(rollouts),
        producer=producer,
        metrics=ConsumerMetrics.for_service(SERVICE),
        max_records=50,
    )
