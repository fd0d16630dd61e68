"""KDRL through TRL (kdrl_mini.integrations.trl): refusals, parity with kdrl_mini.losses, parity with TRL's
GRPOTrainer at kd_beta = 0, and a real 2-process (gloo DDP) run. CPU only, the shipped tiny world."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from kdrl_mini.integrations.trl.config import LOSS_TYPE_TO_AGG, KDRLConfig  # noqa: E402
from kdrl_mini.integrations.trl.rewards import correctness_reward_func, load_prompt_dataset  # noqa: E402
from kdrl_mini.integrations.trl.trainer import KDRLTrainer  # noqa: E402
from kdrl_mini.losses import kdrl_loss  # noqa: E402
from kdrl_mini.batch import Batch  # noqa: E402
from kdrl_mini.scoring import completion_logits, logprobs_from_logits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STUDENT, TEACHER = str(ROOT / "data/models/student"), str(ROOT / "data/models/teacher")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread (the TRL runs are small; two cores are shared)."""


@pytest.fixture(scope="module")
def world():
    tok = AutoTokenizer.from_pretrained(STUDENT)
    data = load_prompt_dataset(str(ROOT / "data/train.jsonl")).select(range(32))
    teacher = AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32)
    return tok, data, teacher


def _student():
    return AutoModelForCausalLM.from_pretrained(STUDENT, dtype=torch.float32)


def _common(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to=[], max_steps=1,
                logging_steps=1, save_strategy="no", per_device_train_batch_size=8, num_generations=4,
                max_completion_length=48, learning_rate=1e-3, seed=0)
    return {**base, **kw}


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("bad, field", [
    ({"kd_beta": -0.1}, "kd_beta"),
    ({"kd_beta_schedule": "step"}, "kd_beta_schedule"),
    ({"kd_beta_schedule": "linear", "kd_anneal_steps": 10}, "kd_beta_end"),
    ({"kl_kind": "k4"}, "kl_kind"),
    ({"kl_kind": "topk"}, "kl_top_k"),
    ({"kl_mode": "reward", "kl_kind": "k2"}, "kl_kind"),
    ({"kl_mode": "reward-seq", "kl_kind": "k1"}, "kl_mode"),
    ({"kd_strategy": "correct"}, "kd_strategy"),
    ({"loss_type": "cispo"}, "loss_type"),
    ({"teacher_model_name_or_path": ["a", "b"], "teacher_weights": [1.0]}, "teacher_weights"),
    ({"teacher_weights": [1.0, 0.0]}, "teacher_weights"),
])
def test_config_refuses_unsupported(tmp_path, bad, field):
    with pytest.raises(ValueError, match=rf"KDRLConfig\.{field}="):
        KDRLConfig(**_common(tmp_path, **bad))


def test_config_accepts_paper_settings(tmp_path):
    c = KDRLConfig(**_common(tmp_path, kd_beta=5e-3, kd_beta_schedule="linear", kd_beta_end=1e-3,
                             kd_anneal_steps=80, kd_strategy="incorrect",
                             teacher_model_init_kwargs='{"dtype": "float32"}'))
    assert c.teacher_model_init_kwargs == {"dtype": "float32"} and c.beta == 0.0  # TRL's reference KL stays off


def test_trainer_refuses_missing_teacher(tmp_path, world):
    tok, data, _ = world
    with pytest.raises(ValueError, match=r"KDRLConfig\.teacher_model_name_or_path="):
        KDRLTrainer(model=_student(), reward_funcs=[correctness_reward_func], args=KDRLConfig(**_common(tmp_path)),
                    train_dataset=data, processing_class=tok)


# ------------------------------------------------------------------ parity with kdrl_mini.losses.kdrl_loss
@pytest.mark.parametrize("loss_type, kl_kind, temperature", [
    ("dapo", "k2", 1.0), ("bnpo", "k3", 1.0), ("grpo", "k2", 0.7), ("dr_grpo", "k1", 1.0), ("dapo", "exact", 1.0),
    ("grpo", "exact", 0.7),
])
def test_loss_and_grads_equal_kdrl_loss(tmp_path, world, loss_type, kl_kind, temperature):
    tok, data, teacher = world
    beta = 0.3
    args = KDRLConfig(**_common(tmp_path, loss_type=loss_type, kl_kind=kl_kind, kd_beta=beta, temperature=temperature,
                                kd_strategy="incorrect"))
    torch.manual_seed(0)
    tr = KDRLTrainer(model=_student(), reward_funcs=[correctness_reward_func], args=args, train_dataset=data,
                     processing_class=tok, teacher_model=teacher)
    tr.current_gradient_accumulation_steps = 1
    model = tr.model
    model.train()
    inputs = tr._generate_and_score_completions(next(iter(tr.get_train_dataloader())))
    # a fixed 0/1 KD mask (the tiny world's rewards are mostly 0, so "incorrect" would be all ones)
    inputs["kd_weights"] = (torch.arange(inputs["kd_weights"].shape[0]) % 3 != 0).float()
    params = [p for p in model.parameters() if p.requires_grad]

    model.zero_grad()
    loss_trl = tr.compute_loss(model, inputs)
    loss_trl.backward()
    g_trl = [p.grad.clone() for p in params]

    # the kit's own path: its scoring, its loss, on the same sampled tensors
    model.zero_grad()
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    batch = Batch(ids, torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
                  inputs["completion_mask"].float(), inputs["prompt_ids"].shape[1], [])
    logits = completion_logits(model, batch)
    logp = logprobs_from_logits(logits, batch.completion_ids, temperature)
    full = kl_kind in ("exact", "topk")
    loss_kit, _ = kdrl_loss(logp, logp.detach(), inputs["advantages"], batch.completion_mask.bool(),
                            teacher_logp=inputs["teacher_per_token_logps"], beta=beta, kl_kind=kl_kind, kd_weights=inputs["kd_weights"],
                            clip_eps=args.epsilon, loss_agg=LOSS_TYPE_TO_AGG[loss_type],
                            max_len=args.max_completion_length,
                            logits=logits.float() / temperature if full else None,
                            teacher_logits=completion_logits(teacher, batch).float() if full else None)
    loss_kit.backward()
    g_kit = [p.grad.clone() for p in params]
    # exact / top-k: the teacher's hidden states are kept, never a [B, T, V] tensor
    assert "teacher_logits" not in inputs
    assert (inputs["teacher_hidden"].shape[-1] == teacher.config.hidden_size) if full else "teacher_hidden" not in inputs

    torch.testing.assert_close(loss_trl.detach(), loss_kit.detach(), rtol=1e-5, atol=1e-6)
    for a, b in zip(g_trl, g_kit):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    kd = tr._metrics["train"]
    assert kd["kd/beta"] == [beta] and all(torch.isfinite(torch.tensor(kd["kd/kl"])))


def test_reward_mode_advantages_are_per_token(tmp_path, world):
    """A_it - beta * w_i * (log pi_T - log pi_old) is one constant A_i per response (the per-token reward form)."""
    tok, data, teacher = world
    beta = 0.1
    args = KDRLConfig(**_common(tmp_path, kl_mode="reward", kl_kind="k1", kd_beta=beta, kd_strategy="incorrect"))
    tr = KDRLTrainer(model=_student(), reward_funcs=[correctness_reward_func], args=args, train_dataset=data,
                     processing_class=tok, teacher_model=teacher)
    tr.model.train()
    inputs = tr._generate_and_score_completions(next(iter(tr.get_train_dataloader())))
    adv, m = inputs["advantages"], inputs["completion_mask"].bool()
    assert adv.shape == inputs["completion_ids"].shape and (adv[~m] == 0).all()
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    batch = Batch(ids, torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1), m.float(),
                  inputs["prompt_ids"].shape[1], [])
    with torch.no_grad():
        old = logprobs_from_logits(completion_logits(tr.model, batch), batch.completion_ids)
    base = adv - beta * inputs["kd_weights"].unsqueeze(-1) * (inputs["teacher_per_token_logps"] - old)
    per_row = base[:, :1].expand_as(base)
    torch.testing.assert_close(base[m], per_row[m], rtol=0, atol=1e-4)
    assert tr._metrics["train"]["kd/beta"] == [beta]


# ------------------------------------------------------------------ kd_beta = 0 is TRL's GRPO step
def _one_step(trainer_cls, cfg_cls, tmp_path, world, **kw):
    tok, data, teacher = world
    from_disk = kw.get("teacher_model_name_or_path")
    extra = {"teacher_model": teacher} if trainer_cls is KDRLTrainer and not from_disk else {}
    args = cfg_cls(**_common(tmp_path, **kw))
    tr = trainer_cls(model=_student(), reward_funcs=[correctness_reward_func], args=args, train_dataset=data,
                     processing_class=tok, **extra)
    tr.train()
    return {k: v.detach().clone() for k, v in tr.model.named_parameters()}, tr


def test_kd_beta_zero_step_equals_grpo_step(tmp_path, world):
    w_grpo, _ = _one_step(GRPOTrainer, GRPOConfig, tmp_path / "g", world)
    w_kd0, tr = _one_step(KDRLTrainer, KDRLConfig, tmp_path / "k", world, kd_beta=0.0,
                          teacher_model_name_or_path=TEACHER)  # loaded from disk: must not move the RNG
    w_kd, _ = _one_step(KDRLTrainer, KDRLConfig, tmp_path / "k2", world, kd_beta=0.5)
    w_init = dict(_student().named_parameters())
    for k in w_grpo:
        assert torch.equal(w_grpo[k], w_kd0[k]), k
    assert any(not torch.equal(w_grpo[k], w_init[k].detach()) for k in w_grpo)  # the step did move the weights
    assert any(not torch.equal(w_grpo[k], w_kd[k]) for k in w_grpo)  # and the KD term would have been seen
    assert "kd/kl" in tr.state.log_history[0] and tr.state.log_history[0]["kd/beta"] == 0.0


# ------------------------------------------------------------------ a real 2-process run (gloo DDP on CPU)
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("kl_kind", ["k2", "exact"])  # exact: the token-chunked head beside DDP's forward
def test_two_process_ddp_run(tmp_path, kl_kind):
    """accelerate launch, 2 processes, gloo DDP on CPU. In accelerate 1.15 `--cpu` always takes the single-process
    launcher (several CPU processes need mpirun); `--multi_gpu` on a machine without GPUs spawns the processes through
    torch.distributed.run and they pick gloo on CPU (the trainer sets use_cpu=True)."""
    accelerate = shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate CLI not found")
    if torch.cuda.is_available():
        pytest.skip("the CPU run is the point here; on a GPU machine run docs/scaling.md's commands")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "kdrl_mini.integrations.trl",
           "--max-steps", "2", "--output-dir", str(out), "--set", "group_size=4", "prompts_per_step=2", f"kl_kind={kl_kind}",
           "--rows", "64", "--dump-weights"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert [s["rank"] for s in ranks] == [0, 1] and all(s["world_size"] == 2 and s["steps"] == 2 for s in ranks)
    w0, w1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert w0.keys() == w1.keys() and len(w0) > 0
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    for s in ranks:
        assert len(s["kd_kl"]) == 2 and all(torch.isfinite(torch.tensor(s["kd_kl"])))


# ------------------------------------------------------------------ several teachers
def test_two_teachers_mix_per_token(tmp_path, world):
    """log p_mix = logsumexp(log w_i + log p_i), scored with the kit's functions; one teacher twice = that teacher."""
    from kdrl_mini.integrations.trl.config import mix_teacher_logps
    from kdrl_mini.scoring import score_in_micro_batches

    lp = torch.randn(3, 5).log_softmax(-1)
    torch.testing.assert_close(mix_teacher_logps([lp, lp], [0.2, 0.8]), lp)
    tok, data, teacher = world
    args = KDRLConfig(**_common(tmp_path, teacher_model_name_or_path=[TEACHER, STUDENT], teacher_weights=[3.0, 1.0]))
    tr = KDRLTrainer(model=_student(), reward_funcs=[correctness_reward_func], args=args, train_dataset=data,
                     processing_class=tok)
    assert len(tr.teacher_models) == 2
    tr.model.train()
    inputs = tr._generate_and_score_completions(next(iter(tr.get_train_dataloader())))
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    batch = Batch(ids, torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
                  inputs["completion_mask"].float(), inputs["prompt_ids"].shape[1], [])
    lp_t = score_in_micro_batches(tr.teacher_models[0], batch, None)[0]
    lp_s = score_in_micro_batches(tr.teacher_models[1], batch, None)[0]
    want = torch.logaddexp(lp_t + torch.tensor(0.75).log(), lp_s + torch.tensor(0.25).log())
    m = inputs["completion_mask"].bool()
    torch.testing.assert_close(inputs["teacher_per_token_logps"][m], want[m], rtol=1e-4, atol=1e-4)
    tr.current_gradient_accumulation_steps = 1
    assert torch.isfinite(tr.compute_loss(tr.model, inputs))


# ------------------------------------------------------------------ command line
def test_cli_engine_trl_refuses_what_trl_does_not_reproduce(tmp_path, capsys):
    from kdrl_mini.cli import main

    rc = main(["train", "--config", "kdrl", "--engine", "trl", "--max-steps", "1", "--output-dir", str(tmp_path / "r"),
               "--set", "ppo_epochs=2"])
    assert rc == 2 and "ppo_epochs" in capsys.readouterr().err


def test_cli_engine_trl_trains_a_4bit_lora_student_with_suffix_and_chat(tmp_path, capsys):
    """What the presets use, at toy size: a 4-bit NF4 student with LoRA adapters (through TRL's
    peft_config), a prompt suffix; the tiny tokenizer has no chat template, so chat_template is refused."""
    from kdrl_mini.cli import main

    args = ["train", "--config", "kdrl", "--engine", "trl", "--max-steps", "1", "--output-dir", str(tmp_path / "r"),
            "--set", "group_size=2", "prompts_per_step=2", "max_new_tokens=8", "lora_r=4", "lora_alpha=8",
            "prompt_suffix=\n", "micro_batch_size=1"]
    assert main(args) == 0 and "(trained through TRL)" in capsys.readouterr().out
    assert main(args[:-1] + ["chat_template=true", "--overwrite"]) == 2
    assert "no chat template" in capsys.readouterr().err


def test_cli_engine_trl_trains(tmp_path, capsys):
    from kdrl_mini.cli import main

    rc = main(["train", "--config", "kdrl", "--engine", "trl", "--max-steps", "1", "--output-dir", str(tmp_path / "r"),
               "--set", "student_quant=none", "lora_r=0", "group_size=4", "prompts_per_step=2", "max_new_tokens=16",
               "beta_schedule=linear", "beta_end=0.01", "kd_strategy=incorrect"])
    assert rc == 0 and "(trained through TRL)" in capsys.readouterr().out


# ------------------------------------------------------------------ GPU-only paths (skipped without CUDA)
@pytest.mark.gpu
def test_teacher_loads_in_8bit_on_cuda(tmp_path, world):
    tok, data, _ = world
    args = KDRLConfig(**{**_common(tmp_path), "use_cpu": False, "teacher_model_name_or_path": TEACHER})
    tr = KDRLTrainer(model=_student(), reward_funcs=[correctness_reward_func], args=args, train_dataset=data,
                     processing_class=tok)
    assert tr.teacher_model.is_quantized and tr.teacher_model.device.type == "cuda"
    tr.train()
    assert all(torch.isfinite(torch.tensor([h["kd/kl"] for h in tr.state.log_history if "kd/kl" in h])))


@pytest.mark.gpu
def test_vllm_colocate_generation(tmp_path, world):
    pytest.importorskip("vllm")
    tok, data, teacher = world
    args = KDRLConfig(**{**_common(tmp_path), "use_cpu": False, "use_vllm": True, "vllm_mode": "colocate",
                         "vllm_gpu_memory_utilization": 0.2})
    tr = KDRLTrainer(model=_student(), reward_funcs=[correctness_reward_func], args=args, train_dataset=data,
                     processing_class=tok, teacher_model=teacher)
    tr.train()
    assert all(torch.isfinite(torch.tensor([h["kd/kl"] for h in tr.state.log_history if "kd/kl" in h])))


def test_engine_trl_rewards_follow_the_answer_checker(tmp_path):
    """--engine trl scores with the config's checker: math-verify reads \\boxed{}, the strict one does not;
    an algorithm TRL does not run is refused."""
    from kdrl_mini.config import load_config
    from kdrl_mini.integrations.trl.launch import config_from_train_config, reward_funcs_for

    texts, gold = ["so \\boxed{18}", "#### 18"], ["18", "18"]
    strict = reward_funcs_for(load_config("kdrl"))
    math = reward_funcs_for(load_config("kdrl", answer_checker="math", format_weight=0.5))
    assert strict[0](texts, gold) == [0.0, 1.0] and len(strict) == 1
    assert math[0](texts, gold) == [1.0, 1.0] and len(math) == 2
    assert math[1](texts) == [1.0, 0.0]  # the format term pays for the math checker's \boxed{} format
    cfg = load_config("kdrl", algorithm="kd-fkl", output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="--engine trl runs grpo, kd-rkl, kdrl only"):
        config_from_train_config(cfg)


def test_vllm_colocate_only_with_cuda_and_vllm_and_keyword_only_teacher():
    import inspect

    from kdrl_mini.integrations.trl.launch import vllm_settings

    on = vllm_settings(cuda=True, available=True)
    assert on["use_vllm"] and on["vllm_mode"] == "colocate"
    assert vllm_settings(cuda=False, available=True) == vllm_settings(cuda=True, available=False) == {"use_vllm": False}
    params = inspect.signature(KDRLTrainer.__init__).parameters
    assert params["teacher_model"].kind is inspect.Parameter.KEYWORD_ONLY  # a 4th positional argument is refused


def test_the_package_names_its_public_api():
    """As ``from trl import GRPOConfig`` is TRL's API, the bridge's classes import from the package."""
    import kdrl_mini.integrations.trl as bridge
    from kdrl_mini.integrations.trl.config import KDRLConfig
    from kdrl_mini.integrations.trl.trainer import KDRLTrainer

    assert (bridge.KDRLConfig, bridge.KDRLTrainer) == (KDRLConfig, KDRLTrainer)
    assert bridge.__all__ == ["KDRLConfig", "KDRLTrainer"]
