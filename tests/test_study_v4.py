"""Study v4's pieces that do not need its runs: the token kinds of the KL diagnosis, the diagnosis itself
on the shipped world, the gates and the sequential arm's switch summary."""

import pytest

from kdrl_mini.study import v4, v4_claims
from kdrl_mini.study.v4_diagnosis import KINDS, kl_by_token_kind, token_kinds


def test_token_kinds_of_a_chain():
    text = "32-7=25\ncheck 25+7=32\n#### 25"
    kinds = token_kinds(list(text))
    by_char = "".join({"result": "R", "operand": "O", "answer": "A", "structure": "."}[k] for k in kinds)
    assert by_char == "OO.O.RR......." + "OO.O.RR." + "....." + "AA"


def test_kl_by_token_kind_on_the_shipped_world():
    cfg = v4.base_config()
    from kdrl_mini.runs.loading import load_world

    w = load_world(cfg)
    out = kl_by_token_kind(w.student, w.teacher, w.tokenizer, w.splits["test"][:4], 32, 0.7, samples=2)
    seen = out.pop("samples")
    assert set(out) == set(KINDS) and 0 <= seen["correct"] <= 1 and seen["truncated"] > 0  # 32 tokens cut many
    assert sum(k["token_share"] for k in out.values()) == pytest.approx(1.0)
    assert sum(k["kl_share"] for k in out.values()) == pytest.approx(1.0)
    assert all(0 <= k["teacher_agrees"] <= 1 and k["mean_kl"] >= 0 for k in out.values())


def test_gates_read_the_records_and_baselines():
    untrained = {f"{s}@64_accuracy": a for s, a in (("mix", 0.4), ("test", 0.5), ("blind", 0.2))}
    teacher = {"mix@64_accuracy": 0.7, "test@64_accuracy": 1.0, "blind@64_accuracy": 0.0}
    records = [{"variant": "grpo", "seed": 1, "blind@64_accuracy": 0.35},
               {"variant": "kd-rkl", "seed": 1, "test@64_accuracy": 0.6},
               {"variant": "kd-then-grpo", "seed": 1, "mix@64_accuracy": 0.5, "mix@64_at_switch": 0.55}]
    g = {row["gate"].split(":")[0]: row for row in v4_claims.gates(records, untrained, teacher)}
    assert g["RL acts beyond stopping"]["holds"] and g["RL acts beyond stopping"]["value"] == pytest.approx(0.15)
    assert not g["KD transfers"]["holds"] and g["KD transfers"]["value"] == pytest.approx(0.2)
    assert not g["the sequential baseline's GRPO stage keeps its KD stage's mix@64 (final - at the switch >= 0)"]["holds"]


def test_the_study_plan_is_the_pilots_choice():
    """Every arm trains at 48 tokens, is decided at 64 with the probe KL on, KDRL at the pilot's beta with the
    exact KL; each claim's two arms share the study seeds; the anneal has the paper's shape."""
    plan, seeds = v4.study_plan()
    for name, overrides in plan.items():
        cfg = v4.base_config(**overrides)
        assert cfg.max_new_tokens == 48 and cfg.eval_split_names()[:3] == ["mix@64", "test@64", "blind@64"]
        assert cfg.probe_size == 200 and cfg.final_eval_size == 1000
    assert v4.ARMS["kdrl"]["beta"] == v4.KDRL_BETA == 0.01 and v4.ARMS["kdrl"]["kl_kind"] == "exact"
    anneal = v4.base_config(**v4.ARMS["kdrl-anneal"])
    assert (anneal.beta, anneal.beta_end, anneal.anneal_steps) == (0.025, 0.005, 45)
    for claim in v4_claims.CLAIMS:
        assert seeds[claim.better] == seeds[claim.worse] == v4.STUDY_SEEDS, claim.name
    assert sum(len(s) for s in seeds.values()) == 82


def test_no_two_claims_share_their_per_seed_differences():
    """Issue 22: study v2's C3 and C4 were one test counted twice (both KD arms at 0 on blind)."""
    keys = [(c.better, c.worse, c.metric) for c in v4_claims.CLAIMS]
    assert len(set(keys)) == len(keys)
