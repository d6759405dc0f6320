"""Command-line options generated from :class:`~reco_trainer.params.TrainParams`.

:func:`with_param_options` gives a typer command one ``--<name>`` option per parameter (its help
is the field's docstring, a bool becomes ``--<name>/--no-<name>``, a tuple a repeatable option)
and hands the given ones to the command as ``overrides``: a parameter added to the model is on
the command line without another line here.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from typing import Annotated, Any, Union, get_args, get_origin

import typer
from pydantic.fields import FieldInfo

from reco_trainer.params import TrainParams

# Parameters with a flag of their own: --action-weight ACTION=W (merged into the defaults).
OWN_FLAGS = frozenset({"action_weights"})
_NAMES = {"ks": "--k"}


def with_param_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command(..., overrides=...)`` plus one option per parameter; ``overrides`` maps each
    parameter to its option's value (``None`` when not given)."""
    names = [name for name in TrainParams.model_fields if name not in OWN_FLAGS]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        overrides = {name: kwargs.pop(name) for name in names}
        command(**kwargs, overrides=overrides)

    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "overrides"]
    options = [_option(name, TrainParams.model_fields[name]) for name in names]
    wrapper.__signature__ = inspect.Signature([*own, *options])  # type: ignore[attr-defined]
    return wrapper


def _option(name: str, field: FieldInfo) -> inspect.Parameter:
    kind = _plain(field.annotation)
    flag = _NAMES.get(name, "--" + name.replace("_", "-"))
    if kind is bool:
        flag = f"{flag}/--no-{flag.removeprefix('--')}"
    if get_origin(kind) is tuple:
        kind = list[get_args(kind)[0]]  # type: ignore[misc]
    option = typer.Option(flag, help=field.description, show_default=False)
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[kind | None, option],
    )


def _plain(annotation: Any) -> Any:
    """``int`` for ``int``, ``int | None`` and ``Annotated[int, …] | None``."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation
