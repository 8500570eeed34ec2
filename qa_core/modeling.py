"""The QA model: loading (with a one-line error naming the folder) and the changes a run asks
for (attention dropout, a frozen encoder)."""
from __future__ import annotations

import torch

from qa_core.errors import QAError

ATTENTION_DROPOUT_FIELDS = ("attention_probs_dropout_prob", "attention_dropout")


def set_attention_dropout(model_config, probability: float) -> list[str]:
    """Override the attention dropout of a transformers config (the field name varies by model).

    On CPU, attention dropout keeps PyTorch's scaled-dot-product attention off its fused kernel:
    training MiniLM ran about 2x faster here with it at 0.
    """
    changed = [name for name in ATTENTION_DROPOUT_FIELDS if hasattr(model_config, name)]
    if not changed:
        raise QAError(f"{type(model_config).__name__} has no attention dropout field "
                      f"({', '.join(ATTENTION_DROPOUT_FIELDS)}): leave out --attention_dropout")
    for name in changed:
        setattr(model_config, name, probability)
    return changed


def freeze_encoder(model: torch.nn.Module) -> int:
    """Train only the QA head (``qa_outputs``); returns the number of trainable parameters left."""
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("qa_outputs")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_qa_model(model: str, attention_dropout: float | None = None) -> torch.nn.Module:
    """``AutoModelForQuestionAnswering`` from a folder or hub name; a folder that holds no
    loadable model (empty, truncated weights, no config) is a :class:`QAError` naming it."""
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    try:
        config = AutoConfig.from_pretrained(model)
        if attention_dropout is not None:
            set_attention_dropout(config, attention_dropout)
        return AutoModelForQuestionAnswering.from_pretrained(model, config=config)
    except (OSError, ValueError, EnvironmentError) as err:
        if isinstance(err, QAError):
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise QAError(f"--model {model}: cannot load a question-answering model ({first})") from None
