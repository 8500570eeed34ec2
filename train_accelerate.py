#!/usr/bin/env python
"""Fine-tune an extractive QA model with a hand-written 🤗 Accelerate loop.

    accelerate launch [--config_file accelerate_configs/<file>.yaml] train_accelerate.py [flags]
    python train_accelerate.py --demo        # packaged data slice + packaged MiniLM, on CPU

Defaults reproduce the 2023 tutorial (distilbert-base-cased-distilled-squad on TyDi QA English,
3 epochs, batch 8, warm-up 20, weight decay 0.01, lr 5e-5) with its labelling bugs fixed.
Every flag is a field of the dataclasses in ``qa_core/settings.py`` (``--help`` lists them).

The script only orchestrates: settings -> data -> model and optimizer -> ``fit`` -> outputs.
Output folder: the model + tokenizer (``save_pretrained``), ``metrics.json``,
``predictions.json`` (and ``tydi_predictions.jsonl`` on TyDi data), ``train_config.json``,
``log.jsonl``, ``checkpoints/step_N/`` and
``best_model/``. The last line printed is a JSON summary. Bad settings, data or checkpoints end
the run with one ``error:`` line and exit code 2.
"""
from __future__ import annotations

import time

# A --max_train_minutes budget counts from here: this program's start, read before the heavy
# imports. The operating system's process start is earlier under `bash -c "a && python ..."`,
# where bash execs the last command and so lends it its own start, before `a` ran.
PROGRAM_STARTED_AT = time.time()

import json  # noqa: E402
import sys  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

from qa_core.errors import QAError, SettingsError, exit_interrupted, exit_with_error  # noqa: E402
from qa_core.processes import die_with_the_launcher, leave_launched_process  # noqa: E402
from qa_core.settings import TrainSettings, parse_train_settings  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """The command line's run (``argv`` None: a launched rank also ends the process here, see
    :func:`leave_launched_process`), or an in-process one."""
    # The budget covers start-up (importing torch and transformers takes seconds) when run from
    # the command line; in-process callers count from this call.
    started_at = PROGRAM_STARTED_AT if argv is None else time.time()
    code = run(argv, started_at)
    return leave_launched_process(code) if argv is None else code


def run(argv: list[str] | None, started_at: float) -> int:
    die_with_the_launcher()
    try:
        settings = parse_train_settings(argv)  # bad flags end here, before any work
        with ExitStack() as held:  # the output folder's lock, for the run (open_run takes it)
            return train(settings, started_at, held)
    except QAError as err:
        return exit_with_error("train_accelerate.py", err)
    except KeyboardInterrupt:  # checkpoints are finished or unfinished, never half-written
        return exit_interrupted("train_accelerate.py", "finished checkpoints, if any, resume "
                                "with --resume_from_checkpoint auto")


def train(settings: TrainSettings, started_at: float, held: ExitStack) -> int:
    from qa_core.checkpoints import RunState
    from qa_core.hardware import end_distributed
    from qa_core.loop import EvalTracker, TrainedSpan, fit
    from qa_core.modeling import (
        ModelFolderError,
        freeze_encoder,
        freeze_word_embeddings,
        load_qa_model,
    )
    from qa_core.optim import build_optimizer
    from qa_core.processes import on_every_process
    from qa_core.run_setup import build_evaluator, checked_tokenizer, start_training

    data, optim, run_args = settings.data, settings.optim, settings.run
    do_train = optim.max_train_steps != 0
    accelerator, log, distribution, resume = open_run(settings, held)
    output_dir = Path(run_args.output_dir)

    # --- data: the preprocessing cache, shared with preprocess.py ---------------------------------
    # a damaged model folder is refused before any preprocessing, by every process alike (each
    # machine reads its own copy, or its own hub cache: one that refused alone left the others)
    tokenizer = on_every_process(accelerator, lambda: checked_tokenizer(data.model),
                                 ModelFolderError)
    sharing, splits = load_splits(accelerator, settings, tokenizer, do_train)
    evaluator = build_evaluator(accelerator, settings, splits["eval"], tokenizer.pad_token_id)
    same_data = eval_on_training_data(accelerator, splits)

    # --- model and optimizer ----------------------------------------------------------------------
    model = on_every_process(accelerator, lambda: load_qa_model(
        data.model, optim.attention_dropout, optim.hidden_dropout), ModelFolderError)
    if optim.freeze_encoder:
        freeze_encoder(model)
    if optim.freeze_word_embeddings:
        freeze_word_embeddings(model)
    tracker = EvalTracker(evaluator, output_dir, save_best=do_train,
                          metric_for_best_model=run_args.metric_for_best_model)

    # --- training ---------------------------------------------------------------------------------
    trained, state = TrainedSpan(), RunState()
    if do_train:
        run = start_training(accelerator, settings, model, splits["train"], evaluator,
                             tokenizer.pad_token_id, resume, started_at)
        if run_args.report_to != "none":
            accelerator.init_trackers("qa-accelerate", config=settings.as_flat_dict())
        trained = fit(run, tracker, log, optim, run_args)
        model, state = run.model, run.state
    else:  # FSDP2 prepares a model only together with an optimizer
        optimizer = build_optimizer(optim.optim, model, optim.learning_rate, optim.weight_decay)
        model, _, evaluator.loader = accelerator.prepare(model, optimizer, evaluator.loader)
    if tracker.step != state.global_step or tracker.metrics is None or state.averaged_steps:
        # the final evaluation, unless just run on these weights
        tracker.run(run if do_train else None, model, "final", log)

    write_outputs(accelerator, settings, model, tokenizer, tracker, state, trained,
                  distribution=distribution, cache_sharing=sharing, splits=splits,
                  eval_on_training_data=same_data)
    end_distributed(accelerator)
    return 0


def open_run(settings: TrainSettings, held: ExitStack):
    """The accelerator, the output folder locked (``held`` keeps the lock for the run), checked
    and its log opened, the seed set; and the checkpoint to resume from (None: a new run)."""
    from accelerate.utils import set_seed

    from qa_core.checkpoints import agreed_resume
    from qa_core.hardware import make_accelerator, resolve_mixed_precision
    from qa_core.outputs import check_new_run_output, output_dir_lock, start_log
    from qa_core.processes import on_every_process

    optim, run_args = settings.optim, settings.run
    accelerator = make_accelerator(resolve_mixed_precision(optim.mixed_precision),
                                   optim.gradient_accumulation_steps,
                                   None if run_args.report_to == "none" else run_args.report_to,
                                   run_args.output_dir)
    output_dir = Path(run_args.output_dir)
    # one run at a time in the folder: rank 0 holds the lock, and its refusal stops every rank
    # (taken before the process group, it left the others in the group's rendezvous)
    on_every_process(accelerator, lambda: held.enter_context(output_dir_lock(
        output_dir, holder=accelerator.is_main_process)), SettingsError)
    # also an evaluation-only run, which would replace the model beside the other run's
    # checkpoints and best_model/
    check_new_run_output(accelerator, output_dir, run_args.resume_from_checkpoint,
                         run_args.overwrite_output_dir)
    # every process alike, before any work: the machines must see the same checkpoints
    resume = agreed_resume(accelerator, output_dir, run_args.resume_from_checkpoint)
    log, distribution = start_log(accelerator, output_dir, run_args.report_to, resume is None)
    set_seed(optim.seed)
    return accelerator, log, distribution, resume


def load_splits(accelerator, settings: TrainSettings, tokenizer, do_train: bool):
    """The cache sharing in effect and the cached splits by name: ``eval``, and ``train`` when
    training (built first, as before)."""
    from qa_core.cache_sharing import resolve_cache_sharing
    from qa_core.run_setup import load_cached_split

    data = settings.data
    sharing = resolve_cache_sharing(accelerator, settings.run.cache_sharing,
                                    settings.cache.cache_dir)
    train_split = load_cached_split(accelerator, settings, sharing, data.train_data,
                                    data.train_split, tokenizer, data.max_train_examples) \
        if do_train else None
    eval_split = load_cached_split(accelerator, settings, sharing,
                                   data.eval_data or data.train_data,
                                   data.eval_split, tokenizer, data.max_eval_examples)
    return sharing, {"eval": eval_split, **({"train": train_split} if do_train else {})}


def eval_on_training_data(accelerator, splits: dict) -> bool:
    """One cache entry for both: the same rows (a file has no splits). Said, once."""
    same = "train" in splits and splits["eval"].summary["key"] == splits["train"].summary["key"]
    if same:
        accelerator.print(f"warning: the evaluation data is the training data "
                          f"({splits['eval'].summary['source']}): its scores are not held-out")
    return same


def write_outputs(accelerator, settings: TrainSettings, model, tokenizer, tracker, state,
                  trained, *, distribution: dict, cache_sharing, splits: dict,
                  eval_on_training_data: bool) -> None:
    """The model (finite weights only), metrics, predictions, config, and the JSON summary."""
    from qa_core.checkpoints import write_on_every_process
    from qa_core.modeling import save_model_checked
    from qa_core.outputs import demo_answers, run_summary, write_run_files

    output_dir = Path(settings.run.output_dir)
    accelerator.wait_for_everyone()
    save_model_checked(accelerator, model, output_dir, tracker.metrics)  # refuses NaN/inf weights
    summary = run_summary(tracker.metrics, state, trained, accelerator, output_dir,
                          distribution=distribution,
                          data={name: split.data_facts() for name, split in splits.items()},
                          eval_on_training_data=eval_on_training_data,
                          cache={**asdict(cache_sharing),
                                 "builds": {name: split.builds for name, split in splits.items()}})

    def run_files() -> None:  # the main process's; a write refused there stops every rank
        if not accelerator.is_main_process:
            return
        if settings.run.demo:  # before the run files, so metrics.json holds the answers too
            demo_answers(accelerator.unwrap_model(model), tokenizer,
                         tracker.evaluator.decode_config, summary)
        write_run_files(output_dir, summary, tracker.predictions, settings.as_flat_dict(),
                        tokenizer, tracker.tydi_predictions)
        print(json.dumps(summary, ensure_ascii=False))

    write_on_every_process(accelerator, output_dir, run_files)


if __name__ == "__main__":
    sys.exit(main())
