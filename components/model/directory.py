"""What every stage that reads a model directory checks first, so a wrong path fails with its name."""

from __future__ import annotations

import json
from pathlib import Path

from components.atomic import atomic_dir
from components.errors import InputError
from components.stage import StageCache, StageResult

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    config = path / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))


def check_model_dir(path: Path, chat: bool = True) -> Path:
    """Raise InputError naming `path` and what it lacks unless it is a complete (chat, unless `chat` is false)
    model directory."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: model directory does not exist")
    if not path.is_dir():
        raise InputError(f"{path}: expected a model directory, found a file")
    if not (path / "config.json").is_file():
        raise InputError(f"{path}: no config.json, so this is not a Hugging Face model directory")
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise InputError(f"{path}: no weights (*.safetensors or pytorch_model*.bin)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise InputError(f"{path}: no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    if chat and not has_chat_template(path):
        raise InputError(f"{path}: the tokenizer has no chat template (chat_template.jinja or tokenizer_config.json)")
    return path


def save_model_dir(
    out_dir: Path, model, tokenizer, card_name: str, card: dict, cache: StageCache, metrics: dict[str, float]
) -> StageResult:
    """Write a changed model as a model directory with its own card (what changed) and the stage card, atomically."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / card_name).write_text(json.dumps(card, indent=2) + "\n")
        cache.write_card(tmp, metrics)
    return StageResult(outputs={"model": out_dir}, metrics=metrics, artifacts=(out_dir / card_name,))
