"""The merge stages' parameters (params.yaml `merge`): recipes in mergekit's format over pipeline model names."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from components.errors import PipelineError
from components.schema import StrictModel


class MergeSpec(StrictModel):
    """A merge recipe in mergekit's format, whose models are named by pipeline names: `base` or a train job."""

    merge_method: str
    base_model: str | None = "base"
    models: list[dict[str, Any]] = Field(min_length=1)  # [{model: <job>, parameters: {weight: ..., density: ...}}]
    parameters: dict[str, Any] = {}
    dtype: str | None = None

    @model_validator(mode="after")
    def _known_method_and_parameters(self) -> MergeSpec:
        # imported here: the registry imports the methods and torch, which the command line and the stage table (they
        # read params.yaml) do without
        from components.merge.registry import check_recipe, known_method, our_methods

        named = [entry.get("model") for entry in self.models]
        twice = sorted({name for name in named if named.count(name) > 1})
        if twice:
            raise ValueError(f"models: {twice} named more than once; a merge takes each model once")
        if not known_method(self.merge_method):
            raise ValueError(
                f"unknown merge method {self.merge_method!r}: neither one of this project's "
                f"({', '.join(sorted(our_methods()))}) nor one of mergekit's"
            )
        try:
            check_recipe(self.merge_method, self.base_model, self.models, self.parameters, "this recipe")
        except PipelineError as err:
            raise ValueError(str(err)) from None
        return self


class MergeConfig(StrictModel):
    max_relative_delta: float = Field(default=0.5, gt=0)  # refuse inputs this far from the first model
    recipes: dict[str, MergeSpec] = {}
