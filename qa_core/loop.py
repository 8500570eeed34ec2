"""The training loop: :func:`fit` runs epochs, :func:`train_epoch` micro-batches, each through
:class:`OptimizerStepper`; after each optimizer step, :meth:`Fit.after_step` schedules, logs,
evaluates, checkpoints and asks the time budget whether to stop. Every process runs the same
code; all that decides whether a step is applied is reduced across processes first, so they
never diverge. Evaluation and checkpoint time is paused out of the training throughput.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch
from tqdm.auto import tqdm

from qa_core import checkpoints
from qa_core.averaging import WeightAverage
from qa_core.batching import model_inputs
from qa_core.budget import TimeBudget
from qa_core.checkpoints import RunState
from qa_core.evaluation import Evaluator
from qa_core.modeling import NonFiniteModelError, save_model_checked
from qa_core.optim import NonFiniteGuard, lr_lambda
from qa_core.outputs import RunLog
from qa_core.settings import OptimArgs, RunArgs


class Stopwatch:
    """Training time with evaluation and checkpoint time left out."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.paused = 0.0

    @contextmanager
    def pause(self) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - began

    def training_seconds(self) -> float:
        return time.perf_counter() - self.started - self.paused


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps the run takes, and over how many epochs."""

    steps_per_epoch: int
    total_steps: int
    num_epochs: int

    @classmethod
    def build(cls, batches_per_epoch: int, accumulation: int, max_train_steps: int | None,
              num_train_epochs: float) -> "StepPlan":
        """``--max_train_steps`` if given, else ``--num_train_epochs`` worth of steps."""
        # The last partial accumulation of an epoch still steps (accelerate syncs at the end).
        per_epoch = math.ceil(batches_per_epoch / accumulation)
        total = max_train_steps or math.ceil(num_train_epochs * per_epoch)
        return cls(per_epoch, total, math.ceil(total / per_epoch))


@dataclass
class StepOutcome:
    """One optimizer step: applied, or skipped because some process saw a non-finite value."""

    nonfinite_losses: int
    nonfinite_grad_norm: bool
    grad_norm: float | None

    @property
    def applied(self) -> bool:
        return not (self.nonfinite_losses or self.nonfinite_grad_norm)


class OptimizerStepper:
    """Forward, backward and (at accumulation boundaries) one optimizer step or skip.

    Non-finite losses are counted on the device (no host sync per micro-batch) and reduced
    across processes once per optimizer step, so every process takes the same decision.
    """

    def __init__(self, accelerator, model, optimizer, max_grad_norm: float) -> None:
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm
        self.nonfinite_losses = torch.zeros((), device=accelerator.device)  # this accumulation
        self.window_loss = torch.zeros((), device=accelerator.device)       # since the last log

    def __call__(self, batch: dict[str, torch.Tensor]) -> StepOutcome | None:
        """Returns the step's outcome at an accumulation boundary, else None."""
        accelerator = self.accelerator
        with accelerator.accumulate(self.model):
            loss = self.model(**model_inputs(batch)).loss
            finite = torch.isfinite(loss.detach())
            self.nonfinite_losses += finite.logical_not()
            self.window_loss += torch.where(finite, loss.detach(), 0.0)
            accelerator.backward(loss)  # a NaN reaches every process's gradients in the all-reduce
            if not accelerator.sync_gradients:
                return None
            outcome = self._step_or_skip()
            self.optimizer.zero_grad()
            self.nonfinite_losses.zero_()
            return outcome

    def _step_or_skip(self) -> StepOutcome:
        bad_losses = int(self.accelerator.reduce(self.nonfinite_losses, "sum").item())
        grad_norm = None
        if not bad_losses and self.max_grad_norm:
            grad_norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(),
                                                               self.max_grad_norm))
        # Gradients are all-reduced, so the norm is the same everywhere. With fp16 the scaler
        # itself skips overflowing steps (and lowers its scale): let it see them.
        bad_grads = grad_norm is not None and self.accelerator.scaler is None and \
            not math.isfinite(grad_norm)
        outcome = StepOutcome(bad_losses, bad_grads, grad_norm)
        if outcome.applied:
            self.optimizer.step()
        return outcome


@dataclass
class ThroughputWindow:
    """Samples and micro-batches since the last training log record."""

    started: float = field(default_factory=time.perf_counter)
    samples: int = 0
    batches: int = 0

    def add(self, samples: int) -> None:
        self.samples += samples
        self.batches += 1

    def record(self, window_loss: torch.Tensor, accelerator) -> dict[str, float]:
        """The window's mean loss over every process (each ran as many micro-batches), not rank
        0's alone, and this process's rate; the window starts again."""
        elapsed = time.perf_counter() - self.started
        record = {"loss": accelerator.reduce(window_loss, "mean").item() / max(1, self.batches),
                  "samples_per_s": self.samples / elapsed if elapsed else 0.0}
        window_loss.zero_()
        self.started, self.samples, self.batches = time.perf_counter(), 0, 0
        return record


def real_samples(state: RunState, batch_rows: int, world_size: int, batch_size: int,
                 epoch_samples: int) -> int:
    """Samples a global micro-batch adds, not counting the repeats that even out the processes
    in an epoch's last round (accelerate's even_batches)."""
    counted = min(state.batches_in_epoch * batch_size * world_size, epoch_samples)
    return min(batch_rows * world_size, epoch_samples - counted)


@dataclass
class TrainingRun:
    """The prepared objects one training run steps through, and where it is."""

    accelerator: Any
    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    loader: Any               # the prepared training DataLoader
    sampler: Any              # its EpochSampler (sets the epoch's order)
    plan: StepPlan
    state: RunState
    output_dir: Path
    lr_scheduler: str = "linear"
    warmup_steps: int = 0
    average: WeightAverage | None = None   # --average_last
    budget: TimeBudget | None = field(default=None, init=False)  # --max_train_minutes
    planned: bool = field(default=False, init=False)  # the run's length is fixed (fix_plan)

    def fix_plan(self, total_steps: int, step: int, resumed: bool = False) -> None:
        """Fix the run's length once, at ``step``: as it starts (the step limit, or a resumed
        budgeted run's stored plan) or when its time budget plans it. The schedule decays over
        it and the averaged tail is its last share."""
        self.plan = replace(self.plan, total_steps=total_steps,
                            num_epochs=math.ceil(total_steps / self.plan.steps_per_epoch))
        multiplier = lr_lambda(self.lr_scheduler, self.warmup_steps, total_steps)
        self.scheduler.lr_lambdas = [multiplier] * len(self.scheduler.lr_lambdas)
        if self.budget is not None:  # stored, so that a resumed run keeps the plan
            self.state.planned_total_steps = total_steps
        self.planned = True
        if self.average is not None:
            warning = self.average.fix_tail(total_steps, step, resumed)
            self.state.averaged_steps = self.average.count
            if warning:
                self.accelerator.print(f"warning: {warning}")

    def epoch_batches(self, epoch: int):
        """The epoch's batches, past those a resumed run already consumed."""
        # The prepared loader re-applies its own epoch counter to the sampler each time it is
        # iterated (and a resumed run's counter starts at 0): set both, or epochs replay epoch 0.
        self.loader.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        if self.state.batches_in_epoch:
            return self.accelerator.skip_first_batches(self.loader, self.state.batches_in_epoch)
        return self.loader

    def save_checkpoint(self, keep_last: int | None) -> None:
        folder = self.output_dir / "checkpoints" / f"step_{self.state.global_step}"
        checkpoints.save_checkpoint(self.accelerator, self.model, self.optimizer, self.scheduler,
                                    self.state, folder, self.average)
        if self.accelerator.is_main_process:
            checkpoints.prune_checkpoints(self.output_dir, keep_last)
        self.accelerator.wait_for_everyone()

    def resume(self, folder: Path | None) -> None:
        """Restore ``folder`` (the checkpoint every process agreed on, ``agreed_resume``; None:
        a new run); refuses one that cannot resume exactly."""
        checkpoints.require_checkpoint_support(self.accelerator)  # before training, resumed or not
        if folder is None:
            return
        saved = checkpoints.load_checkpoint(self.accelerator, self.model, self.optimizer,
                                            self.scheduler, folder, expected=self.state,
                                            average=self.average)
        for change in saved.changed_settings(self.state):
            self.accelerator.print(f"warning: resuming from {folder}: {change}")
        self.state = saved.resumed_with(self.state)
        if (self.state.best_f1 is not None
                and folder.resolve().parent.parent != self.output_dir.resolve()):
            # that run's best_model/ is in its own folder, not in this one: this run chooses
            # its own from its evaluations
            self.accelerator.print(f"resuming from {folder} into another --output_dir: "
                                   "best_model/ here is chosen from this run's evaluations")
            self.state = replace(self.state, best_f1=None, best_step=None)

    def finish_average(self, log: "RunLog") -> None:
        """End of training: the model's weights become the average (logged; a tail the run
        stopped short of, on a time budget or an error guard, is said)."""
        if self.average is None:
            return
        last = self.state.global_step
        warning = self.average.finish(self.accelerator.unwrap_model(self.model), last)
        if warning:
            self.accelerator.print(f"warning: {warning}")
        count = self.average.count
        log.write({"event": "weights_averaged", "step": last, "averaged_steps": count,
                   "first_step": last - count + 1 if count else None})


def eval_line(step: int, metrics: dict) -> str:
    """The line an evaluation prints: SQuAD EM/F1, start/end F1 and, on TyDi data, TyDi's
    passage and minimal answer F1 (of ``tydi_headline``'s row)."""
    m = metrics
    line = (f"step {step}: EM {m['exact_match']:.2f} F1 {m['f1']:.2f} "
            f"start_f1 {m['start_f1']:.3f} end_f1 {m['end_f1']:.3f}")
    if m.get("tydi_headline"):
        line += (f" | TyDi {m['tydi_headline']}: passage F1 {m['tydi_passage_f1']:.2f} "
                 f"minimal F1 {m['tydi_minimal_f1']:.2f}")
    return line


@dataclass
class EvalTracker:
    """The latest evaluation, and the best model so far (saved to ``best_model/``) by
    ``metric_for_best_model`` (a key of the metrics: ``f1``, ``exact_match``,
    ``tydi_minimal_f1``, ``tydi_passage_f1``; higher is better)."""

    evaluator: Evaluator
    output_dir: Path
    save_best: bool
    metric_for_best_model: str = "f1"
    metrics: dict | None = None
    predictions: dict | None = None
    tydi_predictions: list | None = None    # TyDi data: the latest TyDi-format predictions
    step: int | None = None

    def run(self, run: TrainingRun | None, model, reason: str, log: RunLog) -> None:
        state = run.state if run is not None else RunState()
        self.metrics, self.predictions, self.tydi_predictions = self.evaluator.evaluate(model)
        self.step = state.global_step
        log.write({"event": "eval", "reason": reason, "step": state.global_step,
                   "epoch": state.epoch, **self.metrics})
        m = self.metrics
        self.evaluator.accelerator.print(eval_line(state.global_step, m))
        value = m.get(self.metric_for_best_model)
        if self.save_best and value is not None and (state.best_f1 is None
                                                     or value > state.best_f1):
            try:  # only finite weights with finite logits become best_model/
                save_model_checked(self.evaluator.accelerator, model,
                                               self.output_dir / "best_model", m)
                state.best_f1, state.best_step = value, state.global_step
            except NonFiniteModelError as err:
                log.write({"event": "model_not_saved", "step": state.global_step,
                           "reason": str(err)})


class TrainedSpan(NamedTuple):
    """What this process trained: seconds (evaluations and checkpoints left out) and samples
    (a resumed run's earlier samples left out: this run's seconds did not train them)."""

    seconds: float = 0.0
    samples: int = 0

    @property
    def samples_per_s(self) -> float | None:
        return round(self.samples / self.seconds, 2) if self.seconds else None


@dataclass
class Fit:
    """One pass of the loop over a run: the step, and all that each optimizer step reports to
    (schedule, non-finite guard, log, evaluations, checkpoints, time budget, progress)."""

    run: TrainingRun
    tracker: EvalTracker
    log: RunLog
    optim: OptimArgs
    args: RunArgs
    clock: Stopwatch = field(default_factory=Stopwatch)
    window: ThroughputWindow = field(default_factory=ThroughputWindow)

    def __post_init__(self) -> None:
        run, optim = self.run, self.optim
        self.stepper = OptimizerStepper(run.accelerator, run.model, run.optimizer,
                                        optim.max_grad_norm)
        self.guard = NonFiniteGuard(optim.max_consecutive_nonfinite)
        # the step bar's total stays unknown until the run's length is fixed (a time budget
        # plans it after its calibration steps)
        self.progress = tqdm(total=run.plan.total_steps if run.planned else None,
                             initial=run.state.global_step, desc="train",
                             disable=not run.accelerator.is_local_main_process)

    def after_step(self, outcome: StepOutcome) -> bool:
        """Schedule, counters, averaging, logging, evaluation, checkpoint and the time budget
        after one optimizer step; True when the run stops here."""
        run, state, args = self.run, self.run.state, self.args
        lr = run.scheduler.get_last_lr()[0]  # the rate this step used
        run.scheduler.step()
        state.global_step += 1
        step = state.global_step
        if self.guard.update(outcome.applied, step):
            state.nonfinite_steps += 1
            self.log.write({"event": "nonfinite_step", "step": step, "epoch": state.epoch,
                            "nonfinite_losses": outcome.nonfinite_losses,
                            "nonfinite_grad_norm": outcome.nonfinite_grad_norm})
        if run.average is not None:
            run.average.update(run.accelerator.unwrap_model(run.model), step)
            state.averaged_steps = run.average.count
        record = None
        if step % args.logging_steps == 0 or step == run.plan.total_steps:
            record = {"event": "train", "step": step, "epoch": state.epoch,
                      **self.window.record(self.stepper.window_loss, run.accelerator),
                      "lr": lr, "grad_norm": outcome.grad_norm,
                      "nonfinite_steps": state.nonfinite_steps}
            self.log.write(record)
        with self.clock.pause():  # evaluate first: the checkpoint then holds its score and RNG
            if args.eval_strategy == "steps" and step % args.eval_steps == 0:
                self.tracker.run(run, run.model, "steps", self.log)
            if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                run.save_checkpoint(args.keep_last)
        if record is not None:  # the bar shows what the log just recorded
            self.progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                      samples_per_s=f"{record['samples_per_s']:.1f}",
                                      refresh=False)
        self.progress.update(1)
        if run.budget is not None and run.budget.after_step(step, self.clock.paused, self.log):
            return True
        if run.planned:
            self.progress.total = run.plan.total_steps
        return False


def fit(run: TrainingRun, tracker: EvalTracker, log: RunLog, optim: OptimArgs,
        args: RunArgs) -> TrainedSpan:
    """Train to ``run.plan.total_steps`` (or until the time budget stops it)."""
    samples_before = run.state.samples_seen
    loop = Fit(run, tracker, log, optim, args)
    run.model.train()
    try:  # the bar is closed before any error line is printed
        for epoch in range(run.state.epoch, run.plan.num_epochs):
            if run.state.global_step >= run.plan.total_steps or not train_epoch(loop, epoch):
                break
            with loop.clock.pause():  # evaluation first, as after a step
                if args.eval_strategy == "epoch":
                    tracker.run(run, run.model, "epoch", log)
                run.save_checkpoint(args.keep_last)
    finally:
        loop.progress.close()
    run.finish_average(log)
    return TrainedSpan(loop.clock.training_seconds(), run.state.samples_seen - samples_before)


def train_epoch(fit: Fit, epoch: int) -> bool:
    """One epoch (or what is left of it); True when it ran to its end, False when the run
    stopped inside it (step limit reached, time budget spent)."""
    run, state = fit.run, fit.run.state
    state.epoch = epoch
    for batch in run.epoch_batches(epoch):
        outcome = fit.stepper(batch)
        samples = real_samples(state, len(batch["input_ids"]), run.accelerator.num_processes,
                               fit.optim.per_device_train_batch_size, len(run.sampler))
        state.batches_in_epoch += 1
        state.samples_seen += samples
        fit.window.add(samples)
        if outcome is None:
            continue
        if fit.after_step(outcome):
            return False
        if state.global_step >= run.plan.total_steps:
            break
    if state.batches_in_epoch < len(run.loader):
        return False
    state.epoch, state.batches_in_epoch = epoch + 1, 0
    return True
