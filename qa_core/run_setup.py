"""Settings -> the parts of a training run: cached data, eval references, model, optimizer.

Each function builds one part and is called once by ``train_accelerate.py``; together they
are the "data -> model and optimizer" half of the script, before ``loop.fit`` takes over.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa
import torch

from qa_core.averaging import WeightAverage
from qa_core.batching import (
    FeatureRows,
    FeatureSelection,
    epoch_step_costs,
    identity_collate,
    open_cache_entry,
    pad_multiple,
    select_first_examples,
    training_loader,
)
from qa_core.budget import RunShape, StepCosts, TimeBudget, calibration_steps
from qa_core.cache_sharing import CacheSharing, build_on_every_process, count_processes
from qa_core.checkpoints import RunState
from qa_core.errors import SettingsError
from qa_core.evaluation import EvalReferences, Evaluator
from qa_core.loop import StepPlan, TrainingRun
from qa_core.modeling import check_model_folder
from qa_core.optim import build_optimizer, build_scheduler
from qa_core.pipeline import PreprocessConfig, counts_text, load_tokenizer, prepare
from qa_core.processes import disagreement
from qa_core.readers import DataSourceError
from qa_core.settings import TrainSettings

# Share of answer-less windows drawn per epoch when --negative_window_fraction is not given:
# TyDi-style long documents have mostly answer-less windows, so keep 10 % of them (the TyDi
# baseline's choice); SQuAD-style paragraphs keep all.
TYDI_NEGATIVE_WINDOW_FRACTION = 0.1


def negative_fraction(given: float | None, formats: dict[str, int]) -> float:
    """``--negative_window_fraction`` if ``given``, else the one rule for the default share,
    from the cache summary's source ``formats``."""
    if given is not None:
        return given
    long_documents = formats.get("tydi", 0) + formats.get("primeqa", 0)
    return TYDI_NEGATIVE_WINDOW_FRACTION if long_documents else 1.0


@dataclass
class CachedSplit:
    """One data source's cache entry: its summary, its memory-mapped features table and the
    selected examples with the rows of their windows (``--max_*_examples``)."""

    summary: dict
    features: pa.Table
    selection: FeatureSelection
    builds: int = 0

    def data_facts(self) -> dict:
        """For the run summary: the source, the examples read and used (``--max_*_examples``),
        and the rows left out, counted by reason (``skipped``) with the labelling ``notes``."""
        return {"source": self.summary["source"], "examples": self.summary["examples"],
                "examples_used": self.selection.examples.num_rows,
                "skipped": self.summary["skipped"], "notes": self.summary["notes"]}


def checked_tokenizer(model: str):
    """``model``'s tokenizer, once :func:`~qa_core.modeling.check_model_folder` found the folder
    whole (a damaged one is refused before any preprocessing)."""
    check_model_folder(model)
    return load_tokenizer(model)


def load_cached_split(accelerator, settings: TrainSettings, sharing: CacheSharing, data: str,
                      split: str, tokenizer, limit: int | None) -> CachedSplit:
    """Build or reuse the cache entry (its builder first: once per shared folder), then open it
    memory-mapped. ``builds`` counts the processes that built it (0 on a cache hit)."""
    config = PreprocessConfig(
        data=data, split=split, model=settings.data.model, cache_dir=settings.cache.cache_dir,
        language=settings.cache.language, max_length=settings.features.max_length,
        doc_stride=settings.features.doc_stride, label_answer=settings.features.label_answer,
        num_proc=settings.cache.num_proc)
    # the builder's refusal stops every process alike, also one whose machine reads its own
    # copy of the data or cache and got on (it went on alone into count_processes)
    result = build_on_every_process(accelerator, sharing, lambda: prepare(config, tokenizer))
    # the entry's key is its content's (data, tokenizer, settings): machines reading copies that
    # differ planned other epochs and steps, and waited in each other's collectives for ever
    differs = disagreement(accelerator, result.summary["key"])
    if differs:
        raise DataSourceError(f"{data}: the processes did not read the same data (cache entry "
                              f"{differs}): every machine's copy of it, and of --model's "
                              "tokenizer, must be the same")
    builds = count_processes(accelerator, not result.summary["cache_hit"])
    if result.summary["skipped"]:  # counted, and said: a skip is never silent
        accelerator.print(f"{result.summary['source']}: "
                          f"{sum(result.summary['skipped'].values())} rows skipped "
                          f"({counts_text(result.summary['skipped'])})")
    features, examples = open_cache_entry(result.entry)
    return CachedSplit(result.summary, features, select_first_examples(features, examples, limit),
                       builds)


def build_evaluator(accelerator, settings: TrainSettings, split: CachedSplit,
                    pad_token_id: int) -> Evaluator:
    """The eval windows, their references for decoding and scoring, and an (unprepared) loader."""
    eval_set = rows_of(accelerator, settings, split, pad_token_id)
    references = EvalReferences.build(split.selection.examples, eval_set)
    check_metric_for_best_model(settings.run.metric_for_best_model, references,
                                split.summary["source"])
    has_unanswerable = any(not answers for answers in references.gold_answers)
    loader = torch.utils.data.DataLoader(eval_set, collate_fn=identity_collate,
                                         batch_size=settings.optim.per_device_eval_batch_size)
    return Evaluator(accelerator, loader, references,
                     settings.decode.decode_config(has_unanswerable),
                     data_key=f"{split.summary['key']}/{settings.data.max_eval_examples}")


def check_metric_for_best_model(metric: str, references: EvalReferences, source: str) -> None:
    """A TyDi metric needs TyDi evaluation data (official raw or HF primary_task layout)."""
    if metric.startswith("tydi_") and references.tydi is None:
        raise SettingsError(f"--metric_for_best_model {metric}: the evaluation data ({source}) "
                            "is not TyDi QA (official raw or HF primary_task layout), so it has "
                            "no TyDi scores; choose f1 or exact_match")


def rows_of(accelerator, settings: TrainSettings, split: CachedSplit,
            pad_token_id: int) -> FeatureRows:
    """The split's selected windows, read by row from the memory-mapped entry."""
    return FeatureRows(split.features, pad_token_id, settings.optim.pad_to,
                       pad_multiple(accelerator.mixed_precision), settings.features.max_length,
                       selection=split.selection)


def weight_average(accelerator, model, average_last: float) -> WeightAverage | None:
    """``--average_last``'s running mean of the (unwrapped, prepared) model's weights, or None.
    FSDP shards the weights across processes, which this average does not follow: refused."""
    from accelerate.utils import DistributedType

    if not average_last:
        return None
    if accelerator.distributed_type == DistributedType.FSDP:
        raise SettingsError("--average_last: not supported with FSDP (each process holds only "
                            "a shard of the weights); use DDP or leave it out")
    return WeightAverage(accelerator.unwrap_model(model), average_last)


def run_shape(settings: TrainSettings, evaluator: Evaluator, accelerator,
              plan: StepPlan) -> RunShape:
    """What a time budget prices its plan from: one evaluation's windows against one step's,
    the evaluations and checkpoints a length implies, and the step limit it must not pass."""
    run_args = settings.run
    return RunShape(
        eval_windows=len(evaluator.references.feature_example_index),
        batch_windows=settings.optim.per_device_train_batch_size * accelerator.num_processes,
        eval_every=run_args.eval_steps if run_args.eval_strategy == "steps" else None,
        epoch_evals=run_args.eval_strategy == "epoch",
        checkpoint_every=run_args.checkpointing_steps, step_limit=plan.total_steps,
        warmup_steps=settings.optim.warmup_steps)


def start_training(accelerator, settings: TrainSettings, model, split: CachedSplit,
                   evaluator: Evaluator, pad_token_id: int, resumed: Path | None,
                   started_at: float) -> TrainingRun:
    """Optimizer, batches, schedule and run state, all prepared; resumed from ``resumed`` (the
    checkpoint the processes agreed on) when given."""
    optim = settings.optim
    if optim.torch_compile:
        model.compile()  # in place: state_dict keys and save_pretrained stay plain
    if optim.optim == "adafactor" and accelerator.distributed_type == "FSDP":
        # its update mixes plain tensors with FSDP2's DTensor parameters: a traceback per rank
        raise SettingsError("--optim adafactor: not supported with FSDP (transformers' Adafactor "
                            "cannot update sharded DTensor parameters); use adamw_torch* or DDP")
    optimizer = build_optimizer(optim.optim, model, optim.learning_rate, optim.weight_decay)
    optimizer_class = type(optimizer).__name__  # before accelerate wraps it
    train_set = rows_of(accelerator, settings, split, pad_token_id)
    negatives = negative_fraction(settings.data.negative_window_fraction,
                                  split.summary.get("formats", {}))
    sampler, loader = training_loader(train_set, optim.per_device_train_batch_size,
                                      accelerator.num_processes, negatives, optim.seed,
                                      optim.group_by_length)
    model, optimizer, loader, evaluator.loader = accelerator.prepare(
        model, optimizer, loader, evaluator.loader)
    plan = StepPlan.build(len(loader), optim.gradient_accumulation_steps,
                          optim.max_train_steps, optim.num_train_epochs)
    # a budgeted run's schedule decays once the budget has planned it (TimeBudget.after_step)
    scheduled = None if optim.max_train_minutes else plan.total_steps
    scheduler = build_scheduler(optimizer, optim.lr_scheduler, optim.warmup_steps, scheduled)
    # the flags and the facts resolved here, which a resume compares (qa_core.settings RESUME_*)
    state = RunState(settings={
        **settings.as_flat_dict(), "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        "train_data_key": split.summary["key"], "eval_data_key": evaluator.data_key,
        "mixed_precision": accelerator.mixed_precision, "negative_window_fraction": negatives,
        "optimizer": optimizer_class, "scheduled_steps": scheduled})
    run = TrainingRun(accelerator, model, optimizer, scheduler, loader, sampler, plan, state,
                      Path(settings.run.output_dir), optim.lr_scheduler, optim.warmup_steps,
                      average=weight_average(accelerator, model, optim.average_last))
    if optim.max_train_minutes:
        costs = StepCosts(plan.steps_per_epoch, partial(
            epoch_step_costs, train_set, sampler, optim.per_device_train_batch_size,
            accelerator.num_processes, optim.gradient_accumulation_steps))
        run.budget = TimeBudget(accelerator, optim.max_train_minutes, started_at, costs,
                                run_shape(settings, evaluator, accelerator, plan), run.fix_plan)
    run.resume(resumed)
    if run.budget is not None and run.budget.seconds_spent_before_training():
        raise SettingsError(
            f"--max_train_minutes {optim.max_train_minutes:g}: spent before the first step "
            f"({time.time() - started_at:.1f} s for start-up, data and model): no run fits "
            "inside it; give more time")
    step = run.state.global_step
    total = (plan.total_steps if run.budget is None else
             run.budget.start(run.state.planned_total_steps, step))
    if resumed is not None:
        accelerator.print(f"resumed from {resumed} at step {step} "
                          f"(epoch {run.state.epoch}, batch {run.state.batches_in_epoch})")
    if total is not None:
        run.fix_plan(total, step, resumed=resumed is not None)
    steps = (f"{run.plan.total_steps} optimizer steps" if run.planned else
             f"optimizer steps planned after {calibration_steps(optim.warmup_steps)} to fit "
             f"--max_train_minutes {optim.max_train_minutes:g}")
    accelerator.print(f"{len(train_set)} train features ({len(sampler)} per epoch), {steps} on "
                      f"{accelerator.num_processes} process(es), mixed precision "
                      f"{accelerator.mixed_precision}")
    return run
