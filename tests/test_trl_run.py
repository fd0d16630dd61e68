"""The TRL engine as the kit's run folder (kdrl_mini.integrations.trl.kit_run): the metric schema, evaluations,
resume bit for bit, micro-batches, KD-RKL on TRL, fp32 adapters, the kit's lr schedule, the preset study and
the smoke on TRL. CPU, the shipped tiny world."""

import json
import math

import pytest
import torch

pytest.importorskip("trl")

from transformers import TrainerCallback  # noqa: E402

from kdrl_mini.config import load_config  # noqa: E402
from kdrl_mini.integrations.trl import kit_run  # noqa: E402
from kdrl_mini.integrations.trl.config import KDRLConfig  # noqa: E402
from kdrl_mini.integrations.trl.launch import config_from_train_config, load_student_base, peft_config_for  # noqa: E402
from kdrl_mini.integrations.trl.rewards import correctness_reward_func, load_prompt_dataset  # noqa: E402
from kdrl_mini.integrations.trl.trainer import KDRLTrainer  # noqa: E402
from kdrl_mini.losses import reverse_kl_loss, token_weights  # noqa: E402
from kdrl_mini.runs import metrics  # noqa: E402
from kdrl_mini.runs.folder import latest_checkpoint  # noqa: E402

TINY = dict(group_size=4, prompts_per_step=2, max_new_tokens=16, eval_size=4, threads=1)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread (the TRL runs are small; two cores are shared)."""


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_trls_log_becomes_the_kits_training_row():
    logs = {"reward": 0.25, "rewards/correctness_reward_func/mean": 0.25, "completions/mean_length": 12.0,
            "completions/clipped_ratio": 0.5, "loss": 0.3, "kd/loss": 2.0, "kd/kl": 2.0, "entropy": 1.1,
            "clip_ratio/region_mean": 0.0, "grad_norm": 0.7, "step_time": 1.5, "kd/beta": 0.1, "kd/frac": 1.0,
            "learning_rate": 1e-4}
    kdrl = kit_run.train_row(logs, 3, load_config("kdrl"))
    assert set(kdrl) == {"kind", *metrics.TRAIN_KEYS} and kdrl["step"] == 3
    assert (kdrl["accuracy"], kdrl["response_length"], kdrl["truncated_frac"], kdrl["kl"], kdrl["beta"]) == (
        0.25, 12.0, 0.5, 2.0, 0.1)
    grpo = kit_run.train_row(logs, 3, load_config("kdrl", algorithm="grpo"))
    assert math.isnan(grpo["beta"]) and math.isnan(grpo["kd_frac"]) and math.isnan(grpo["policy_loss"])
    math_cfg = load_config("kdrl", answer_checker="math")
    assert math.isnan(kit_run.train_row(logs, 3, math_cfg)["accuracy"])  # another reward function's key


class _Crash(TrainerCallback):
    def on_log(self, args, state, control, **kwargs):  # after the kit's row of step 3 is written
        if state.global_step == 3:
            raise KeyboardInterrupt


def test_a_trl_run_writes_the_kits_run_folder_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    """4 steps, evaluations every 2 (the last on final_eval_size rows), checkpoints every 2. Killed at step 3
    and resumed from checkpoint-2, the run writes the same rows as one that was never interrupted."""
    cfg = load_config("kdrl", max_steps=4, eval_every=2, checkpoint_every=2, final_eval_size=6, **TINY)
    whole = tmp_path / "whole"
    kit_run.train_run(cfg.replace(output_dir=str(whole)), progress=False)
    rows = _rows(whole)
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert {(r["step"], r["split"]) for r in evals} == {(s, x) for s in (2, 4) for x in ("test", "blind", "ood",
                                                                                          "ood_control")}
    assert {r["eval_n"] for r in evals if r["step"] == 4} == {6} and {r["eval_n"] for r in evals if r["step"] == 2} == {4}
    assert all(math.isfinite(r["kl"]) and r["beta"] == cfg.beta for r in rows if r["kind"] == "train")
    head = (whole / "config.yaml").read_text().splitlines()[:2]
    assert head[0].startswith("# code: ") and head[1] == "# engine: trl"
    assert (whole / "adapter" / "adapter_config.json").is_file() and not (whole / "README.md").exists()
    assert latest_checkpoint(whole).name == "checkpoint-4" and len(list(whole.glob("checkpoint-*"))) == 1

    crashed = tmp_path / "crashed"
    real_init = kit_run.KDRLTrainer.__init__

    def with_crash(self, *args, **kwargs):
        real_init(self, *args, **{**kwargs, "callbacks": kwargs["callbacks"] + [_Crash()]})

    monkeypatch.setattr(kit_run.KDRLTrainer, "__init__", with_crash)
    with pytest.raises(KeyboardInterrupt):
        kit_run.train_run(cfg.replace(output_dir=str(crashed)), progress=False)
    monkeypatch.setattr(kit_run.KDRLTrainer, "__init__", real_init)
    assert latest_checkpoint(crashed).name == "checkpoint-2" and _rows(crashed)[-1]["step"] == 3
    with pytest.raises(ValueError, match="already holds a run"):
        kit_run.train_run(cfg.replace(output_dir=str(crashed)), progress=False)
    with pytest.raises(ValueError, match=r"other settings for \['beta'\]"):
        kit_run.train_run(cfg.replace(output_dir=str(crashed), beta=0.5), resume=True, progress=False)
    kit_run.train_run(cfg.replace(output_dir=str(crashed)), resume=True, progress=False)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "step_time"} for r in rs]  # noqa: E731
    assert json.dumps(strip(_rows(crashed))) == json.dumps(strip(rows))


def test_micro_batches_accumulate_to_the_whole_batch_step(tmp_path):
    """micro_batch_size=2 trains the 8 rollouts of one generation in 4 accumulated pieces: the same update
    as one forward over all 8 (the KD term's normaliser follows TRL's through the accumulation)."""
    cfg = load_config("kdrl", max_steps=1, eval_every=0, checkpoint_every=0, eval_splits="test", **TINY)
    weights, logged = {}, {}
    for mb in (None, 2):
        run = tmp_path / f"mb{mb}"
        row = kit_run.train_run(cfg.replace(output_dir=str(run), micro_batch_size=mb), progress=False)[0]
        logged[mb] = [row[k] for k in ("loss", "kd_loss", "kl", "entropy", "grad_norm")]
        from safetensors.torch import load_file

        weights[mb] = load_file(run / "adapter" / "adapter_model.safetensors")
    assert config_from_train_config(cfg.replace(micro_batch_size=2)).gradient_accumulation_steps == 4
    for k in weights[None]:
        torch.testing.assert_close(weights[2][k], weights[None][k], rtol=1e-4, atol=1e-6)
    assert logged[2] == pytest.approx(logged[None], rel=1e-4)  # the step's numbers, not a micro-batch's
    with pytest.raises(ValueError, match="micro_batch_size=3"):
        config_from_train_config(cfg.replace(micro_batch_size=3))


def _trainer(tmp_path, cfg, **kd):
    args = config_from_train_config(cfg.replace(output_dir=str(tmp_path)), save_strategy="no", **kd)
    model, path = load_student_base(cfg, torch.device("cpu"))
    from kdrl_mini import models

    tok = models.load_tokenizer(path)
    data = load_prompt_dataset("data/train.jsonl").select(range(16))
    return KDRLTrainer(model=model, reward_funcs=[correctness_reward_func], args=args, train_dataset=data,
                       processing_class=tok, peft_config=peft_config_for(cfg), lr_at=cfg.lr_at,
                       teacher_model="data/models/teacher")


def test_kd_rkl_on_trl_is_the_kits_reverse_kl_loss(tmp_path):
    """algorithm kd-rkl on TRL: pg_weight 0 and kd_beta 1, so the loss and its gradient are
    reverse_kl_loss at the kit's token-mean on the same samples, with no policy-gradient part."""
    cfg = load_config("kdrl", algorithm="kd-rkl", **TINY)
    tr = _trainer(tmp_path, cfg)
    assert (tr.args.pg_weight, tr.args.kd_beta, tr.args.loss_type) == (0.0, 1.0, "dapo")
    tr.current_gradient_accumulation_steps = 1
    tr.model.train()
    inputs = tr._generate_and_score_completions(next(iter(tr.get_train_dataloader())))
    inputs["advantages"] = torch.randn_like(inputs["advantages"])  # a policy-gradient part would now show
    params = [p for p in tr.model.parameters() if p.requires_grad]
    tr.model.zero_grad()
    loss = tr.compute_loss(tr.model, inputs)
    loss.backward()
    g_trl = [p.grad.clone() for p in params]

    tr.model.zero_grad()
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    logp = tr._get_per_token_logps_and_entropies(tr.model, ids, attn, inputs["completion_ids"].shape[1])[0]
    mask = inputs["completion_mask"].bool()
    kit, _ = reverse_kl_loss(logp, inputs["teacher_per_token_logps"], mask, cfg.kl_kind,
                             weights=token_weights(mask.float(), "token-mean"))
    kit.backward()
    torch.testing.assert_close(loss.detach(), kit.detach(), rtol=1e-5, atol=1e-6)
    for a, b in zip(g_trl, [p.grad for p in params]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_quantised_students_adapters_stay_fp32_where_bf16_would_freeze_lora_a(tmp_path):
    """TRL casts QLoRA adapters to bf16; an Adam step at lr 2e-5 is then below half a bf16 ulp of LoRA A's
    entries and A never moves. KDRLTrainer keeps them fp32 (adapter_fp32), as the kit does. (A's gradient is
    zero on the first step, while B is still zero: two steps.)"""
    cfg = load_config("kdrl", lr=2e-5, max_steps=2, **TINY)
    moved = {}
    for fp32 in (False, True):
        tr = _trainer(tmp_path / str(fp32), cfg, adapter_fp32=fp32)
        lora_a = {n: p.detach().clone() for n, p in tr.model.named_parameters() if "lora_A" in n}
        assert {p.dtype for p in lora_a.values()} == {torch.float32 if fp32 else torch.bfloat16}
        tr.train()
        after = dict(tr.model.named_parameters())
        changed = sum(int((after[n].detach() != v).sum()) for n, v in lora_a.items())
        moved[fp32] = changed / sum(v.numel() for v in lora_a.values())
    print(f"share of LoRA A entries moved by two steps at lr 2e-5: bf16 {moved[False]:.3f}, fp32 {moved[True]:.3f}")
    assert moved[False] < 0.1 and moved[True] > 0.9  # in bf16 only entries near 0 (|a| < ~5e-3) can move


def test_the_kits_learning_rate_schedule_drives_trl(tmp_path):
    cfg = load_config("kdrl", lr=1e-3, lr_schedule="cosine", lr_warmup_steps=2, lr_floor=0.1, max_steps=6, **TINY)
    tr = _trainer(tmp_path, cfg)
    tr.create_optimizer_and_scheduler(num_training_steps=6)
    seen = []
    for _ in range(6):
        seen.append(tr.optimizer.param_groups[0]["lr"])
        tr.optimizer.step()
        tr.lr_scheduler.step()
    assert seen == pytest.approx([cfg.lr_at(k) for k in range(6)], rel=1e-9)
    assert seen[0] < seen[1] < seen[2] == pytest.approx(1e-3) and seen[-1] == pytest.approx(1e-4)


def test_grpo_without_the_kl_metric_never_runs_the_teacher(tmp_path, monkeypatch):
    cfg = load_config("kdrl", algorithm="grpo", max_steps=1, **TINY)
    assert config_from_train_config(cfg).teacher_unused  # log_exact_kl is off: the kit's GRPO skips it too
    assert not config_from_train_config(cfg.replace(log_exact_kl=True)).teacher_unused
    monkeypatch.setattr(KDRLTrainer, "score_teacher", lambda *a, **k: pytest.fail("the teacher was scored"))
    rows = kit_run.train_run(cfg.replace(output_dir=str(tmp_path / "g"), eval_splits="test"), progress=False)
    assert math.isnan(rows[0]["kl"]) and math.isfinite(rows[0]["loss"])


@pytest.mark.parametrize("bad", [{"pg_weight": -1.0}, {"pg_weight": 0.0, "kd_beta": 0.0},
                                 {"pg_weight": 0.0, "kl_mode": "reward", "kl_kind": "k1"}])
def test_distillation_alone_needs_a_kd_term_in_the_loss(tmp_path, bad):
    with pytest.raises(ValueError, match="KDRLConfig.pg_weight"):
        KDRLConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **bad)


def _toy(data_dir):
    return {"student_path": str(data_dir / "models/student"), "teacher_path": str(data_dir / "models/teacher"),
            "dataset": None, "data_dir": str(data_dir), "chat_template": False, "prompt_suffix": "",
            "answer_checker": "strict", "compute_dtype": "auto", "max_new_tokens": 8, "group_size": 2,
            "prompts_per_step": 2, "micro_batch_size": 2, "lora_r": 4, "device": "cpu", "eval_size": 4,
            "eval_every": 2, "checkpoint_every": 1, "threads": 1}


def test_the_paper_preset_runs_its_study_on_trl_at_toy_size(data_dir, tmp_path, capsys):
    """reproduce --preset 80gb-paper (engine trl) with the tiny pair: every arm trains through KDRLTrainer into
    the kit's run files, the tables are written, and the study keeps metrics, not checkpoints."""
    from kdrl_mini.gpu import preset_study

    out = tmp_path / "study"
    records = preset_study.reproduce("80gb-paper", {**_toy(data_dir), "max_steps": 2}, str(out))
    assert sorted(r["variant"] for r in records) == ["grpo", "kd-rkl", "kdrl", "kdrl-anneal"]
    for variant in ("grpo", "kd-rkl", "kdrl", "kdrl-anneal"):
        run = out / "runs" / variant / "seed0"
        assert "# engine: trl" in (run / "config.yaml").read_text()
        assert latest_checkpoint(run) is None and (run / "final.json").is_file()
    assert "engine: trl" in capsys.readouterr().out and "P1" in (out / "claims.md").read_text()


def test_the_smoke_of_a_trl_preset_measures_each_phase(data_dir, tmp_path):
    """The smoke on TRL: two steps and one forced to the worst-case length per algorithm (every completion
    max_new_tokens long: TRL's clipped ratio is 1), each phase timed and measured, HF generate on a CPU."""
    from kdrl_mini.gpu.smoke import smoke

    report = smoke("80gb-paper", _toy(data_dir), str(tmp_path / "smoke"), steps=2, say=lambda *_: None)
    assert report["engine"] == "trl" and set(report["runs"]) == {"grpo", "kd-rkl", "kdrl"}
    assert report["generation"] == "HF generate (no CUDA device)" and report["verdict"] == "PASS"
    for algorithm, run in report["runs"].items():
        assert len(run["steps"]) == 3 and all(math.isfinite(s["loss"]) and s["seconds"] > 0 for s in run["steps"])
        phases = set(run["steps"][-1]["peaks"])
        assert phases == ({"generate", "train"} if algorithm == "grpo" else {"generate", "teacher", "train"})
        rows = _rows(tmp_path / "smoke" / algorithm)
        assert [r["truncated_frac"] for r in rows if r["kind"] == "train"][-1] == 1.0  # the forced worst case


@pytest.mark.parametrize("bad, why", [({"teacher_model": ["data/models/teacher", "data/models/student"]}, "mixture"),
                                      ({"entropy_coef": 0.01}, "entropy bonus")])
def test_exact_kl_on_trl_refuses_what_its_chunked_head_cannot_do(tmp_path, bad, why):
    """The token-chunked exact KL keeps one teacher's hidden states and returns the entropy detached: a
    mixture of teachers (a [B, T, V] distribution) and a differentiable entropy bonus are refused by name."""
    cfg = load_config("kdrl", kl_kind="exact", **TINY)
    args = config_from_train_config(cfg.replace(output_dir=str(tmp_path)), save_strategy="no",
                                    **{k: v for k, v in bad.items() if k != "teacher_model"})
    model, path = load_student_base(cfg, torch.device("cpu"))
    from kdrl_mini import models

    with pytest.raises(ValueError, match=f"KDRLConfig.kl_kind='exact'.*{why}"):
        KDRLTrainer(model=model, reward_funcs=[correctness_reward_func], args=args,
                    train_dataset=load_prompt_dataset("data/train.jsonl").select(range(8)),
                    processing_class=models.load_tokenizer(path), peft_config=peft_config_for(cfg),
                    teacher_model=bad.get("teacher_model", "data/models/teacher"))
