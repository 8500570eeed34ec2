"""The QA model: loading (a missing, empty or damaged folder is one error naming the folder or
file) and the changes a run asks for (dropout, a frozen encoder)."""
from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
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
    load_model_config(str(folder), shown=str(config))  # damaged JSON: transformers' one line
    if _weights_file(folder) is None:
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


@contextlib.contextmanager
def quiet_model_loading() -> Iterator[None]:
    """No progress bar and no load report from transformers while loading: for a command whose
    stderr holds only its one-line error (whatever the report says, the caller checks itself)."""
    from transformers.utils import logging as hf_logging

    verbosity, progress = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()


def load_model_config(name_or_path: str, shown: str | None = None):
    """``AutoConfig`` of a folder or hub name; a config transformers refuses (unknown
    ``model_type``, a field of the wrong type such as ``"num_hidden_layers": "two"``) is one
    :class:`ModelFolderError` naming ``shown`` (the config file; by default ``--model NAME``)."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig

    shown = shown or f"--model {name_or_path}"
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except OSError as err:  # unreadable, or a hub name while offline
        raise ModelFolderError(f"{shown}: cannot load a model config from it "
                               f"({first_line(err)})") from None
    except (ValueError, TypeError, KeyError, StrictDataclassError) as err:
        # a field validation error says which field in its cause; its own text is two lines
        reason = first_line(err.__cause__ if isinstance(err, StrictDataclassError)
                            and err.__cause__ is not None else err)
        raise ModelFolderError(f"{shown}: not a usable model config ({reason})") from None


def _weights_file(folder: Path) -> Path | None:
    """The first of :data:`WEIGHT_FILES` that ``folder`` holds."""
    return next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)


def load_qa_model(name_or_path: str, attention_dropout: float | None = None,
                  hidden_dropout: float | None = None, trained_head: bool = False):
    """``AutoModelForQuestionAnswering`` from a folder or hub name, with ``attention_dropout``
    and ``hidden_dropout`` set when given. Failures are one :class:`ModelFolderError` naming
    the model or file. A ``pytorch_model.bin`` is read by transformers with
    ``torch.load(weights_only=True)``: a pickle that would build anything but tensors is
    refused, not run.

    ``trained_head``: refuse a model whose files lack weights the QA model needs (a plain
    encoder: its QA head would be random, so answers change between runs). Training leaves it
    off, as fine-tuning starts from such an encoder."""
    import pickle

    from safetensors import SafetensorError
    from transformers import AutoModelForQuestionAnswering

    check_model_folder(name_or_path)
    # the file a load failure is about, for the message (the folder for hub names)
    weights = _weights_file(Path(name_or_path).expanduser()) or f"--model {name_or_path}"
    config = load_model_config(name_or_path)
    if attention_dropout is not None:
        set_attention_dropout(config, attention_dropout)
    if hidden_dropout is not None:
        set_hidden_dropout(config, hidden_dropout)
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol warning would precede the error
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            model, loading = AutoModelForQuestionAnswering.from_pretrained(
                name_or_path, config=config, output_loading_info=True)
    except pickle.UnpicklingError as err:  # what it refused to build, not torch's advice
        found = re.search(r"Unsupported (global: GLOBAL \S+|operand \d+)", str(err))
        raise ModelFolderError(f"{weights}: not a weights-only torch file, "
                               "refused without running it "
                               f"({found.group(0) if found else first_line(err)})") from None
    except (OSError, SafetensorError, ValueError) as err:
        raise ModelFolderError(f"--model {name_or_path}: cannot load a question-answering model "
                               f"({first_line(err)})") from None
    except RuntimeError as err:
        if "ignore_mismatched_sizes" not in str(err):  # only transformers' shape check is input
            raise
        raise ModelFolderError(f"{weights}: tensor shapes differ from what "
                               "config.json gives (weights and config of different models)"
                               ) from None
    missing = sorted(loading["missing_keys"])  # transformers' own list, for any architecture
    if trained_head and missing:
        listed = f"{', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''} missing"
        if any(key.startswith(f"{model.base_model_prefix}.") for key in missing):
            raise ModelFolderError(f"--model {name_or_path}: weights missing from its files "
                                   f"({listed}): not a complete model")
        raise ModelFolderError(f"--model {name_or_path}: has no trained question-answering head "
                               f"({listed}): fine-tune it first with train_accelerate.py")
    return model


# ---------------------------------------------------------------------------------------------
# Saved models: finite weights only
# ---------------------------------------------------------------------------------------------

class NonFiniteModelError(QAError):
    """Weights that are NaN/inf, or that give NaN/inf logits: not written as a usable model."""


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters holding a NaN or an infinity."""
    return [name for name, param in model.named_parameters()
            if not bool(torch.isfinite(param.detach()).all())]


def model_problems(accelerator, model, metrics: dict | None = None) -> list[str]:
    """Why these weights are not a usable model ([] when they are): non-finite parameters on any
    process (a diverged run), or non-finite logits in the evaluation ``metrics`` just computed
    with them. Collective (one small all-reduce): every rank calls it and gets the same answer."""
    local = nonfinite_parameters(accelerator.unwrap_model(model))
    count = torch.tensor(len(local), device=accelerator.device)
    total = int(accelerator.reduce(count, reduction="sum").item())
    problems = []
    if total:
        examples = f" (e.g. {', '.join(local[:3])})" if local else ""
        problems.append(f"{len(local) or total} parameter tensors hold NaN or inf{examples}")
    bad_features = (metrics or {}).get("nonfinite_features", 0)
    if bad_features:
        problems.append(f"the evaluation's logits were NaN or inf for {bad_features} of "
                        f"{metrics.get('features', '?')} features")
    return problems


def save_model_checked(accelerator, model, folder: Path, metrics: dict | None = None) -> None:
    """``save_pretrained`` the model to ``folder`` unless :func:`model_problems` finds a reason
    not to: then :class:`NonFiniteModelError`, on every rank, and nothing is written."""
    from qa_core.checkpoints import write_on_every_process

    problems = model_problems(accelerator, model, metrics)
    if problems:
        raise NonFiniteModelError(f"{folder}: not written: " + "; ".join(problems))
    state_dict = accelerator.get_state_dict(model)  # collective under FSDP: outside the write
    write_on_every_process(accelerator, folder, lambda: accelerator.unwrap_model(
        model).save_pretrained(folder, is_main_process=accelerator.is_main_process,
                               save_function=accelerator.save, state_dict=state_dict))
