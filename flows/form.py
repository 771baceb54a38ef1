"""The deployment forms in the Prefect UI: one input per field, choices where params.yaml names the options.

Prefect draws a deployment's form from its flow function's signature. A pydantic model (`PostTrainRequest`,
`RecipeSearchRequest`) stays the one declaration of what a run may change; `fields_as_parameters` gives the flow
function that model's fields as keyword parameters (type with its bounds, default, description), so the form is
flat rather than one `request` object, and the function body still receives the model whole.

The choices (profiles, train jobs, recipes) are read from params.yaml when the module is imported, which is when
`python -m flows deploy` (or `stack start`) registers the deployments: deploy again after renaming one.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel

Request = TypeVar("Request", bound=BaseModel)


@dataclass(frozen=True)
class FormChoices:
    default_profile: str | None  # the file's `profile` key
    profiles: tuple[str, ...]
    jobs: tuple[str, ...]  # train jobs of any profile
    recipes: tuple[str, ...]  # merge recipes of any profile


def form_choices(params_file: Path) -> FormChoices:
    """The names a form offers, from the parameters file as written (every profile's, in file order)."""
    raw = yaml.safe_load(params_file.read_text()) or {}
    profiles = raw.get("profiles") or {}
    sections = [raw.get("common") or {}, *((p or {}) for p in profiles.values())]

    def names(section: str, key: str) -> tuple[str, ...]:
        found = [name for s in sections for name in ((s.get(section) or {}).get(key) or {})]
        return tuple(dict.fromkeys(found))

    return FormChoices(raw.get("profile"), tuple(profiles), names("train", "jobs"), names("merge", "recipes"))


def one_of(names: Iterable[str]) -> Any:
    """A type whose values are `names` (a select in the form); plain str when there are none to offer."""
    names = tuple(names)
    return Literal[names] if names else str


def fields_as_parameters(model: type[Request]) -> Callable[[Callable[[Request], Any]], Callable[..., Any]]:
    """Turn `fn(request: model)` into `fn(**fields)` whose signature lists the model's fields."""

    def wrap(fn: Callable[[Request], Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def flat(**fields: Any) -> Any:
            return fn(model(**fields))

        del flat.__wrapped__  # the signature below is the one Prefect and inspect should see
        flat.__signature__ = inspect.Signature(
            [
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=field,  # Prefect reads the default and description from the FieldInfo
                    annotation=field.rebuild_annotation(),  # the type with its bounds (ge, le, ...)
                )
                for name, field in model.model_fields.items()
            ],
            return_annotation=inspect.signature(fn).return_annotation,
        )
        flat.__annotations__ = {p.name: p.annotation for p in flat.__signature__.parameters.values()}
        return flat

    return wrap
