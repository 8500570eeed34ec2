"""qa_core.inference: answer_questions and the qa-answer CLI on a tiny random-init BERT (no
download)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from qa_core.decode import DecodeConfig
from qa_core.features import FeatureBuilder, FeatureConfig
from qa_core.inference import answer_questions, demo_passage, demo_verdicts, main
from qa_core.metrics import normalize_answer


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    return (AutoModelForQuestionAnswering.from_pretrained(tiny_model),
            AutoTokenizer.from_pretrained(tiny_model))


def brute_force_best_span(model, tokenizer, question: str, context: str, max_answer_length: int):
    """Best (start + end logit) span inside the context of a single window, by enumeration."""
    encoding = tokenizer(question, context, return_offsets_mapping=True, return_tensors="pt")
    offsets = encoding.pop("offset_mapping")[0].tolist()
    sequence_ids = encoding.sequence_ids(0)
    with torch.no_grad():
        outputs = model(**encoding)
    start, end = outputs.start_logits[0].tolist(), outputs.end_logits[0].tolist()
    in_context = [i for i, s in enumerate(sequence_ids) if s == 1]
    best = max(((start[i] + end[j], i, j) for i in in_context for j in in_context
                if i <= j < i + max_answer_length), key=lambda t: t[0])
    score, i, j = best
    return score, offsets[i][0], offsets[j][1]


def test_answers_are_spans_of_the_context(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    passage = demo_passage()
    model.train()
    answers = answer_questions(model, tokenizer, passage["questions"], passage["context"])
    assert model.training, "the model's mode is restored"
    assert [a.question for a in answers] == passage["questions"]
    for answer in answers:
        assert 0 <= answer.start_char < answer.end_char <= len(passage["context"])
        assert answer.answer == passage["context"][answer.start_char:answer.end_char]
        assert answer.answer.strip()


def test_single_window_answer_is_the_best_scoring_span(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model.eval()
    context = ("The Higgs boson was discovered at CERN in 2012 by the ATLAS and CMS teams. "
               "Peter Higgs and François Englert shared the 2013 Nobel Prize in Physics.")
    questions = ["Where was the Higgs boson discovered?", "Who shared the prize?"]
    answers = answer_questions(model, tokenizer, questions, context,
                               DecodeConfig(max_answer_length=8))
    for question, answer in zip(questions, answers):
        score, start_char, end_char = brute_force_best_span(model, tokenizer, question, context, 8)
        assert (answer.start_char, answer.end_char) == (start_char, end_char)
        assert answer.score == pytest.approx(score, abs=1e-4)
        assert answer.answer == context[start_char:end_char]


def test_top_k_lists_the_best_distinct_spans_best_first(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model.eval()
    context = ("The Higgs boson was discovered at CERN in 2012 by the ATLAS and CMS teams. "
               "Peter Higgs and François Englert shared the 2013 Nobel Prize in Physics.")
    question = "Who shared the prize?"
    # n_best_size above the context's token count: every span is a candidate, as in brute force
    config = DecodeConfig(n_best_size=64, max_answer_length=6)
    answer, = answer_questions(model, tokenizer, [question], context, config, top_k=5)
    encoding = tokenizer(question, context, return_offsets_mapping=True, return_tensors="pt")
    offsets = encoding.pop("offset_mapping")[0].tolist()
    with torch.no_grad():
        outputs = model(**encoding)
    start, end = outputs.start_logits[0].tolist(), outputs.end_logits[0].tolist()
    in_context = [i for i, s in enumerate(encoding.sequence_ids(0)) if s == 1]
    brute_force = sorted(((start[i] + end[j], offsets[i][0], offsets[j][1]) for i in in_context
                          for j in in_context if i <= j < i + 6), reverse=True)[:5]
    assert len(answer.top_k) == 5
    assert [(s["start_char"], s["end_char"]) for s in answer.top_k] == [
        (a, b) for _, a, b in brute_force]
    assert [s["score"] for s in answer.top_k] == pytest.approx([s for s, _, _ in brute_force],
                                                               abs=1e-4)
    assert answer.top_k[0] == {"answer": answer.answer, "score": answer.score,
                               "start_char": answer.start_char, "end_char": answer.end_char}
    assert all(s["answer"] == context[s["start_char"]:s["end_char"]] for s in answer.top_k)
    plain, = answer_questions(model, tokenizer, [question], context, config)
    assert plain.top_k is None and (plain.answer, plain.score) == (answer.answer, answer.score)


def test_long_context_uses_several_windows(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    passage = demo_passage()
    context = (" ".join([passage["context"]] * 2)
               + " Superman first appeared in Action Comics #1 in 1938.")
    questions = passage["questions"][:2] + ["Where did Superman first appear?"]
    config = FeatureConfig(max_length=96, doc_stride=32)
    examples = [{"id": "0", "question": questions[0], "context": context,
                 "answers": {"text": [], "answer_start": []}}]
    windows = FeatureBuilder(tokenizer, config).build(examples)[0].num_rows
    assert windows >= 5
    assert len(tokenizer(context)["input_ids"]) > 3 * config.max_length

    answers = answer_questions(model, tokenizer, questions, context,
                               DecodeConfig(max_answer_length=20), config, batch_size=3)
    assert len(answers) == len(questions)
    for answer in answers:
        assert answer.answer == context[answer.start_char:answer.end_char] and answer.answer
    # All windows in one batch (more padding, other neighbours): the same answers.
    one_by_one = answer_questions(model, tokenizer, questions, context,
                                  DecodeConfig(max_answer_length=20), config,
                                  batch_size=windows * len(questions))
    assert ([(a.start_char, a.end_char) for a in answers]
            == [(a.start_char, a.end_char) for a in one_by_one])
    assert [a.score for a in answers] == pytest.approx([a.score for a in one_by_one], abs=1e-4)


def test_a_long_context_is_tokenized_in_pieces_with_the_same_answers(model_and_tokenizer,
                                                                     monkeypatch):
    """Memory: no call hands the whole long context to the tokenizer (one encode call on a
    30 MB context peaked at ~5 GB); the answers, scores included, are those of one call."""
    import qa_core.features as features_module

    model, tokenizer = model_and_tokenizer
    passage = demo_passage()
    context = " ".join([passage["context"]] * 8)
    questions = passage["questions"]
    config = FeatureConfig(max_length=128, doc_stride=32)
    whole = answer_questions(model, tokenizer, questions, context, feature_config=config,
                             top_k=3)
    monkeypatch.setattr(features_module, "CONTEXT_PIECE_CHARS", 500)
    lengths = []
    backend = tokenizer.backend_tokenizer

    class Recording:
        def encode(self, text, *args, **kwargs):
            lengths.append(len(text))
            return backend.encode(text, *args, **kwargs)

        def encode_batch(self, texts, *args, **kwargs):
            lengths.extend(len(text) for text in texts)
            return backend.encode_batch(texts, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(backend, name)

    monkeypatch.setattr(tokenizer, "_tokenizer", Recording())
    pieces = answer_questions(model, tokenizer, questions, context, feature_config=config,
                              top_k=3)
    assert pieces == whole
    assert len(context) > 7000 and 0 < max(lengths) <= 500


def test_answers_equal_those_of_one_table_of_every_questions_windows(model_and_tokenizer):
    """qa-answer builds each question's windows as the model reaches them (memory); answers,
    scores and runners-up are those of the former path: one table of every window, read by a
    DataLoader."""
    import pyarrow as pa

    from qa_core.batching import FeatureRows, identity_collate, select_first_examples
    from qa_core.evaluation import EvalAccumulator, EvalReferences, accumulate_logits

    model, tokenizer = model_and_tokenizer
    passage = demo_passage()
    context = " ".join([passage["context"]] * 3)
    questions = passage["questions"] + ["Who?"]
    config, decode = FeatureConfig(max_length=96, doc_stride=32), DecodeConfig()
    examples = pa.Table.from_pylist([
        {"id": str(i), "question": q, "context": context,
         "answers": {"text": [], "answer_start": []}} for i, q in enumerate(questions)])
    table = pa.Table.from_batches([FeatureBuilder(tokenizer, config).build(
        examples.to_pylist())[0]])
    features = FeatureRows(table, tokenizer.pad_token_id,
                           selection=select_first_examples(table, examples, None))
    assert len(features) % 5 and len(features) > 5 * len(questions)  # batches straddle questions
    accumulator = EvalAccumulator(EvalReferences.build(examples, features), decode,
                                  spans_per_feature=3)
    accumulate_logits(model, torch.utils.data.DataLoader(
        features, batch_size=5, collate_fn=identity_collate), accumulator)
    best, ranked = accumulator.answers(3)

    answers = answer_questions(model, tokenizer, questions, context, decode, config,
                               batch_size=5, top_k=3)
    for i, answer in enumerate(answers):
        assert (answer.answer, answer.score, answer.start_char, answer.end_char,
                answer.null_score) == tuple(best[str(i)])
        assert answer.top_k == [{"answer": p.text, "score": p.score, "start_char": p.start_char,
                                 "end_char": p.end_char} for p in ranked[str(i)]]


def test_demo_verdicts_by_key_words():
    passage = demo_passage()
    assert len(passage["key_words"]) == len(passage["questions"]) == 4
    right = ["in 1938", "Action Comics #1", "writer Jerry Siegel and artist Joe Shuster",
             "crime, horror, western and romance"]
    assert demo_verdicts(right, passage) == ["right"] * 4
    # the tutorial-era failures: a list of heroes, one creator, an answer running on
    wrong = ["1938 with the debut of Superman in Action Comics #1",
             "Batman, Captain Marvel, Captain America", "Joe Shuster", "crime, horror"]
    verdicts = demo_verdicts(wrong, passage)
    assert verdicts[0] == "wrong: runs into another answer (action comics 1)"
    assert verdicts[1] == "wrong: lacks action comics 1"
    assert verdicts[2] == "wrong: lacks siegel"
    assert verdicts[3] == "wrong: lacks western romance"
    # every key word occurs in the passage, so a right answer exists
    context_words = set(normalize_answer(passage["context"]).split())
    assert all(w in context_words for keys in passage["key_words"] for w in keys)


def test_demo_answers_adds_answers_and_the_count_right(model_and_tokenizer, capsys):
    from qa_core.outputs import demo_answers

    model, tokenizer = model_and_tokenizer
    summary = {"exact_match": 50.0, "f1": 60.0, "start_f1": 0.5, "end_f1": 0.5}
    demo_answers(model, tokenizer, DecodeConfig(), summary)
    passage = demo_passage()
    answers = summary["demo_answers"]
    assert list(answers) == passage["questions"]
    assert summary["demo_answers_right"] == demo_verdicts(list(answers.values()),
                                                          passage).count("right")
    out = capsys.readouterr().out
    assert "held-out New-Wiki questions: EM 50.00  F1 60.00" in out
    assert out.count("Q: ") == 4 and out.count("   [") == 4


def test_cli_demo_prints_one_line_per_question_and_a_summary(tiny_model, capsys):
    assert main(["--model", tiny_model, "--demo", "--max_length", "128", "--doc_stride", "32"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    passage = demo_passage()
    assert len(passage["questions"]) == 4 and len(lines) == 5
    answers, summary = lines[:4], lines[4]
    assert [a["question"] for a in answers] == passage["questions"]
    for a in answers:
        assert set(a) == {"question", "answer", "score", "start_char", "end_char", "null_score"}
        assert a["answer"] == passage["context"][a["start_char"]:a["end_char"]]
    assert summary["model"] == tiny_model and summary["questions"] == 4
    assert summary["answers"] == {a["question"]: a["answer"] for a in answers}


def test_cli_top_k_adds_each_questions_best_spans(tiny_model, capsys):
    assert main(["--model", tiny_model, "--demo", "--top_k", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    for line in lines[:4]:
        assert [s["score"] for s in line["top_k"]] == sorted(
            (s["score"] for s in line["top_k"]), reverse=True) and len(line["top_k"]) == 3
        assert line["top_k"][0]["answer"] == line["answer"]
    assert main(["--model", tiny_model, "--demo", "--top_k", "0"]) == 2
    assert "--top_k: must be at least 1, got 0" in one_line_error(capsys)


def test_cli_question_and_context(tiny_model, tmp_path, capsys):
    context_file = tmp_path / "passage.txt"
    context_file.write_text("Zürich café: the Higgs boson was found at CERN in 2012.",
                            encoding="utf-8")
    assert main(["--model", tiny_model, "--context_file", str(context_file), "--question", "Where?",
                 "--question", "When?"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 3 and [line["question"] for line in lines[:2]] == ["Where?", "When?"]


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qa-answer: error: "), captured.err
    assert captured.out == ""
    return lines[0]


def test_cli_errors(tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "model"
    assert main(["--model", str(missing), "--demo"]) == 2
    assert f"--model {missing}: no such folder" in one_line_error(capsys)
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path), "--question", "Why?"])  # no context


def test_cli_demo_with_a_context_is_a_usage_error(tiny_model, capsys):
    """--demo used the packaged passage and silently dropped the context given with it."""
    with pytest.raises(SystemExit) as info:
        main(["--model", tiny_model, "--demo", "--context", "The cat sat.", "--question", "Who?"])
    assert info.value.code == 2
    assert "--demo answers from the packaged passage: give --context/--context_file or --demo, " \
        "not both" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # the summary said "questions: 2" beside one answer
        main(["--model", tiny_model, "--context", "The cat sat.", "--question", "Who?",
              "--question", "Who?"])
    assert info.value.code == 2 and "--question 'Who?' is given twice" in capsys.readouterr().err


def test_cli_empty_model_folder_is_one_line_naming_it(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--model", str(empty), "--context", "Some text.", "--question", "Why?"]) == 2
    assert f"--model {empty}: not a model folder (config.json missing; empty)" in one_line_error(
        capsys)


@pytest.mark.parametrize("context", ["", "   ", " \n\t \n", "\u200b\u200b", "\ufeff \u0301"])
def test_cli_blank_context_is_one_line(tiny_model, tmp_path, capsys, context):
    assert main(["--model", tiny_model, "--context", context, "--question", "Why?"]) == 2
    assert "the context is empty or only whitespace" in one_line_error(capsys)
    context_file = tmp_path / "blank.txt"
    context_file.write_text(context, encoding="utf-8")
    assert main(["--model", tiny_model, "--context_file", str(context_file), "--question",
                 "Why?"]) == 2
    assert "the context is empty or only whitespace" in one_line_error(capsys)


def test_cli_blank_question_is_one_line(tiny_model, capsys):
    assert main(["--model", tiny_model, "--context", "Text.", "--question", "Why?", "--question",
                 "  "]) == 2
    assert "--question number 2 is empty or only whitespace" in one_line_error(capsys)
    # zero-width and combining characters only: nothing to read either (they were answered)
    assert main(["--model", tiny_model, "--context", "Text.", "--question", "\u200b\u200b"]) == 2
    assert "--question number 1 is empty or only whitespace" in one_line_error(capsys)


def test_cli_unreadable_context_file_is_one_line_naming_it(tiny_model, tmp_path, capsys):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Line one.\nCaf\u00e9 au lait.".encode("latin-1"))
    assert main(["--model", tiny_model, "--context_file", str(latin1), "--question", "Why?"]) == 2
    assert (f"--context_file {latin1}: not UTF-8 text (byte 0xe9 at offset 13, line 2)"
            in one_line_error(capsys))
    missing = tmp_path / "missing.txt"
    assert main(["--model", tiny_model, "--context_file", str(missing), "--question", "Why?"]) == 2
    assert f"--context_file {missing}: cannot read it (No such file" in one_line_error(capsys)
    assert main(["--model", tiny_model, "--context_file", str(tmp_path), "--question", "Why?"]) == 2
    assert f"--context_file {tmp_path}: cannot read it (Is a directory)" in one_line_error(capsys)


LONG_QUESTION = "why " * 600  # 600 tokens: more than --max_length 384 holds


@pytest.mark.parametrize("args,message", [
    (["--context", "The fox is in Paris.", "--question", LONG_QUESTION],
     "--question number 1 is too long for --max_length 384 (600 tokens): nothing left for the "
     "context"),
    # one question fine, one too long: was rc 0 with "answer": "", "score": -Infinity
    (["--context", "The fox is in Paris.", "--question", "Where?", "--question", LONG_QUESTION],
     "--question number 2 is too long for --max_length 384 (600 tokens)"),
    (["--context", "\ufffd\ufffd", "--question", "Why?"],  # not blank, but no tokens
     "the context has no tokens for this model's tokenizer"),
    (["--demo", "--max_length", "64", "--doc_stride", "63"],
     "--question number 1 (10 tokens) leaves 51 context tokens per window with --max_length 64, "
     "not more than --doc_stride 63"),
], ids=["long_question", "one_long_question_of_two", "zero_width_context", "doc_stride"])
def test_cli_a_question_no_window_can_hold_is_one_line_naming_it(tiny_model, capsys, args,
                                                                   message):
    assert main(["--model", tiny_model, *args]) == 2
    assert message in one_line_error(capsys)


def test_answer_questions_refuses_a_question_no_window_can_hold(model_and_tokenizer):
    from qa_core.inference import InputError

    model, tokenizer = model_and_tokenizer
    with pytest.raises(InputError, match="--question number 2 is too long for --max_length 64"):
        answer_questions(model, tokenizer, ["Where?", LONG_QUESTION], "The fox is in Paris.",
                         feature_config=FeatureConfig(max_length=64, doc_stride=16))


def test_cli_max_length_above_the_tokenizers_limit_is_one_line(tiny_model, capsys):
    assert main(["--model", tiny_model, "--demo", "--max_length", "100000"]) == 2
    assert ("--max_length 100000: exceeds the model's limit of 512 tokens (its "
            in one_line_error(capsys))


def test_cli_max_length_above_the_models_positions_is_one_line(tiny_model, tmp_path, capsys):
    """A tokenizer that sets no model_max_length let --max_length 1000 through to a
    512-position model: a RuntimeError traceback from the forward pass."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config.pop("model_max_length", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    positions = json.loads((folder / "config.json").read_text())["max_position_embeddings"]
    assert main(["--model", str(folder), "--demo", "--max_length", str(positions + 8)]) == 2
    assert (f"--max_length {positions + 8}: exceeds the model's limit of {positions} tokens"
            in one_line_error(capsys))


@pytest.mark.parametrize("flag,named", [("--question", "--question number 1"),
                                        ("--context", "--context")])
def test_cli_text_that_is_not_utf8_is_one_line_naming_it(tiny_model, capsys, flag, named):
    """A command-line byte that is not UTF-8 (``$'Where\\xff?'``) reaches Python as a lone
    surrogate (surrogateescape); it was a pyarrow UnicodeEncodeError traceback."""
    text = b"Where\xff?".decode("utf-8", "surrogateescape")
    args = {"--question": "Where?", "--context": "The fox is in Paris.", flag: text}
    assert main(["--model", tiny_model, "--context", args["--context"], "--question",
                 args["--question"]]) == 2
    assert (f"{named} is not valid Unicode text (byte 0xff, not UTF-8, at character 6)"
            in one_line_error(capsys))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_cli_pickle_weights_are_refused_by_name_and_run_nothing(tiny_model, tmp_path, capsys):
    from test_checkpoints import plant

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "marker"
    plant(folder / "pytorch_model.bin", marker, zipped=False)
    assert main(["--model", str(folder), "--demo"]) == 2
    assert (f"{folder / 'pytorch_model.bin'}: not a weights-only torch file, refused without "
            "running it (Unsupported operand 149)" in one_line_error(capsys))
    assert not marker.exists()


def test_cli_unusable_config_is_one_line_naming_it(tiny_model, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": "two"}))
    assert main(["--model", str(folder), "--demo"]) == 2
    assert (f"{folder / 'config.json'}: not a usable model config (Field 'num_hidden_layers' "
            "expected int, got str (value: 'two'))" in one_line_error(capsys))


@pytest.mark.parametrize(("damage", "said"), [
    ("missing", "its tokenizer has 5 tokens, the model's vocabulary 30522: the tokenizer's "
                "vocabulary file is missing or damaged (found tokenizer_config.json; "),
    ("empty_object", "its tokenizer files cannot be loaded (damaged or incomplete; found "
                     "tokenizer.json, tokenizer_config.json: KeyError: 'added_tokens')"),
    ("truncated", "its tokenizer files cannot be loaded (damaged or incomplete; found "
                  "tokenizer.json, tokenizer_config.json: JSONDecodeError: "),
])
def test_cli_damaged_or_missing_tokenizer_is_one_line_naming_the_folder(
        tiny_model, tmp_path, capsys, damage, said):
    """Without tokenizer.json, transformers built a 5-token tokenizer from tokenizer_config.json
    alone: every word became [UNK] and qa-answer (and preprocessing) went on with rc 0."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    tokenizer_file = folder / "tokenizer.json"
    if damage == "missing":
        tokenizer_file.unlink()
    else:
        text = "{}" if damage == "empty_object" else tokenizer_file.read_text()[:3000]
        tokenizer_file.write_text(text)
    assert main(["--model", str(folder), "--demo"]) == 2
    assert f"--model {folder}: {said}" in one_line_error(capsys)


def test_cli_model_without_a_trained_qa_head_is_one_line(tiny_model, tmp_path, capsys):
    """A plain encoder would answer with a random QA head, different on every run."""
    from test_checkpoints import save_plain_encoder

    folder = save_plain_encoder(tiny_model, tmp_path / "encoder")
    capsys.readouterr()  # the saving's progress bars
    assert main(["--model", str(folder), "--demo"]) == 2
    assert (f"--model {folder}: has no trained question-answering head (qa_outputs.bias, "
            "qa_outputs.weight missing): fine-tune it first with train_accelerate.py"
            in one_line_error(capsys))


def test_cli_model_with_nonfinite_logits_is_one_line(tiny_model, tmp_path, capsys):
    """NaN logits leave no span to choose: refused, not printed as "" with a -Infinity score."""
    from transformers import AutoModelForQuestionAnswering

    folder = tmp_path / "nan_model"
    shutil.copytree(tiny_model, folder)
    model = AutoModelForQuestionAnswering.from_pretrained(tiny_model)
    with torch.no_grad():
        model.qa_outputs.bias.fill_(float("nan"))
    model.save_pretrained(str(folder))
    capsys.readouterr()  # the loading's and saving's progress bars
    assert main(["--model", str(folder), "--demo"]) == 2
    assert (f"--model {folder}: its logits are NaN or inf for --question number 1: its weights "
            "are unusable" in one_line_error(capsys))


def test_cli_no_answer_allowed_is_an_empty_answer_not_a_weights_error(tiny_model, capsys):
    """With --allow_no_answer the no-answer score may win: the answer is "" (its score the
    no-answer one). qa-answer called that "its logits are NaN or inf ... unusable"."""
    assert main(["--model", tiny_model, "--context", "The cat sat on the mat.", "--question",
                 "Where?", "--allow_no_answer", "true", "--null_score_diff_threshold",
                 "-1000"]) == 0
    answer = json.loads(capsys.readouterr().out.splitlines()[0])
    assert answer["answer"] == "" and answer["start_char"] == -1
    assert answer["score"] == answer["null_score"] is not None


def test_no_valid_span_among_the_n_best_is_said_as_such():
    from qa_core.inference import Answer, InputError, ModelFolderError, check_answers

    no_span = Answer("Where?", "", float("-inf"), -1, -1, 1.5)
    with pytest.raises(InputError, match=r"--question number 2: no valid span among the "
                                         r"--n_best_size 1 best start and end tokens"):
        check_answers([Answer("Who?", "Ann", 3.0, 0, 3, 1.0), no_span], "m", n_best_size=1)
    with pytest.raises(ModelFolderError, match="its logits are NaN or inf"):
        check_answers([Answer("Where?", "", float("-inf"), -1, -1, float("-inf"))], "m", 1)


def test_answer_json_has_no_infinity_or_nan():
    from qa_core.inference import Answer

    answer = Answer("Why?", "", float("-inf"), -1, -1, float("nan"),
                    [{"answer": "x", "score": float("inf"), "start_char": 0, "end_char": 1}])
    data = answer.as_json()
    assert data["score"] is None and data["null_score"] is None
    assert data["top_k"][0] == {"answer": "x", "score": None, "start_char": 0, "end_char": 1}
    json.dumps(data, allow_nan=False)
