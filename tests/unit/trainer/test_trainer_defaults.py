"""The defaults left to the data (reco_trainer.defaults): each rule, and the job recording them."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pyarrow.csv as pacsv
import pytest

from reco_common.artifact import read_manifest
from reco_common.artifact_cache import load_artifact
from reco_common.interactions import ACTION, EVENT_ID, WEIGHT
from reco_common.settings import S3Settings
from reco_common.storage import open_store
from reco_trainer import defaults
from reco_trainer.defaults import DataFacts, resolve
from reco_trainer.params import Loss, TrainParams, Weighting
from reco_trainer.pipeline import Inputs, Job, run_job
from reco_trainer.progress import LogProgress

SHOP_WEIGHTS = {"view": 1.0, "click": 2.0, "cart": 4.0, "purchase": 8.0}
MOVIELENS_FIT_PAIRS = 32_995  # ml-latest-small, ratings >= 4, 80 % of 80 % per user
SHOP_1M_FIT_PAIRS = 463_654  # bench/trainer/train_bench.py --sizes 1000000


@pytest.mark.parametrize(
    ("actions", "graded"),
    [
        (["view", "cart", "purchase"], True),
        (["view"], False),
        ([], False),  # no action column: ratings or explicit weights
        (["unknown", "view"], False),
    ],
)
def test_a_log_is_graded_when_its_actions_weigh_differently(
    actions: list[str], graded: bool
) -> None:
    assert defaults.is_graded(actions, SHOP_WEIGHTS) is graded


def test_actions_of_equal_weight_are_not_graded() -> None:
    assert not defaults.is_graded(["like", "save"], {"like": 1.0, "save": 1.0})


def test_graded_logs_get_warp_with_log_weights_others_warp_kos_unweighted() -> None:
    assert defaults.loss_for(graded=True) is Loss.WARP
    assert defaults.loss_for(graded=False) is Loss.WARP_KOS
    assert defaults.weighting_for(Loss.WARP, graded=True) is Weighting.LOG
    assert defaults.weighting_for(Loss.WARP, graded=False) is Weighting.BINARY
    # warp-kos takes no sample weights, graded or not
    assert defaults.weighting_for(Loss.WARP_KOS, graded=True) is Weighting.BINARY


def test_early_stopping_is_counted_in_updates() -> None:
    facts = DataFacts(fit_pairs=MOVIELENS_FIT_PAIRS, graded=False, cpus=1)
    movielens = resolve(TrainParams(), facts)
    assert (movielens.min_epochs, movielens.patience) == (31, 22)
    assert movielens.min_epochs * MOVIELENS_FIT_PAIRS >= defaults.MIN_UPDATES
    shop = resolve(TrainParams(), dataclasses.replace(facts, fit_pairs=SHOP_1M_FIT_PAIRS))
    assert shop.min_epochs == 3
    assert shop.patience == defaults.PATIENCE_FLOOR  # 700k updates are 2 epochs here


def test_epochs_for_rounds_up_and_keeps_a_floor() -> None:
    assert defaults.epochs_for(1_000, 300, floor=1) == 4
    assert defaults.epochs_for(1_000, 10_000, floor=3) == 3
    assert defaults.epochs_for(1_000, 0, floor=3) == 1_000


def test_small_data_trains_on_one_thread_large_on_the_cpus_up_to_a_cap() -> None:
    below = defaults.SINGLE_THREAD_BELOW - 1
    assert defaults.threads_for(MOVIELENS_FIT_PAIRS, cpus=8) == 1
    assert defaults.threads_for(below, cpus=8) == 1
    assert defaults.threads_for(SHOP_1M_FIT_PAIRS, cpus=2) == 2
    assert defaults.threads_for(SHOP_1M_FIT_PAIRS, cpus=1) == 1
    assert defaults.threads_for(SHOP_1M_FIT_PAIRS, cpus=64) == defaults.MAX_THREADS


def test_small_data_trains_an_ensemble_large_data_one_model() -> None:
    assert defaults.members_for(MOVIELENS_FIT_PAIRS) == defaults.ENSEMBLE_MEMBERS == 3
    assert defaults.members_for(defaults.ENSEMBLE_BELOW - 1) == 3
    assert defaults.members_for(defaults.ENSEMBLE_BELOW) == 1
    assert defaults.members_for(SHOP_1M_FIT_PAIRS) == 1


def test_resolve_fills_what_is_left_and_keeps_what_is_given() -> None:
    facts = DataFacts(fit_pairs=MOVIELENS_FIT_PAIRS, graded=False, cpus=2)
    found = resolve(TrainParams(), facts)
    assert (found.loss, found.weighting) == (Loss.WARP_KOS, Weighting.BINARY)
    assert (found.threads, found.min_epochs, found.patience, found.members) == (1, 31, 22, 3)
    given = TrainParams(loss=Loss.BPR, weighting=Weighting.LINEAR, threads=2, patience=5, members=2)
    kept = resolve(given, DataFacts(fit_pairs=SHOP_1M_FIT_PAIRS, graded=True, cpus=2))
    assert (kept.loss, kept.weighting, kept.threads, kept.patience, kept.members) == (
        Loss.BPR,
        Weighting.LINEAR,
        2,
        5,
        2,
    )
    assert resolve(TrainParams(members=1), facts).members == 1
    assert kept.min_epochs == 3
    graded = dataclasses.replace(facts, graded=True)
    assert resolve(TrainParams(loss=Loss.WARP_KOS), graded).weighting is Weighting.BINARY


def test_what_is_left_to_the_data_is_named() -> None:
    assert defaults.left_to_data(TrainParams()) == [
        "loss",
        "weighting",
        "threads",
        "min_epochs",
        "patience",
        "members",
    ]
    given = TrainParams(loss=Loss.WARP, weighting=Weighting.LOG, threads=1, min_epochs=3, members=1)
    assert defaults.left_to_data(given) == ["patience"]


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000\n", None), ("150000 100000\n", 1), ("50000 100000\n", 1), (None, None)],
)
def test_the_cpus_count_a_containers_quota(
    tmp_path: Path, cpu_max: str | None, expected: int | None
) -> None:
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    found = defaults.available_cpus(path)
    affinity = len(os.sched_getaffinity(0))
    assert found == (affinity if expected is None else min(affinity, expected))


def test_the_job_records_what_it_chose_from_the_data(
    shop_files: dict[str, str], tiny_params: TrainParams, tmp_path: Path
) -> None:
    """The shop's view/cart/purchase log trains warp on log weights; the same pairs without
    their actions (every interaction weighing 1) train warp-kos, unweighted."""
    graded = _manifest_params(shop_files["interactions"], tiny_params, tmp_path / "a")
    assert (graded["loss"], graded["weighting"]) == ("warp", "log")
    assert graded["from_data"] == ["loss", "weighting", "min_epochs"]
    assert graded["min_epochs"] >= defaults.MIN_EPOCHS_FLOOR
    table = pacsv.read_csv(shop_files["interactions"].removeprefix("file://"))
    plain = table.drop_columns([c for c in (ACTION, WEIGHT, EVENT_ID) if c in table.column_names])
    path = tmp_path / "plain.csv"
    pacsv.write_csv(plain, path)
    ungraded = _manifest_params(str(path), tiny_params, tmp_path / "b")
    assert (ungraded["loss"], ungraded["weighting"]) == ("warp-kos", "binary")


def test_a_small_log_is_served_as_an_ensemble_of_seeds(
    shop_files: dict[str, str], tiny_params: TrainParams, tmp_path: Path
) -> None:
    """Left to the data, a log of fewer than ENSEMBLE_BELOW fit pairs trains ENSEMBLE_MEMBERS
    models whose factors sit side by side in the artifact."""
    outcome = run_job(
        Job(
            model_name="shop",
            store_uri=(tmp_path / "store").as_uri(),
            params=tiny_params.updated({"members": None}),
            s3=S3Settings(),
            kafka=None,
            progress=LogProgress,
        ),
        Inputs(interactions=[shop_files["interactions"]]),
    )
    loaded = load_artifact(open_store(outcome.artifact_uri), cache_dir=tmp_path / "cache")
    assert loaded.manifest.params["members"] == defaults.ENSEMBLE_MEMBERS
    assert "members" in loaded.manifest.params["from_data"]
    width = defaults.ENSEMBLE_MEMBERS * tiny_params.components + 1
    assert loaded.arrays.item_factors.shape[1] == width


def _manifest_params(log: str, params: TrainParams, directory: Path) -> dict[str, object]:
    outcome = run_job(
        Job(
            model_name="shop",
            store_uri=directory.as_uri(),
            params=params,
            s3=S3Settings(),
            kafka=None,
            progress=LogProgress,
        ),
        Inputs(interactions=[log]),
    )
    return dict(read_manifest(open_store(outcome.artifact_uri)).params)
