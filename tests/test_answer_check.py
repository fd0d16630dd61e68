"""The "math" answer checker (math-verify), the checker dispatch in rewards, and the prompt suffix.

Every problem and answer here is made up for these tests.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdrl_mini import rollout
from kdrl_mini.runs import metrics
from kdrl_mini.answer_check import math_reward
from kdrl_mini.config import load_config
from kdrl_mini.models import load_tokenizer
from kdrl_mini.rewards import batch_rewards, correctness, correctness_reward, reward
from kdrl_mini.rollout import format_prompts

ROOT = Path(__file__).resolve().parents[1]
STUDENT = ROOT / "data" / "models" / "student"
REAL_TEACHER = ROOT / ".cache" / "real" / "smollm2-135m-teacher"

# a worked solution in the GSM8K style: the gold answer is its last "####" line
GOLD_SOLUTION = "Each box holds 3 pens, so 6 boxes hold <<6*3=18>>18 pens.\n#### 18"


@pytest.mark.parametrize("text,answer,expected", [
    # GSM8K style
    ("Tom buys 6 boxes of 3 pens, so he has \\boxed{18} pens.", "18", 1.0),
    ("6 * 3 = 18\n#### 18", GOLD_SOLUTION, 1.0),
    ("so he has \\boxed{18}", GOLD_SOLUTION, 1.0),
    ("The total is 1,234.\n#### 1,234", "1234", 1.0),
    ("#### 1234", "a lot of steps\n#### 1,234", 1.0),
    ("\\boxed{1,234}", 1234, 1.0),
    ("So she pays $18.", "18", 1.0),
    ("So she pays \\$18.", "18", 1.0),
    ("#### $18", "18", 1.0),
    ("\\boxed{\\$18}", 18, 1.0),
    ("So she pays 18 dollars.", "18", 1.0),
    ("\\boxed{18 \\text{ dollars}}", "18", 1.0),
    ("Tom has \\boxed{17} pens.", "18", 0.0),
    ("#### 17", GOLD_SOLUTION, 0.0),
    # MATH style
    ("The probability is \\boxed{\\frac{1}{2}}.", "0.5", 1.0),
    ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\dfrac{3}{4}}", "0.75", 1.0),
    ("\\boxed{\\frac{1}{3}}", "0.5", 0.0),
    ("#### 2\\sqrt{3}", "2\\sqrt{3}", 1.0),
    ("\\boxed{2\\sqrt{3}}", "2", 0.0),
    ("\\boxed{x^2+1}", "1+x^2", 1.0),
    ("First \\boxed{3}, then on reflection \\boxed{5}", "5", 1.0),  # the last boxed answer counts
    ("First \\boxed{3}, then on reflection \\boxed{5}", "3", 0.0),
    ("\\boxed{5}\nno wait\n#### 7", "7", 1.0),  # the later marker counts, whichever kind
    ("#### 7\nno wait, \\boxed{5}", "5", 1.0),
    ("\\boxed{}", "5", 0.0),
])
def test_math_reward(text, answer, expected):
    assert math_reward(text, answer) == expected


@pytest.mark.parametrize("text,answer", [
    ("#### 42abc", "42"),          # letters after digits: the strict checker says 0
    ("\\boxed{18\\%}", "18"),      # percentages are lenient
])
def test_math_reward_leniencies_are_as_documented(text, answer):
    assert math_reward(text, answer) == 1.0
    assert correctness_reward(text, answer) == 0.0


def test_math_reward_refuses_what_it_does_not_read():
    assert math_reward("#### 4.2e1", "42") == 0.0  # no scientific notation
    assert math_reward("\\boxed{Paris}", "Paris") == 0.0  # text answers are not checked
    assert math_reward("\\boxed{9^{9^{9^{9}}}}", "5") == 0.0  # too large to evaluate: not compared
    assert math_reward("\\boxed{2^{\\frac{1}{3}}}", "\\sqrt[3]{2}") == 1.0  # small powers are fine


JUNK = [None, b"\xff\xfe\x80", bytes(range(256)), object(), 3.5, ["#### 3"], "", "   ", "x" * 1_000_000,
        "9" * 1_000_000, "#" * 1_000_000, "#### " + "9" * 1_000_000, "\\boxed{" * 100_000,
        "\\frac{1}{2}" * 100_000, "$" * 1_000_000, "\\boxed{99999999!}"]


def test_junk_gives_zero_quickly():
    for junk in JUNK:
        for gold in ("3", None, b"\xff", 3, "9" * 100_000):
            start = time.perf_counter()
            assert math_reward(junk, gold) == 0.0
            assert time.perf_counter() - start < 3.0, (repr(junk)[:40], repr(gold)[:40])
    assert math_reward(b"#### 3", "3") == 1.0  # bytes are decoded, not refused
    assert math_reward("line\n" * 200_000 + "#### 3", "3") == 1.0  # only the final-answer span is read


OFF_MAIN_THREAD = """
import threading
from kdrl_mini.answer_check import TIMEOUT_S, _signal_timeout, math_reward
assert _signal_timeout() == TIMEOUT_S
out = {}
def run():
    out["timeout"] = _signal_timeout()
    out["rewards"] = [math_reward("\\\\boxed{\\\\frac12}", 0.5), math_reward("\\\\boxed{9^{9^{9^{9}}}}", 5),
                      math_reward("\\\\boxed{99999999!}", 5)]
worker = threading.Thread(target=run)
worker.start()
worker.join()
print(out)
"""


def test_works_off_the_main_thread():
    """math-verify's SIGALRM timeout raises off the main thread; there the checker runs without
    it, and the size guard keeps huge answers from hanging (a subprocess: a hang holds the GIL)."""
    done = subprocess.run([sys.executable, "-c", OFF_MAIN_THREAD], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "{'timeout': None, 'rewards': [1.0, 0.0, 0.0]}"


def test_missing_math_verify_is_one_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_math_verify(name, *args, **kwargs):
        if name.startswith("math_verify"):
            raise ImportError("No module named 'math_verify'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_math_verify)
    with pytest.raises(ImportError, match=r"pip install math-verify"):
        math_reward("\\boxed{1}", "1")
    assert correctness("#### 1", "1") == 1.0  # the strict checker never needs it


# ------------------------------------------------------------------ the checker dispatch


@pytest.mark.parametrize("text,answer", [
    ("47+38=85\n85-19=66\n#### 66", "66"), ("#### 1,000", "1000"), ("#### 41", "42"), ("no answer here", "42"),
    ("#### 1\nrecheck\n#### 2", "2"), ("#### 66", "47+38=85\n85-19=66\n#### 66"), (None, "3"), ("####", "5"),
])
def test_checkers_agree_on_marker_lines(text, answer):
    assert correctness(text, answer) == correctness_reward(text, answer)  # "strict" is today's reward
    assert correctness(text, answer, "math") == correctness(text, answer, "strict")


def test_checkers_differ_on_boxed_answers():
    texts = ["so \\boxed{18}", "#### 18", "$18", "\\boxed{\\frac{1}{2}}", "so the answer is 42"]
    answers = ["18", "18", "18", "0.5", "42"]
    assert batch_rewards(texts, answers).tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert batch_rewards(texts, answers, checker="strict").tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert batch_rewards(texts, answers, checker="math").tolist() == [1.0] * 5  # free text too
    assert reward("\\boxed{18}", "18", format_weight=0.5, checker="math") == 1.5  # the format asked for
    assert reward("#### 18", "18", format_weight=0.5, checker="math") == 1.0


def test_unknown_checker_is_refused():
    with pytest.raises(ValueError, match="choose one of"):
        correctness("#### 1", "1", checker="lenient")
    with pytest.raises(ValueError, match="choose one of"):
        batch_rewards([], [], checker="Math")


# ------------------------------------------------------------------ the prompt suffix

SUFFIX = "\nPut your final answer in \\boxed{}."
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}" \
           "{% if add_generation_prompt %}<assistant>{% endif %}"


def test_suffix_without_a_chat_template():
    tok = load_tokenizer(STUDENT)
    assert not getattr(tok, "chat_template", None)
    prompts = ["Compute 2+3.\n", "Compute 7-4.\n"]
    assert format_prompts(tok, prompts, False) == prompts
    assert format_prompts(tok, prompts, False, "") == prompts
    assert format_prompts(tok, prompts, False, SUFFIX) == [p + SUFFIX for p in prompts]
    with pytest.raises(ValueError, match="no chat template"):
        format_prompts(tok, prompts, True, SUFFIX)


@pytest.mark.parametrize("source", ["tiny+template", "real"])
def test_suffix_lands_inside_the_user_turn(source):
    if source == "real":
        if not (REAL_TEACHER / "tokenizer.json").is_file():
            pytest.skip("the SmolLM2 pair is not built under .cache/real")
        tok = load_tokenizer(REAL_TEACHER)
    else:
        tok = load_tokenizer(STUDENT)
        tok.chat_template = TEMPLATE
    plain, = format_prompts(tok, ["Compute 2+3."], True)
    suffixed, = format_prompts(tok, ["Compute 2+3."], True, SUFFIX)
    assert "Compute 2+3." + SUFFIX in suffixed and SUFFIX not in plain
    assert suffixed == plain.replace("Compute 2+3.", "Compute 2+3." + SUFFIX)  # before the end of the turn
    if source != "real":
        assert suffixed == "<user>Compute 2+3." + SUFFIX + "</user><assistant>"


# ------------------------------------------------------------------ through the trainer

@pytest.fixture(scope="module")
def math_trainer(tmp_path_factory):
    from kdrl_mini.trainer import Trainer

    cfg = load_config("kdrl", answer_checker="math", group_size=2, prompts_per_step=2, max_new_tokens=48,
                      max_steps=1, eval_size=2, student_quant="none", teacher_quant="none",
                      output_dir=str(tmp_path_factory.mktemp("math_checker")))
    return Trainer(cfg)


def test_math_checker_on_the_tiny_world_equals_strict(math_trainer):
    """Tiny-world answers are "#### n" lines: the math checker gives the strict rewards. (48 new
    tokens: at 16 no completion reaches its "####" line, and 0 == 0 would show nothing.)"""
    tr = math_trainer
    rows = [tr.world.train[i] for i in range(2)]
    ro = tr.collect(rows, beta=0.05, laps=metrics.Laps(tr.device))
    answers = [r["answer"] for r in rows for _ in range(2)]
    assert any("####" in t for t in ro.batch.texts)
    assert ro.correct.tolist() == batch_rewards(ro.batch.texts, answers, checker="strict").tolist()


def test_trainer_threads_checker_and_suffix(math_trainer, monkeypatch):
    """collect (train rewards) and evaluate (greedy eval) see the suffixed prompts and score with
    the configured checker: completions rewritten to "\\boxed{gold}" score 1 under "math"."""
    import kdrl_mini.trainer as trainer_module

    tr = math_trainer
    seen, gold = [], {}

    def boxed_sample(policy, tokenizer, prompts, *args, **kwargs):
        seen.extend(prompts)
        batch = real_sample(policy, tokenizer, prompts, *args, **kwargs)
        group = len(batch.texts) // len(prompts)
        batch.texts = [f"The answer is \\boxed{{{gold[p]}}}." for p in prompts for _ in range(group)]
        return batch

    real_sample = rollout.sample
    monkeypatch.setattr(trainer_module, "sample", boxed_sample)
    monkeypatch.setattr(rollout, "sample", boxed_sample)
    monkeypatch.setattr(tr, "cfg", tr.cfg.replace(prompt_suffix=SUFFIX))
    rows = [tr.world.train[i] for i in range(2)] + tr.world.splits["test"][:2]
    gold.update({r["prompt"] + SUFFIX: r["answer"] for r in rows})

    ro = tr.collect(rows[:2], beta=0.05, laps=metrics.Laps(tr.device))
    assert ro.correct.tolist() == [1.0] * 4 and torch.equal(ro.rewards, ro.correct)
    assert tr.evaluate("test", n=2)["eval_accuracy"] == 1.0
    assert seen == [r["prompt"] + SUFFIX for r in rows]

    monkeypatch.setattr(tr, "cfg", tr.cfg.replace(answer_checker="strict"))
    assert tr.collect(rows[:2], beta=0.05, laps=metrics.Laps(tr.device)).correct.tolist() == [0.0] * 4
    assert tr.evaluate("test", n=2)["eval_accuracy"] == 0.0


def test_math_rewards_are_built_on_the_policys_device():
    """The CUDA wiring on CPU (meta device): the math checker's rewards land where the loss runs."""
    from kdrl_mini.rewards import batch_rewards

    meta = torch.device("meta")
    r = batch_rewards(["\\boxed{1}", "no"], ["1", "1"], device=meta, checker="math")
    assert r.device == meta and r.shape == (2,)


def test_format_term_follows_the_checker():
    r"""With answer_checker math the format term pays for one final \boxed{} (what the prompt asks
    for), not for a "####" line; the strict checker keeps the "####" format."""
    from kdrl_mini.rewards import boxed_format_reward, reward

    assert boxed_format_reward("3+4=7\nThe answer is \\boxed{7}.") == 1.0
    assert boxed_format_reward("\\boxed{7}\nand then more text") == 0.0  # not the last line
    assert boxed_format_reward("\\boxed{1} or \\boxed{7}") == 0.0  # two answers
    assert boxed_format_reward(None) == 0.0 and boxed_format_reward("#### 7") == 0.0
    assert reward("x\n\\boxed{7}", "7", 0.5, "math") == 1.5
    assert reward("#### 7", "7", 0.5, "math") == 1.0  # right, but not in the asked-for format
    assert reward("#### 7", "7", 0.5) == 1.5  # strict: unchanged
