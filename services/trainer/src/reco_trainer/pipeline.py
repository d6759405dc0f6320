"""One training job: logs → split → LightFM with early stopping → evaluation against popularity
→ report → artifact (verified) → ``model-published``.

The version is computed from the input contents and the parameters *before* training, so a
job whose artifact already exists does not train again: it only announces the artifact when no
announcement was recorded (a run that died in between). Nothing is announced unless the
artifact was written and its checksums read back.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from lightfm import LightFM

from reco_common.ann import IndexParams, ItemIndex
from reco_common.artifact import FloatMatrix, Manifest, ModelArrays, UserItems, write_artifact
from reco_common.contracts import EvalMetrics, ObjectLayout
from reco_common.interactions import (
    ACTION,
    ITEM_ID,
    USER_ID,
    Features,
    Interactions,
    LogSource,
    read_features,
    read_interactions,
)
from reco_common.ivf import IvfIndex, model_queries
from reco_common.scann_index import ScannIndex
from reco_common.settings import KafkaSettings, S3Settings
from reco_common.storage import ObjectStore, open_store
from reco_trainer import dataset, defaults, publishing
from reco_trainer.dataset import Prepared, Vocab
from reco_trainer.defaults import DataFacts
from reco_trainer.evaluation import (
    EvalSet,
    evaluate,
    factor_scorer,
    popularity_scorer,
    popularity_scores,
)
from reco_trainer.neighbours import item_neighbours
from reco_trainer.params import TrainParams
from reco_trainer.progress import EpochProgress, progress_for
from reco_trainer.report import Report
from reco_trainer.training import (
    Factors,
    FitResult,
    choose_bias_scale,
    fit,
    representations,
    required,
    side_by_side,
    with_bias_scale,
)
from reco_trainer.tune import Budget, Search, search_parameters
from reco_trainer.versioning import data_fingerprint, model_version

logger = logging.getLogger(__name__)

_LIBRARIES = (
    "rectools-lightfm",
    "numpy",
    "scipy",
    "pyarrow",
    "usearch",
    "scann",
    "reco-trainer",
    "reco-common",
)


@dataclass(frozen=True, slots=True)
class Inputs:
    """What one job reads: interaction locations, an optional explicit test set and features,
    and how the logs' columns map to ours (``columns``, ``min_weight``: see read_interactions)."""

    interactions: list[str]
    test: str | None = None
    item_features: str | None = None
    user_features: str | None = None
    data_offsets: dict[str, int] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)
    min_weight: float | None = None

    @property
    def reading(self) -> dict[str, Any]:
        """How the logs were read, when not as they are (it changes the data: part of the version)."""
        found: dict[str, Any] = {"columns": self.columns, "min_weight": self.min_weight}
        return {key: value for key, value in found.items() if value}


@dataclass(frozen=True, slots=True)
class Job:
    """Where the model goes and whether it is announced."""

    model_name: str
    store_uri: str
    params: TrainParams
    s3: S3Settings
    kafka: KafkaSettings | None  # None: never publish (--no-publish)
    metrics_out: Path | None = None
    progress: Callable[[int], EpochProgress] = progress_for
    tune: Budget | None = None  # search the parameters first (reco_trainer.tune)

    def identity(self) -> dict[str, Any]:
        """What names the model: the parameters, and the search budget when there is one."""
        budget = {"tune": asdict(self.tune)} if self.tune is not None else {}
        return {**self.params.identity(), **budget}


@dataclass(frozen=True, slots=True)
class Outcome:
    model_name: str
    version: str
    artifact_uri: str
    trained: bool
    published: bool
    metrics: EvalMetrics
    report: Report | None = None


@dataclass(frozen=True, slots=True)
class _Data:
    log: Interactions
    test: Interactions | None
    item_features: Features | None
    user_features: Features | None

    @property
    def sources(self) -> list[LogSource]:
        found = list(self.log.sources) + list(self.test.sources if self.test else ())
        for features in (self.item_features, self.user_features):
            found += list(features.sources) if features else []
        return found


def run_job(job: Job, inputs: Inputs) -> Outcome:
    """Train, evaluate, store and (unless disabled) announce one model; see the module doc."""
    data = _read(job, inputs)
    fingerprint = data_fingerprint(data.sources, reading=inputs.reading)
    newest = float(data.log.timestamps().max()) if data.log.has_timestamps else None
    version = model_version(data=fingerprint, params=job.identity(), newest_ts=newest)
    store = open_store(job.store_uri, s3=job.s3)
    existing = publishing.existing_manifest(store, job.model_name, version)
    if existing is not None:
        logger.info("model %s %s already exists: not training again", job.model_name, version)
        published = _announce_once(job, store, existing, verified=False)
        return Outcome(
            model_name=job.model_name,
            version=version,
            artifact_uri=store.uri(ObjectLayout.model_dir(job.model_name, version)),
            trained=False,
            published=published,
            metrics=existing.metrics,
        )
    trained = _train(job, data, version=version, fingerprint=fingerprint)
    uri = _store(
        job,
        store,
        trained,
        version=version,
        fingerprint=fingerprint,
        inputs=inputs,
        sources=data.sources,
    )
    manifest = publishing.existing_manifest(store, job.model_name, version)
    if manifest is None:
        raise RuntimeError(f"{uri}: the manifest is missing right after writing it")
    published = _announce_once(job, store, manifest, verified=True)
    return Outcome(
        model_name=job.model_name,
        version=version,
        artifact_uri=uri,
        trained=True,
        published=published,
        metrics=trained.report.metrics,
        report=trained.report,
    )


def _read(job: Job, inputs: Inputs) -> _Data:
    options: dict[str, Any] = {
        "action_weights": job.params.action_weights,
        "columns": inputs.columns,
        "min_weight": inputs.min_weight,
        "s3": job.s3,
    }
    log = read_interactions(inputs.interactions, **options)
    test = read_interactions(inputs.test, **options) if inputs.test else None
    items = (
        read_features(inputs.item_features, id_column=ITEM_ID, s3=job.s3)
        if inputs.item_features
        else None
    )
    users = (
        read_features(inputs.user_features, id_column=USER_ID, s3=job.s3)
        if inputs.user_features
        else None
    )
    logger.info(
        "read %d interactions from %d files%s",
        len(log),
        len(log.sources),
        f", {len(test)} test interactions" if test else "",
    )
    return _Data(log=log, test=test, item_features=items, user_features=users)


@dataclass(frozen=True, slots=True)
class _Trained:
    arrays: ModelArrays
    report: Report
    result: FitResult
    params: TrainParams  # as trained: the job's, or the search's best
    search: Search | None


def _train(job: Job, data: _Data, *, version: str, fingerprint: str) -> _Trained:
    started = time.perf_counter()
    kind = dataset.resolve_kind(data.log, job.params.split)
    if data.test is not None:
        train_log, test_log = data.log, data.test
    else:
        parts = dataset.split(
            data.log, kind=kind, fraction=job.params.test_fraction, seed=job.params.seed
        )
        train_log, test_log = parts.train, parts.held_out
    prepared = dataset.prepare(train_log, test_log, job.params, kind)
    params = _resolved(job.params, data.log, prepared)
    item_features = _features(prepared.items, data.item_features)
    user_features = _features(prepared.users, data.user_features)
    validation = (
        EvalSet.build(
            known=prepared.fit,
            held_out=prepared.validation,
            max_users=params.validation_users,
            seed=params.seed,
        )
        if prepared.validation is not None
        else None
    )
    search = None
    if job.tune is not None:
        if validation is None or not validation.users.size:
            raise ValueError("tuning needs a validation split: set --validation-fraction above 0")
        search = search_parameters(
            prepared.fit,
            validation,
            params=params,
            budget=job.tune,
            item_features=item_features,
            user_features=user_features,
            progress=job.progress,
        )
        params = params.updated({**search.best, "members": job.tune.members})
    result = search.best_fit if search is not None else None
    if result is None:
        result = fit(
            dataset.lightfm_input(prepared.fit, params.weighting),
            params=params,
            item_features=item_features,
            user_features=user_features,
            validation=validation if validation is not None and validation.users.size else None,
            progress=job.progress(params.epochs),
        )
    bias_scale = _bias_scale(result.model, validation, params, item_features, user_features)
    model = result.model
    folded = params.fold_validation and validation is not None and bool(validation.users.size)
    if folded:
        model = _fold_validation(
            job, params, prepared, result.best_epoch, item_features, user_features
        )
    members = [representations(model, item_features, user_features)]
    members += _more_members(
        job,
        params,
        prepared.known_at_test if folded else prepared.fit,
        result.best_epoch,
        item_features,
        user_features,
    )
    user_factors, item_factors = side_by_side(members)
    item_factors = with_bias_scale(item_factors, bias_scale)
    trained_s = time.perf_counter() - started
    metrics, validation_baseline = _evaluate(
        prepared, user_factors, item_factors, validation, params
    )
    evaluated_s = time.perf_counter() - started - trained_s
    users, items, seen = prepared.users, prepared.items, prepared.known_at_test
    if params.refit:
        users, items, seen, user_factors, item_factors = _refit(
            job, params, data, result.best_epoch
        )
        item_factors = with_bias_scale(item_factors, bias_scale)
    popular_items, popular_scores = _popular(data, params.popular_items)
    arrays = ModelArrays(
        item_ids=items.to_list(),
        user_ids=users.to_list(),
        item_factors=item_factors,
        user_factors=user_factors,
        popular_items=popular_items,
        popular_scores=popular_scores,
        user_items=user_items(seen),
        neighbours=item_neighbours(seen, k=params.neighbours) if params.neighbours else None,
        item_index=_item_index(item_factors, user_factors, params),
        item_ivf=_item_ivf(item_factors, user_factors, params),
        item_scann=_item_scann(item_factors, user_factors, params),
    )
    report = Report(
        model_name=job.model_name,
        version=version,
        data_snapshot=fingerprint,
        metrics=metrics,
        validation_baseline=validation_baseline,
        history=result.history,
        best_epoch=result.best_epoch,
        details={
            "split": prepared.split_kind.value,
            "explicit_test": data.test is not None,
            "interactions": len(data.log),
            "users": len(prepared.users),
            "items": len(prepared.items),
            "fit_pairs": prepared.fit.nnz,
            "epochs_run": result.epochs_run,
            "bias_scale": bias_scale,
            "refit": params.refit,
            "seconds": {"train": round(trained_s, 3), "evaluate": round(evaluated_s, 3)},
            "params": params.model_dump(mode="json"),
            "from_data": defaults.left_to_data(job.params),
        },
        search=search.to_dict() if search is not None else None,
    )
    logger.info(
        "%s %s: model %s vs popularity %s",
        job.model_name,
        version,
        _brief(metrics.model),
        _brief(metrics.baseline),
    )
    return _Trained(arrays=arrays, report=report, result=result, params=params, search=search)


def _item_index(
    item_factors: FloatMatrix, user_factors: FloatMatrix, params: TrainParams
) -> ItemIndex | None:
    """The approximate top-N index of a catalog of at least ``index_min_items`` (its
    transform probed with the users' vectors as queries)."""
    if len(item_factors) < params.index_min_items or params.index_kind != "hnsw":
        return None
    started = time.perf_counter()
    index = ItemIndex.build(
        item_factors,
        IndexParams(
            connectivity=params.index_connectivity, expansion_add=params.index_expansion_add
        ),
        users=user_factors,
        threads=params.threads or 0,
    )
    logger.info("item index of %d items built in %.1f s", len(index), time.perf_counter() - started)
    return index


def _item_ivf(
    item_factors: FloatMatrix, user_factors: FloatMatrix, params: TrainParams
) -> IvfIndex | None:
    """The IVF index of a catalog of at least ``index_min_items`` (``index_kind`` ivf), with
    its recall by probed lists measured on the model's own queries."""
    if len(item_factors) < params.index_min_items or params.index_kind != "ivf":
        return None
    started = time.perf_counter()
    index = IvfIndex.build(
        item_factors,
        lists=params.index_lists,
        seed=params.seed,
        queries=model_queries(user_factors, item_factors, seed=params.seed),
    )
    elapsed = time.perf_counter() - started
    logger.info(
        "IVF index of %d items in %d lists built in %.1f s; lists probed for recall@100 "
        "0.98 / 0.985 / 0.99: %s / %s / %s",
        len(index.rows),
        index.lists,
        elapsed,
        index.probes_for(0.98),
        index.probes_for(0.985),
        index.probes_for(0.99),
    )
    return index


def _item_scann(
    item_factors: FloatMatrix, user_factors: FloatMatrix, params: TrainParams
) -> ScannIndex | None:
    """The ScaNN index of a catalog of at least ``index_min_items`` (the default kind), with
    its recall by searched leaves measured on the model's own queries."""
    if len(item_factors) < params.index_min_items or params.index_kind != "scann":
        return None
    started = time.perf_counter()
    index = ScannIndex.build(
        item_factors,
        leaves=params.index_lists,
        queries=model_queries(user_factors, item_factors, seed=params.seed),
        threads=params.threads or 0,
    )
    logger.info(
        "ScaNN index of %d items built in %.1f s; searched for recall@100 0.98 / 0.985 / 0.99: "
        "%s / %s / %s",
        index.size,
        time.perf_counter() - started,
        index.search_for(0.98),
        index.search_for(0.985),
        index.search_for(0.99),
    )
    return index


def _resolved(params: TrainParams, log: Interactions, prepared: Prepared) -> TrainParams:
    """``params`` with the defaults left to the data resolved (:mod:`reco_trainer.defaults`)."""
    facts = DataFacts(
        fit_pairs=prepared.fit.nnz,
        graded=defaults.is_graded(_actions(log), params.action_weights),
        cpus=defaults.available_cpus(),
    )
    resolved = defaults.resolve(params, facts)
    logger.info(
        "from the data (%d fit pairs, %s): loss %s, weighting %s, %d threads, "
        "min %d epochs, patience %d",
        facts.fit_pairs,
        "actions of several weights" if facts.graded else "interactions of one kind",
        resolved.loss.value,
        resolved.weighting.value,
        resolved.threads,
        resolved.min_epochs,
        resolved.patience,
    )
    return resolved


def _actions(log: Interactions) -> list[str]:
    """The action names the log uses (none without an action column)."""
    if ACTION not in log.table.column_names:
        return []
    return [str(a) for a in pc.unique(log.table.column(ACTION)).drop_null().to_pylist()]


def _features(vocab: Vocab, features: Features | None) -> sp.csr_matrix | None:
    if features is None:
        return None
    return dataset.feature_matrix(vocab, features.table, id_column=features.id_column)


def _bias_scale(
    model: LightFM,
    validation: EvalSet | None,
    params: TrainParams,
    item_features: sp.csr_matrix | None,
    user_features: sp.csr_matrix | None,
) -> float:
    if params.bias_scale is not None:
        return params.bias_scale
    if validation is None or not validation.users.size:
        return 1.0
    return choose_bias_scale(
        model,
        validation,
        params=params,
        item_features=item_features,
        user_features=user_features,
    )


def _fold_validation(
    job: Job,
    params: TrainParams,
    prepared: Prepared,
    epochs: int,
    item_features: sp.csr_matrix | None,
    user_features: sp.csr_matrix | None,
) -> LightFM:
    """A fresh model on the fit and validation parts together, for the epochs early stopping
    kept: the validation interactions (each user's newest) are not lost to the model."""
    logger.info("training on fit + validation for the kept %d epochs", epochs)
    return _fit_for(job, params, prepared.known_at_test, epochs, item_features, user_features)


def _fit_for(
    job: Job,
    params: TrainParams,
    interactions: sp.csr_matrix,
    epochs: int,
    item_features: sp.csr_matrix | None,
    user_features: sp.csr_matrix | None,
) -> LightFM:
    """A model trained on ``interactions`` for ``epochs`` epochs (no early stopping)."""
    return fit(
        dataset.lightfm_input(interactions, params.weighting),
        params=params,
        item_features=item_features,
        user_features=user_features,
        validation=None,
        progress=job.progress(epochs),
        epochs=max(epochs, 1),
    ).model


def _more_members(
    job: Job,
    params: TrainParams,
    interactions: sp.csr_matrix,
    epochs: int,
    item_features: sp.csr_matrix | None,
    user_features: sp.csr_matrix | None,
) -> list[tuple[Factors, Factors]]:
    """Members 2…n (``params.members``): the same parameters with the next seeds, trained on
    ``interactions`` for the epochs early stopping kept for the first."""
    found = []
    count = required(params.members, "members")
    for offset in range(1, count):
        member = params.updated({"seed": params.seed + offset})
        logger.info("member %d of %d: %d epochs", offset + 1, count, epochs)
        model = _fit_for(job, member, interactions, epochs, item_features, user_features)
        found.append(representations(model, item_features, user_features))
    return found


def _evaluate(
    prepared: Prepared,
    user_factors: Factors,
    item_factors: Factors,
    validation: EvalSet | None,
    params: TrainParams,
) -> tuple[EvalMetrics, dict[str, float]]:
    test = EvalSet.build(
        known=prepared.known_at_test,
        held_out=prepared.test,
        max_users=params.eval_users,
        seed=params.seed,
    )
    if test.users.size == 0:
        raise ValueError(
            "the held-out split has no user with a new item known to the model: "
            "nothing to evaluate (more data, or a larger --test-fraction)"
        )
    logger.info("evaluating on %d users, %d held-out pairs", test.users.size, test.n_pairs)
    model = evaluate(factor_scorer(user_factors, item_factors), test, ks=params.ks)
    baseline = evaluate(
        popularity_scorer(popularity_scores(prepared.known_at_test)), test, ks=params.ks
    )
    validation_baseline = (
        evaluate(popularity_scorer(popularity_scores(prepared.fit)), validation, ks=params.ks)
        if validation is not None and validation.users.size
        else {}
    )
    return EvalMetrics(model=model, baseline=baseline), validation_baseline


def user_items(seen: sp.csr_matrix) -> UserItems:
    """Each user's training items, as the artifact carries them (sorted CSR rows)."""
    m = sp.csr_matrix(seen > 0)
    m.sort_indices()
    return UserItems(indptr=m.indptr.astype(np.int64), indices=m.indices.astype(np.int32))


def _refit(
    job: Job, params: TrainParams, data: _Data, epochs: int
) -> tuple[Vocab, Vocab, sp.csr_matrix, Factors, Factors]:
    """Train again on everything (train and held-out) for the kept number of epochs."""
    log = data.log
    everything = log if data.test is None else _concat(log, data.test)
    users, items = Vocab.of(everything.user_ids()), Vocab.of(everything.item_ids())
    item_features = _features(items, data.item_features)
    user_features = _features(users, data.user_features)
    logger.info("refit on all %d interactions for %d epochs", len(everything), epochs)
    seen = dataset.matrix(everything, users, items)
    model = _fit_for(job, params, seen, epochs, item_features, user_features)
    members = [representations(model, item_features, user_features)]
    members += _more_members(job, params, seen, epochs, item_features, user_features)
    user_factors, item_factors = side_by_side(members)
    return users, items, seen, user_factors, item_factors


def _concat(a: Interactions, b: Interactions) -> Interactions:
    common = [c for c in a.table.column_names if c in b.table.column_names]
    table = pa.concat_tables([a.table.select(common), b.table.select(common)])
    return Interactions(table=table, sources=a.sources + b.sources)


def _popular(data: _Data, n: int) -> tuple[list[str], list[float]]:
    """The fallback list: items by summed weight over all the data, best first."""
    log = data.log if data.test is None else _concat(data.log, data.test)
    items = Vocab.of(log.item_ids())
    scores = np.bincount(items.codes(log.item_ids()), weights=log.weights(), minlength=len(items))
    order = np.lexsort((np.arange(len(items)), -scores))[:n]
    ids = items.to_list()
    return [ids[i] for i in order], [float(scores[i]) for i in order]


def _store(
    job: Job,
    store: ObjectStore,
    trained: _Trained,
    *,
    version: str,
    fingerprint: str,
    inputs: Inputs,
    sources: list[LogSource],
) -> str:
    report = trained.report
    metric = trained.params.early_stopping_metric
    png = report.png_bytes(metric=metric)
    if job.metrics_out is not None:
        job.metrics_out.parent.mkdir(parents=True, exist_ok=True)
        job.metrics_out.write_bytes(report.json_bytes())
        job.metrics_out.with_suffix(".png").write_bytes(png)
        logger.info("evaluation report written to %s", job.metrics_out)
    for name, body in (
        (ObjectLayout.REPORT_JSON, report.json_bytes()),
        (ObjectLayout.REPORT_PNG, png),
    ):
        store.put_bytes(ObjectLayout.report(job.model_name, version, name), body)
    uri = write_artifact(
        store,
        model_name=job.model_name,
        version=version,
        arrays=trained.arrays,
        created_at=datetime.now(UTC),
        data_snapshot=fingerprint,
        data_offsets=inputs.data_offsets,
        params={
            **trained.params.identity(),
            "threads": trained.params.threads,
            "from_data": defaults.left_to_data(job.params),
            "bias_scale": trained.report.details["bias_scale"],
            **_tuning(trained.search),
            "best_epoch": trained.result.best_epoch,
            "epochs_run": trained.result.epochs_run,
            "inputs": [{"uri": s.uri, "sha256": s.sha256, "rows": s.rows} for s in sources],
            **({"reading": inputs.reading} if inputs.reading else {}),
        },
        metrics=report.metrics,
        library_versions=library_versions(),
    )
    logger.info("artifact written to %s", uri)
    return uri


def _tuning(search: Search | None) -> dict[str, Any]:
    """The manifest's record of a search (its best values are the params themselves)."""
    if search is None:
        return {}
    summary = {k: v for k, v in search.to_dict().items() if k != "trials"}
    return {"tuning": {**summary, "trials": len(search.trials)}}


def _announce_once(job: Job, store: ObjectStore, manifest: Manifest, *, verified: bool) -> bool:
    """Announce unless disabled or already done; ``verified``: this run just read the
    artifact's checksums back (``write_artifact``), otherwise they are read back here."""
    if job.kafka is None:
        logger.info(
            "publishing disabled: %s %s not announced", manifest.model_name, manifest.version
        )
        return False
    if publishing.is_published(store, manifest.model_name, manifest.version):
        logger.info(
            "%s %s was already announced: nothing to publish", manifest.model_name, manifest.version
        )
        return False
    if not verified:
        publishing.verify(store, manifest)
    asyncio.run(publishing.announce(store, publishing.event_for(store, manifest), kafka=job.kafka))
    return True


def library_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def _brief(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.endswith("@10") or k == "auc")
