"""learning_check: the pool reward, its paired change, and that measuring it leaves training as it was."""

import json

import pytest

from kdrl_mini.real import learning_check as lc
from kdrl_mini.config import load_config
from kdrl_mini.runs.metrics import TIMING_KEYS, read_metrics
from kdrl_mini.trainer import Trainer


def test_paired_change_by_hand():
    c = lc.paired_change([0.0, 0.25, 0.5, 0.0], [0.25, 0.25, 0.0, 0.5])
    # differences 0.25, 0, -0.5, 0.5: mean 0.0625, squared deviations sum to 0.546875
    assert c["mean"] == pytest.approx(0.0625)
    assert c["se"] == pytest.approx((0.546875 / 3) ** 0.5 / 2)
    assert (c["up"], c["down"], c["n"]) == (2, 1, 4)
    with pytest.raises(ValueError, match="two equal lists"):
        lc.paired_change([0.1, 0.2], [0.1])


def test_per_pass_reads_train_rows_only():
    log = [{"kind": "train", "reward": r, "exact_kl": 1.0} for r in (0.0, 0.5, 1.0)]
    log.insert(1, {"kind": "eval", "eval_accuracy": 0.9})
    assert lc.per_pass(log, 2) == [0.25, 1.0]
    assert lc.per_pass(log, 2, "exact_kl") == [1.0, 1.0]


def test_learn_config_trains_on_the_pool(tmp_path):
    cfg = lc.learn_config(tmp_path, max_steps=2)
    assert cfg.train_split == lc.LEARN_POOL and cfg.dataset == str((tmp_path / "word_problems").resolve())
    assert cfg.student_path.endswith("-healed") and cfg.student_quant == "none" and cfg.max_steps == 2
    assert (cfg.lr, cfg.group_size, cfg.temperature) == (lc.LEARN["lr"], lc.LEARN["group_size"], lc.LEARN["temperature"])


def _small(tmp_path, name):
    return load_config("kdrl", group_size=4, prompts_per_step=2, max_new_tokens=24, max_steps=2, eval_every=0,
                       eval_size=4, checkpoint_every=0, output_dir=str(tmp_path / name), lr=5e-3,
                       student_quant="none", teacher_quant="none")


def test_measuring_the_pool_does_not_change_the_run(tmp_path):
    plain = Trainer(_small(tmp_path, "plain"))
    plain.train(progress=False)
    measured = Trainer(_small(tmp_path, "measured"))
    pool = measured.world.train[:6]  # a small pool keeps the test short
    before = lc.pool_reward(measured, samples=2, rows=pool)
    assert measured.world.student.training
    assert before["n"] == 6 and len(before["per_row"]) == 6 and sum(k for _, k in before["top_answers"]) <= 12
    assert before == lc.pool_reward(measured, samples=2, rows=pool)  # same seed, same numbers
    log = measured.train(progress=False)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]
    a, b = (read_metrics(tmp_path / n)[0] for n in ("plain", "measured"))
    assert json.dumps(strip(a)) == json.dumps(strip(b))  # NaN-safe equality of every logged number
    both = lc.measure(measured, 2, pool=pool, held_out=measured.world.test[:6])
    assert both["pool"] == lc.pool_reward(measured, samples=2, rows=pool)
    after = {"pool": both["pool"], "test": lc.measure(measured, 2, pool=pool, held_out=measured.world.test[:6])["test"]}
    result = lc.write_result(tmp_path / "measured", 2, both, after, log, measured.cfg)
    assert result["steps_per_pass"] == 6 // 2 and len(result["reward_per_pass"]) == 1  # 2 steps: one partial pass
    assert result["change"]["test"]["mean"] == 0 and result["change"]["pool"]["n"] == 6  # same seed, same model
    assert (tmp_path / "measured" / lc.RESULT).is_file() and lc.figure(tmp_path / "measured").is_file()
    assert "held-out test prompts" in lc.summary(result)


def test_pool_has_one_problem_per_answer(tmp_path):
    train = [{"prompt": f"p{i}", "answer": str(1 + i % 5)} for i in range(30)]
    rows = lc.pool_rows(train, start=10, answers=5)
    assert [r["answer"] for r in rows] == ["1", "2", "3", "4", "5"] and [r["prompt"] for r in rows] == [
        "p10", "p11", "p12", "p13", "p14"]
    with pytest.raises(ValueError, match="has answer 6"):
        lc.pool_rows(train, start=10, answers=6)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    with pytest.raises(ValueError, match="has answer"):  # the shipped recipe needs answers 1..28
        lc.write_pool(tmp_path)


def test_cli_refuses_learn_without_heal(capsys):
    from kdrl_mini.cli import main

    assert main(["real-pair", "--learn", "--no-heal"]) == 2  # refused before anything is built or loaded
    assert "--learn trains the healed student" in capsys.readouterr().err
