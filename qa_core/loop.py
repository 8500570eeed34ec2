"""The training loop as named parts: one optimizer step-or-skip, logging, evaluation, checkpoints.

``fit`` reads top to bottom: for each epoch, for each micro-batch, one call to
:class:`OptimizerStepper`; after each optimizer step, :func:`after_optimizer_step` logs,
checkpoints and evaluates as the settings ask. Every process runs the same code; all that
decides whether a step is applied is reduced across processes first, so they never diverge.
Evaluation and checkpoint time is paused out of the training throughput.
"""
from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch

from qa_core import checkpoints
from qa_core.averaging import WeightAverage
from qa_core.batching import model_inputs
from qa_core.budget import TimeBudget
from qa_core.checkpoints import RunState
from qa_core.evaluation import Evaluator
from qa_core.modeling import NonFiniteModelError, save_model_checked
from qa_core.optim import NonFiniteGuard, lr_lambda
from qa_core.settings import OptimArgs, RunArgs


class RunLog:
    """``log.jsonl`` (main process) and the experiment tracker, one record per event."""

    def __init__(self, accelerator, path: Path, report_to: str) -> None:
        self.accelerator = accelerator
        self.path = path
        self.report_to = report_to
        self.started = time.perf_counter()

    def write(self, record: dict) -> None:
        record = {**record, "time_s": round(time.perf_counter() - self.started, 3)}
        if self.accelerator.is_main_process:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        if self.report_to != "none":
            numbers = {k: v for k, v in record.items() if isinstance(v, (int, float))}
            self.accelerator.log(numbers, step=record.get("step"))


def start_log(accelerator, output_dir: Path, report_to: str,
              new_run: bool) -> tuple[RunLog, dict]:
    """The run's log, opened with the distribution in effect (also printed): distributed type,
    world size, machines, mixed precision and sharding. A new run starts ``log.jsonl`` afresh;
    a resumed one goes on appending to its run's."""
    from qa_core.hardware import describe_distribution, distribution_line

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if new_run:
            (output_dir / "log.jsonl").unlink(missing_ok=True)
    log = RunLog(accelerator, output_dir / "log.jsonl", report_to)
    distribution = describe_distribution(accelerator)
    log.write({"event": "distribution", **distribution})
    accelerator.print(distribution_line(distribution))
    return log, distribution


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
        # The last partial accumulation of an epoch still steps (accelerate syncs at the end).
        per_epoch = math.ceil(batches_per_epoch / accumulation)
        total = cls.step_limit(per_epoch, max_train_steps, num_train_epochs)
        return cls(per_epoch, total, math.ceil(total / per_epoch))

    @staticmethod
    def step_limit(steps_per_epoch: int, max_train_steps: int | None,
                   num_train_epochs: float) -> int:
        """``--max_train_steps`` if given, else ``--num_train_epochs`` worth of steps."""
        return max_train_steps or math.ceil(num_train_epochs * steps_per_epoch)


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
        """The window's mean loss over every process (each ran as many micro-batches; rank 0's
        own loss alone was logged) and this process's rate; the window starts again."""
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
    budget: TimeBudget | None = None
    # kept back for the final evaluation and save; None until this process makes the plan
    final_reserve_seconds: float | None = None
    average: WeightAverage | None = None  # --average_last

    def set_total_steps(self, total_steps: int, warmup_steps: int, schedule: str) -> None:
        """Fix the number of optimizer steps (a budget's plan) and the LR schedule with it."""
        self.plan = replace(self.plan, total_steps=total_steps,
                            num_epochs=math.ceil(total_steps / self.plan.steps_per_epoch))
        multiplier = lr_lambda(schedule, warmup_steps, total_steps)
        self.scheduler.lr_lambdas = [multiplier] * len(self.scheduler.lr_lambdas)
        self.state.planned_total_steps = total_steps

    @property
    def total_steps_known(self) -> bool:
        """False only while a time budget has not yet planned the run (its total is then a
        placeholder)."""
        return self.budget is None or self.state.planned_total_steps is not None

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

    def resume(self, resume_from_checkpoint: str | None) -> Path | None:
        """Restore the newest (``auto``) or given checkpoint; refuses one that cannot resume
        exactly. Returns the folder resumed from, or None."""
        checkpoints.require_checkpoint_support(self.accelerator)
        folder = checkpoints.agreed_resume(self.accelerator, self.output_dir,
                                           resume_from_checkpoint)
        if folder is None:
            return None
        saved = checkpoints.load_checkpoint(self.accelerator, self.model, self.optimizer,
                                            self.scheduler, folder, expected=self.state,
                                            average=self.average)
        for change in saved.changed_settings(self.state):
            self.accelerator.print(f"warning: resuming from {folder}: {change}")
        self.state = saved.resumed_with(self.state)
        if (self.state.best_f1 is not None
                and folder.resolve().parent.parent != self.output_dir.resolve()):
            # that run's best_model/ is in its own folder: this one chooses its own (the
            # summary named a best step whose model was nowhere in this output folder)
            self.accelerator.print(f"resuming from {folder} into another --output_dir: "
                                   "best_model/ here is chosen from this run's evaluations")
            self.state = replace(self.state, best_f1=None, best_step=None)
        return folder

    def update_average(self) -> None:
        """Add this step's weights to the average when it is in the averaged tail of the plan
        (a budgeted run's plan is known only once made)."""
        if self.average is None or not self.total_steps_known:
            return
        self.average.update(self.accelerator.unwrap_model(self.model), self.state.global_step,
                            self.plan.total_steps)
        self.state.averaged_steps = self.average.count

    def reconcile_resumed_average(self) -> None:
        """A resume with another run length moves the averaged tail: a mean the checkpoint began
        before the new tail is dropped, and one the new tail should already hold more of is
        said. (It went on silently, averaging steps 5-6 and 9-16 for a tail of 9-16.)"""
        if self.average is None or not self.total_steps_known:
            return
        step, count, total = self.state.global_step, self.average.count, self.plan.total_steps
        first = self.average.first_step(total)
        if count == max(0, step - first + 1):
            return
        if first > step:
            self.average.reset()
            self.state.averaged_steps = 0
            said = (f"begins at step {first}, after the checkpoint: its mean of {count} steps' "
                    "weights is dropped")
        else:
            said = (f"begins at step {first}, but the checkpoint's mean holds {count} steps up to "
                    f"step {step}: the model will be the mean of those and steps {step + 1}-"
                    f"{total}")
        self.accelerator.print(f"warning: --average_last: resumed with another run length, the "
                               f"averaged tail of the {total} steps {said}")

    def use_average(self, log: "RunLog") -> None:
        """End of training: the model's weights become the average (logged; a tail the run
        stopped short of, on a time budget or an error guard, is said)."""
        if self.average is None:
            return
        self.average.copy_into(self.accelerator.unwrap_model(self.model))
        count, last, total = self.average.count, self.state.global_step, self.plan.total_steps
        first = self.average.first_step(total)
        if not self.total_steps_known:
            self.accelerator.print(f"warning: --average_last: training stopped at step {last}, "
                                   "before the time budget planned the run: nothing is averaged")
        elif last < total and count < total - first + 1:
            self.accelerator.print(
                f"warning: --average_last: training stopped at step {last} of the {total} "
                "planned, " + (f"so the model is the mean of {count} steps' weights, not of the "
                               f"{total - first + 1} planned" if count else
                               f"before the averaged tail (from step {first}): the model is the "
                               "last step's weights, not an average"))
        log.write({"event": "weights_averaged", "step": last, "averaged_steps": count,
                   "first_step": last - count + 1 if count else None})  # as averaged


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


def evaluation_windows(run: TrainingRun, tracker: EvalTracker,
                       optim: OptimArgs) -> tuple[int, int]:
    """(windows one evaluation reads, windows one training step reads): what a budget prices an
    evaluation from."""
    return (len(tracker.evaluator.references.feature_example_index),
            optim.per_device_train_batch_size * run.accelerator.num_processes)


def budget_says_stop(run: TrainingRun, tracker: EvalTracker, optim: OptimArgs,
                     settings: RunArgs, log: RunLog, clock: Stopwatch) -> bool:
    """With ``--max_train_minutes``: time the calibration steps, then fix the plan once; stop
    early (on every process alike) if the remaining time no longer covers the final evaluation
    and save (before the plan, priced from the steps so far)."""
    budget, state = run.budget, run.state
    if budget is None:
        return False
    if run.final_reserve_seconds is None:  # this process has made no plan (yet)
        budget.observe_step(state.global_step, clock.paused)
        if not run.total_steps_known and budget.ready_to_plan(state.global_step,
                                                              optim.warmup_steps):
            plan_budgeted_run(run, tracker, optim, settings, log)
    reserve = run.final_reserve_seconds
    if reserve is None:
        # before the plan, and under a plan this process did not make (a resumed run's stored
        # plan, a step limit reached before any plan could be made): priced from the steps
        # seen so far (such runs once kept nothing and could overrun by a whole evaluation)
        reserve = budget.provisional_reserve(*evaluation_windows(run, tracker, optim))
    if not budget.time_is_up(reserve):
        return False
    run.accelerator.print(
        f"time budget: training stops at step {state.global_step}"
        + (f" of the {run.plan.total_steps} planned" if run.total_steps_known else
           ", before the plan was made")
        + f", keeping {reserve:.0f} s for the final evaluation and save inside "
          f"--max_train_minutes {optim.max_train_minutes:g}")
    return True


def plan_budgeted_run(run: TrainingRun, tracker: EvalTracker, optim: OptimArgs,
                      settings: RunArgs, log: RunLog) -> None:
    """Fix the total steps that fit the budget (and the LR schedule with them); log the plan."""
    accelerator, state = run.accelerator, run.state
    # the budget shortens a run, never lengthens it past --num_train_epochs / --max_train_steps
    most = StepPlan.step_limit(run.plan.steps_per_epoch, optim.max_train_steps,
                               optim.num_train_epochs)
    plan = run.budget.plan(
        state.global_step, *evaluation_windows(run, tracker, optim),
        settings.eval_steps if settings.eval_strategy == "steps" else None,
        settings.eval_strategy == "epoch", settings.checkpointing_steps, max_total=most)
    run.set_total_steps(plan.total_steps, optim.warmup_steps, optim.lr_scheduler)
    run.final_reserve_seconds = plan.reserved_seconds / max(1, plan.evaluations)
    if run.average is not None and run.average.first_step(plan.total_steps) <= state.global_step:
        accelerator.print(
            f"warning: --average_last {optim.average_last:g}: the averaged tail of the "
            f"{plan.total_steps} planned steps would begin at step "
            f"{run.average.first_step(plan.total_steps)}, but the time budget made its plan at "
            f"step {state.global_step}: "
            + (f"steps {state.global_step + 1}-{plan.total_steps} are averaged"
               if plan.total_steps > state.global_step else
               "no step is left to average"))  # it printed "steps 13-12 are averaged"
    log.write({"event": "time_budget_plan", "step": state.global_step,
               "total_steps": plan.total_steps, "seconds_per_step": plan.seconds_per_step,
               "reserved_seconds": plan.reserved_seconds,
               "budget_started_at": run.budget.started_at})
    accelerator.print(f"time budget: {plan.total_steps} optimizer steps planned "
                      f"({plan.seconds_per_step:.2f} s/step, {plan.reserved_seconds:.0f} s "
                      f"kept for {plan.evaluations} evaluation(s) and checkpoints)")


def after_optimizer_step(run: TrainingRun, outcome: StepOutcome, stepper: OptimizerStepper,
                         window: ThroughputWindow, guard: NonFiniteGuard, log: RunLog,
                         tracker: EvalTracker, settings: RunArgs,
                         clock: Stopwatch) -> dict | None:
    """Schedule, counters, logging, checkpoint and evaluation after one optimizer step; the
    training log record when this step wrote one."""
    state = run.state
    lr = run.scheduler.get_last_lr()[0]  # the rate this step used
    run.scheduler.step()
    state.global_step += 1
    if guard.update(outcome.applied, state.global_step):
        state.nonfinite_steps += 1
        log.write({"event": "nonfinite_step", "step": state.global_step, "epoch": state.epoch,
                   "nonfinite_losses": outcome.nonfinite_losses,
                   "nonfinite_grad_norm": outcome.nonfinite_grad_norm})
    run.update_average()
    step, record = state.global_step, None
    if step % settings.logging_steps == 0 or step == run.plan.total_steps:
        record = {"event": "train", "step": step, "epoch": state.epoch,
                  **window.record(stepper.window_loss, run.accelerator), "lr": lr,
                  "grad_norm": outcome.grad_norm, "nonfinite_steps": state.nonfinite_steps}
        log.write(record)
    with clock.pause():  # evaluate first: the checkpoint then holds its score and RNG draws
        if settings.eval_strategy == "steps" and step % settings.eval_steps == 0:
            tracker.run(run, run.model, "steps", log)
        if settings.checkpointing_steps and step % settings.checkpointing_steps == 0:
            run.save_checkpoint(settings.keep_last)
    return record


def progress_bar(run: TrainingRun):
    """The step bar on the local main process; its total stays unknown (no placeholder) until a
    time budget has planned the run."""
    from tqdm.auto import tqdm

    return tqdm(total=run.plan.total_steps if run.total_steps_known else None,
                initial=run.state.global_step, desc="train",
                disable=not run.accelerator.is_local_main_process)


class TrainedSpan(NamedTuple):
    """What this process trained: seconds (evaluations and checkpoints left out) and samples
    (a resumed run's earlier samples left out: they were once divided by this run's seconds)."""

    seconds: float = 0.0
    samples: int = 0

    @property
    def samples_per_s(self) -> float | None:
        return round(self.samples / self.seconds, 2) if self.seconds else None


def fit(run: TrainingRun, tracker: EvalTracker, log: RunLog, optim: OptimArgs,
        settings: RunArgs) -> TrainedSpan:
    """Train to ``run.plan.total_steps``."""
    samples_before = run.state.samples_seen
    progress = progress_bar(run)
    stepper = OptimizerStepper(run.accelerator, run.model, run.optimizer, optim.max_grad_norm)
    guard = NonFiniteGuard(optim.max_consecutive_nonfinite)
    clock, window = Stopwatch(), ThroughputWindow()
    run.model.train()
    try:  # the bar is closed before any error line is printed
        for epoch in range(run.state.epoch, run.plan.num_epochs):
            if run.state.global_step >= run.plan.total_steps:
                break
            if not train_epoch(run, epoch, stepper, window, guard, log, tracker, optim, settings,
                               clock, progress):
                break
            with clock.pause():  # evaluation first, as after a step
                if settings.eval_strategy == "epoch":
                    tracker.run(run, run.model, "epoch", log)
                run.save_checkpoint(settings.keep_last)
    finally:
        progress.close()
    run.use_average(log)
    return TrainedSpan(clock.training_seconds(), run.state.samples_seen - samples_before)


def train_epoch(run: TrainingRun, epoch: int, stepper: OptimizerStepper,
                window: ThroughputWindow, guard: NonFiniteGuard, log: RunLog,
                tracker: EvalTracker, optim: OptimArgs, settings: RunArgs, clock: Stopwatch,
                progress) -> bool:
    """One epoch (or what is left of it); True when it ran to its end, False when the run
    stopped inside it (step limit reached, time budget spent)."""
    state, accelerator = run.state, run.accelerator
    state.epoch = epoch
    for batch in run.epoch_batches(epoch):
        outcome = stepper(batch)
        samples = real_samples(state, len(batch["input_ids"]), accelerator.num_processes,
                               optim.per_device_train_batch_size, len(run.sampler))
        state.batches_in_epoch += 1
        state.samples_seen += samples
        window.add(samples)
        if outcome is None:
            continue
        record = after_optimizer_step(run, outcome, stepper, window, guard, log, tracker,
                                      settings, clock)
        if record is not None:  # the bar shows what the log just recorded
            progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                 samples_per_s=f"{record['samples_per_s']:.1f}", refresh=False)
        progress.update(1)
        if budget_says_stop(run, tracker, optim, settings, log, clock):
            log.write({"event": "time_budget_stop", "step": state.global_step})
            return False
        if run.total_steps_known:
            progress.total = run.plan.total_steps  # a budget's plan is known only once made
        if state.global_step >= run.plan.total_steps:
            break
    if state.batches_in_epoch < len(run.loader):
        return False
    state.epoch, state.batches_in_epoch = epoch + 1, 0
    return True
