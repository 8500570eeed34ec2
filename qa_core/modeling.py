"""The QA model: loading (a missing, empty or damaged folder is one error naming the folder or
file) and the changes a run asks for (dropout, a frozen encoder)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from qa_core.errors import QAError, first_line

ATTENTION_DROPOUT_FIELDS = ("attention_probs_dropout_prob", "attention_dropout")
# dropout on the hidden states (embeddings, attention output, feed-forward output)
HIDDEN_DROPOUT_FIELDS = ("hidden_dropout_prob", "dropout")


def _set_dropout(model_config, fields: tuple[str, ...], probability: float, flag: str) -> list[str]:
    """Set whichever of ``fields`` the config has (the field name varies by model)."""
    changed = [name for name in fields if hasattr(model_config, name)]
    if not changed:
        raise QAError(f"{type(model_config).__name__} has no {flag.replace('_', ' ')} field "
                      f"({', '.join(fields)}): leave out --{flag}")
    for name in changed:
        setattr(model_config, name, probability)
    return changed


def set_attention_dropout(model_config, probability: float) -> list[str]:
    """Override the attention dropout of a transformers config.

    On CPU, attention dropout keeps PyTorch's scaled-dot-product attention off its fused kernel:
    training MiniLM ran about 2x faster here with it at 0.
    """
    return _set_dropout(model_config, ATTENTION_DROPOUT_FIELDS, probability, "attention_dropout")


def set_hidden_dropout(model_config, probability: float) -> list[str]:
    """Override the dropout on a transformers config's hidden states (not the attention
    weights'; DistilBERT's separate ``qa_dropout`` before its QA head is left alone)."""
    return _set_dropout(model_config, HIDDEN_DROPOUT_FIELDS, probability, "hidden_dropout")


def freeze_encoder(model: torch.nn.Module) -> int:
    """Train only the QA head (``qa_outputs``); returns the number of trainable parameters left."""
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("qa_outputs")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def freeze_word_embeddings(model: torch.nn.Module) -> int:
    """Keep the input word embeddings fixed (position / type embeddings and the encoder still
    train): words that fine-tuning never sees stay where the pre-training put them, next to the
    words it does see. Returns the number of parameters frozen."""
    embeddings = model.get_input_embeddings().weight
    embeddings.requires_grad = False
    return embeddings.numel()


def freeze_parameters(model: torch.nn.Module, encoder: bool, word_embeddings: bool) -> None:
    """Apply ``--freeze_encoder`` / ``--freeze_word_embeddings`` (either, both or neither)."""
    if encoder:
        freeze_encoder(model)
    if word_embeddings:
        freeze_word_embeddings(model)


class ModelFolderError(QAError):
    """A ``--model`` that is not a loadable QA model; the message names the folder or file."""



WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "spiece.model", "sentencepiece.bpe.model")


def looks_like_path(name: str) -> bool:
    """Absolute, ``./``/``../``/``~`` relative or with more than one ``/``: not a hub repo id."""
    return (Path(name).is_absolute() or name.startswith(("./", "../", "~", ".\\"))
            or name.count("/") > 1 or name in (".", ".."))


def check_model_folder(name_or_path: str) -> None:
    """A local ``--model`` folder must hold a config, weights and a tokenizer; refusals name the
    folder or file. A name that is not a local path is left to the hub loader."""
    from safetensors import SafetensorError, safe_open

    folder = Path(name_or_path).expanduser()
    if not folder.exists():
        if looks_like_path(name_or_path):
            raise ModelFolderError(f"--model {name_or_path}: no such folder")
        return  # a hub name ("org/name"): the loader tries the hub (or says it is offline)
    if not folder.is_dir():
        raise ModelFolderError(f"--model {folder}: a file, not a model folder")
    config = folder / "config.json"
    if not config.is_file():
        count = sum(1 for _ in folder.iterdir())
        raise ModelFolderError(f"--model {folder}: not a model folder (config.json missing; "
                               f"{'empty' if not count else f'{count} other entries'})")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFolderError(f"{config}: not valid JSON (truncated or damaged)") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{config}: not a model config (a JSON {type(data).__name__})")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelFolderError(f"--model {folder}: no model weights ({', '.join(WEIGHT_FILES)} "
                               "missing)")
    weights = folder / "model.safetensors"
    if weights.is_file():
        try:
            with safe_open(str(weights), framework="pt") as handle:
                handle.keys()
        except SafetensorError as err:
            raise ModelFolderError(f"{weights}: not a readable safetensors file ({err})") from None
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelFolderError(f"--model {folder}: no tokenizer ({', '.join(TOKENIZER_FILES[:3])}"
                               ", ... missing)")


def load_qa_model(name_or_path: str, attention_dropout: float | None = None,
                  hidden_dropout: float | None = None):
    """``AutoModelForQuestionAnswering`` from a folder or hub name, with ``attention_dropout``
    and ``hidden_dropout`` set when given. Failures are one :class:`ModelFolderError` naming
    the model."""
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    check_model_folder(name_or_path)
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ModelFolderError(f"--model {name_or_path}: cannot load its config "
                               f"({first_line(err)})") from None
    if attention_dropout is not None:
        set_attention_dropout(config, attention_dropout)
    if hidden_dropout is not None:
        set_hidden_dropout(config, hidden_dropout)
    try:
        return AutoModelForQuestionAnswering.from_pretrained(name_or_path, config=config)
    except (OSError, SafetensorError, ValueError) as err:
        raise ModelFolderError(f"--model {name_or_path}: cannot load a question-answering model "
                               f"({first_line(err)})") from None
