"""One-GPU presets, the memory estimate and `kdrl-mini reproduce --preset` up to model loading.

CPU only, offline, fast: nothing here loads a model or reaches the hub (the model-config reader
is replaced by one that fails, so the presets' own published numbers are used)."""

import json
import math
from pathlib import Path

import pytest

from kdrl_mini.gpu import memory as me
from kdrl_mini.gpu import shapes
from kdrl_mini.runs import metrics
from kdrl_mini.gpu import preset_results, preset_study
from kdrl_mini.cli import main
from kdrl_mini.config import TrainConfig
from kdrl_mini.gpu.presets import estimate_preset, load_preset, preset_names

PRESETS = ("t4-16gb", "24gb", "80gb-paper")
TINY = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 8, "intermediate_size": 16,
        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 32, "tie_word_embeddings": True}


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """No test may reach the hub: reading a model's config.json always fails here."""
    import kdrl_mini.gpu.shapes as source  # where the estimate reads config.json

    def refuse(*args, **kwargs):
        raise OSError("offline in tests")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(source, "read_model_config", refuse)


def tiny_cfg(**changes) -> TrainConfig:
    base = dict(compute_dtype="bf16", max_new_tokens=4, group_size=2, prompts_per_step=2, micro_batch_size=2,
                eval_size=4, gradient_checkpointing=False, lora_r=2, student_quant="4bit", teacher_quant="8bit")
    return TrainConfig(**{**base, **changes})


# ---------------------------------------------------------------- presets
def test_shipped_presets_are_the_three_cards():
    assert set(preset_names()) == set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_is_a_valid_config_with_hub_models_and_gsm8k(name):
    cfg, info = load_preset(name)
    assert cfg.student_path == info.student.name and cfg.teacher_path == info.teacher.name
    assert "/" in cfg.student_path and "/" in cfg.teacher_path
    assert (cfg.dataset, cfg.dataset_config, cfg.prompt_column, cfg.answer_column) == (
        "openai/gsm8k", "main", "question", "answer")
    assert cfg.ood_split is None and cfg.answer_checker == "math" and cfg.chat_template
    assert "\\boxed{}" in cfg.prompt_suffix
    assert cfg.compute_dtype == ("fp16" if name == "t4-16gb" else "bf16")
    assert (cfg.student_quant, cfg.teacher_quant) == ("4bit", "8bit") and cfg.lora_r > 0
    assert cfg.micro_batch_size and cfg.max_new_tokens >= 256
    assert info.departures and info.description and info.measured is None
    assert info.machine.bf16 == (name != "t4-16gb")


@pytest.mark.parametrize("name", PRESETS)
def test_published_parameter_counts_match_the_architecture(name):
    _, info = load_preset(name)
    for model in (info.student, info.teacher):
        assert shapes.ModelShape.from_config(model.config).parameters == model.parameters


def test_paper_preset_names_the_papers_pair_and_a_shorter_budget():
    cfg, info = load_preset("80gb-paper")
    assert cfg.student_path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert cfg.teacher_path == "Skywork/Skywork-OR1-Math-7B"
    assert any("generation budget" in d for d in info.departures)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'a100'; known presets: 24gb, 80gb-paper, t4-16gb"):
        load_preset("a100")


def test_a_preset_with_an_unknown_config_field_is_refused(tmp_path, monkeypatch):
    import kdrl_mini.gpu.presets as presets

    (tmp_path / "bad.yaml").write_text("about: {}\nconfig:\n  algorithm: kdrl\n  gpu: t4\n")
    monkeypatch.setattr(presets, "PRESET_DIR", tmp_path)
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['gpu'\]; descriptions go in the `about:`"):
        presets.load_preset("bad")


def test_overrides_replace_preset_fields():
    cfg, _ = load_preset("t4-16gb", micro_batch_size=2, max_steps=3)
    assert (cfg.micro_batch_size, cfg.max_steps) == (2, 3)


# ---------------------------------------------------------------- the estimate
def test_closed_form_on_a_tiny_model():
    """Every term by hand for h=8, i=16, 2 heads of 4, 1 KV head, vocab 32, 2 layers, tied, no biases."""
    shape = shapes.ModelShape.from_config(TINY)
    assert shape.parameters == 2 * (576 + 16) + 256 + 8  # linears, norms; embedding; final norm
    est = me.estimate(tiny_cfg(), TINY, TINY, prompt_tokens=4)
    # 4-bit: 1152 linear weights * 0.5 B + 18 absmax * 4 B; 296 small weights * 2 B
    assert est.part("student weights") == 576 + 72 + 592
    # 8-bit: 1 B per weight + one fp32 scale per output row (64 rows per layer)
    assert est.part("teacher weights") == 1152 + 2 * 64 * 4 + 592
    assert est.part("trainable + AdamW") == 2 * 2 * 128 * 16  # layers * r * (in + out) * 16 B
    assert est.part("KV cache (student sampling)") == 4 * 8 * (2 * 2 * 4 * 2)  # B * L * layers * (K, V) * kv * 2 B
    # no checkpointing: 16 tokens * 176 saved values * 2 B * the measured factor per layer (2 layers),
    # final norm 16 * 4h * 2 B, mask 2 * 8 * 8 * 2 B
    layer = math.ceil(16 * 176 * 2 * me.SAVED_FACTOR)
    assert est.part("activations") == 2 * layer + 16 * 32 * 2 + 2 * 64 * 2
    assert est.part("student logits") == 5 * me.CHUNK_BYTES  # k2: the head's chunks, whatever T and V
    assert est.part("teacher logits") == 2 * me.CHUNK_BYTES
    exact = me.estimate(tiny_cfg(kl_kind="exact"), TINY, TINY, prompt_tokens=4)
    # exact KL: the teacher's chunk logits rebuilt beside the student's, from its kept hidden states
    assert exact.part("student logits") == me.HEAD_CHUNKS_TRAIN_KL * me.CHUNK_BYTES
    assert exact.part("teacher hidden kept") == 4 * 4 * 8 * 2  # B * T * hidden * 2 B, no [B, T, V]
    gc = me.estimate(tiny_cfg(gradient_checkpointing=True), TINY, TINY, prompt_tokens=4)
    assert gc.part("activations") == 2 * 16 * 8 * 2 + layer + 16 * 32 * 2 + 2 * 64 * 2
    full = me.estimate(tiny_cfg(student_quant="none", teacher_quant="none"), TINY, TINY, prompt_tokens=4)
    assert full.part("student weights") == 1152 * 2 + 592


@pytest.mark.parametrize("name", PRESETS)
def test_parts_add_up(name):
    cfg, info = load_preset(name)
    est, sources = estimate_preset(cfg, info)
    assert sources == {"student": "preset numbers", "teacher": "preset numbers"}
    assert est.always == sum(p.bytes for p in est.parts if p.group == "always")
    assert sum(est.phases.values()) + est.always == sum(p.bytes for p in est.parts)
    assert est.total == est.always + max(est.phases.values()) == est.always + est.phases[est.peak_phase]
    assert all(p.bytes >= 0 for p in est.parts) and math.isfinite(est.step_seconds) and est.step_seconds > 0


def test_estimate_scales_the_right_way():
    _, info = load_preset("24gb")
    s, t = info.student.config, info.teacher.config
    cfg = load_preset("24gb")[0]
    at = lambda **c: me.estimate(cfg.replace(**c), s, t, 256)  # noqa: E731
    assert at(micro_batch_size=8).part("activations") > at(micro_batch_size=4).part("activations")
    assert at(micro_batch_size=8).part("student logits") == at(micro_batch_size=4).part("student logits")
    # exact / top-k KL through the token-chunked head: chunks of logits, not [mb, T, V], whatever mb is
    assert (at(micro_batch_size=8, kl_kind="exact").part("student logits")
            == at(micro_batch_size=4, kl_kind="exact").part("student logits") > at().part("student logits"))
    assert (at(gradient_checkpointing=True).part("activations")
            < at(gradient_checkpointing=False).part("activations"))
    w = {q: at(student_quant=q, lora_r=16).part("student weights") for q in ("4bit", "8bit", "none")}
    assert w["4bit"] < w["8bit"] < w["none"]
    assert at(max_new_tokens=1024).part("KV cache (student sampling)") > at(max_new_tokens=512).part("KV cache (student sampling)")
    assert at(kl_kind="exact").part("teacher hidden kept") > 0 == at().part("teacher hidden kept")


def test_a_real_config_json_is_preferred(tmp_path, monkeypatch):
    """A local folder's config.json (read by model_source) or a hub id's cached copy beats the preset numbers."""
    import huggingface_hub

    import kdrl_mini.gpu.shapes as source

    _, info = load_preset("t4-16gb")
    (tmp_path / "config.json").write_text(json.dumps({**info.student.config, "hidden_size": 64}))
    monkeypatch.setattr(source, "read_model_config", lambda path, *a, **k: json.loads((tmp_path / "config.json")
                                                                                      .read_text()))
    config, where = shapes.resolve_model_config(str(tmp_path), info.student.config)
    assert (where, config["hidden_size"]) == ("config.json", 64)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, name, *a, **k: str(tmp_path / name) if repo == "Qwen/Qwen2.5-0.5B-Instruct" else None)
    assert shapes.resolve_model_config("Qwen/Qwen2.5-0.5B-Instruct", info.student.config)[1] == "config.json"
    assert shapes.resolve_model_config("Qwen/Other", info.student.config)[1] == "preset numbers"


def test_no_config_and_no_numbers_is_one_line():
    with pytest.raises(ValueError, match="no config.json for some/model"):
        shapes.resolve_model_config("some/model", None)


def test_format_labels_the_estimate():
    cfg, info = load_preset("t4-16gb")
    text = me.format_estimate(estimate_preset(cfg, info)[0])
    assert "estimate, not measured" in text and "total (always + peak phase)" in text


# ---------------------------------------------------------------- fitting
def test_presets_fit_their_own_card():
    for name in PRESETS:
        cfg, info = load_preset(name)
        est, _ = estimate_preset(cfg, info)
        free = int((info.machine.memory_gib - 0.5) * me.GiB)  # what mem_get_info reports after the context
        assert me.fits(est, free), name
        assert "fits" in preset_study.memory_check(name, est, cfg, free_bytes=free)


def test_a_preset_that_cannot_fit_is_refused_with_the_knob():
    cfg, info = load_preset("80gb-paper")
    est, _ = estimate_preset(cfg, info)
    with pytest.raises(ValueError, match=r"^preset 80gb-paper needs about .* GiB \(estimate, peak in the train phase\) "
                                         r"but the GPU has 30.0 GiB free; change --set gradient_checkpointing=true$"):
        preset_study.memory_check("80gb-paper", est, cfg, free_bytes=30 * me.GiB)


@pytest.mark.parametrize("changes, knob", [
    ({"gradient_checkpointing": False, "micro_batch_size": 32}, "gradient_checkpointing=true"),
    ({"micro_batch_size": 1, "max_new_tokens": 4096}, "eval_size=50"),  # 100 eval rows x 4,352 tokens of KV cache
    ({"teacher_quant": "none"}, "a smaller teacher"),
])
def test_the_knob_follows_the_largest_term(changes, knob):
    cfg, info = load_preset("24gb", **changes)
    est, _ = estimate_preset(cfg, info)
    assert knob in me.knob(est, cfg)
    assert not me.fits(est, 2 * me.GiB) and knob in me.refusal("24gb", est, cfg, 2 * me.GiB)


# ---------------------------------------------------------------- the study plan and its files
def test_plan_is_the_four_methods_at_equal_budget():
    cfg, info = load_preset("t4-16gb")
    variants, seeds = preset_study.plan(cfg, info)
    assert list(variants) == ["grpo", "kd-rkl", "kdrl", "kdrl-anneal"] and seeds["kdrl"] == [0]
    runs = {v: cfg.replace(**o) for v, o in variants.items()}
    budget = lambda c: (c.max_steps, c.prompts_per_step, c.group_size, c.max_new_tokens, c.micro_batch_size)  # noqa: E731
    assert len({budget(c) for c in runs.values()}) == 1
    anneal = runs["kdrl-anneal"]
    assert (anneal.beta, anneal.beta_end, anneal.beta_schedule) == (0.005, 0.001, "linear")
    assert anneal.anneal_steps == round(0.29 * cfg.max_steps) and runs["kdrl"].beta == 0.002
    with pytest.raises(ValueError, match="--only"):
        preset_study.plan(cfg, info, only=["kd-fkl"])


def _made_up_runs(root, seeds=(0,)):
    """Finished runs of every arm with made-up metrics (no model runs on CPU): arm i, seed k scores
    0.3 + 0.01 i + 0.001 k on test."""
    for i, variant in enumerate(preset_study.VARIANTS):
        for k in seeds:
            run = root / "runs" / variant / f"seed{k}"
            run.mkdir(parents=True)
            rows = [metrics.train_row({"step": s, "reward": 0.1 * i, "response_length": 100.0}) for s in (1, 2)]
            rows.append(metrics.eval_row(2, "test", {"accuracy": 0.3 + 0.01 * i + 0.001 * k, "mean_length": 90.0,
                                                     "truncated": 0.0, "n": 8}))
            (run / "metrics.jsonl").write_text("".join(metrics.json_line(r) for r in rows))
            summary = preset_results.summarize(run)
            (run / "final.json").write_text(json.dumps({"variant": variant, "seed": k, **summary}))


def test_results_are_written_from_run_files(tmp_path):
    """Tables, claims and figures from per-run files; one seed: no claim is judged."""
    _, info = load_preset("t4-16gb")
    _made_up_runs(tmp_path)
    records = preset_study.write_results(tmp_path, info)
    assert len(records) == 4
    table = (tmp_path / "table.md").read_text()
    assert "| kdrl-anneal | 1 | 0.330 ± n/a" in table and "untrained" not in table
    claims = (tmp_path / "claims.md").read_text()
    assert all(f"| {c.name} | {c.text} |" in claims for c in preset_results.CLAIMS) and claims.count("not run") == 4
    assert (tmp_path / "comparison.png").stat().st_size > 0 and (tmp_path / "forest.png").is_file()


def test_two_seeds_and_the_untrained_student_give_verdicts(tmp_path):
    """P3: KDRL (arm 2) beats GRPO (arm 0) by 0.02 on every seed, the smallest effect of interest."""
    _made_up_runs(tmp_path, seeds=(0, 1))
    (tmp_path / "untrained.json").write_text(json.dumps({"test_accuracy": 0.25, "test_length": 80.0}))
    preset_study.write_results(tmp_path)
    table = (tmp_path / "table.md").read_text().splitlines()
    assert table[2].startswith("| untrained student | - | 0.250 |") and table[3].startswith("| grpo | 2 |")
    p3 = next(line for line in (tmp_path / "claims.md").read_text().splitlines() if line.startswith("| P3 |"))
    assert "+0.020 [+0.020, +0.020]" in p3 and p3.endswith("| reproduced |")


def test_summary_averages_the_last_five_evaluations(tmp_path):
    rows = [{"kind": "train", "step": s, "exact_kl": 1.0, "reward": 0.5, "response_length": 30.0} for s in range(1, 11)]
    accs = [0.1, 0.2, 0.3, 0.5, 0.6, 0.6, 0.7, 0.7]
    rows += [{"kind": "eval", "step": i + 1, "split": "test", "eval_accuracy": a, "eval_length": 20.0,
              "eval_truncated": 0.0, "eval_n": 100} for i, a in enumerate(accs)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = preset_results.summarize(tmp_path)
    assert s["test_accuracy"] == pytest.approx((0.5 + 0.6 + 0.6 + 0.7 + 0.7) / 5)
    assert s["test_auc"] == pytest.approx(sum(accs) / len(accs))
    assert s["steps_to_threshold"] == 4
    assert s["train_exact_kl"] == 1.0


# ---------------------------------------------------------------- the command line
def test_dry_run_prints_plan_and_estimate_and_loads_nothing(tmp_path, capsys):
    import torch

    rc = main(["reproduce", "--preset", "t4-16gb", "--dry-run", "--output-dir", str(tmp_path / "out"),
               "--steps", "10", "--set", "micro_batch_size=2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "budget per run: 10 steps x 8 prompts x 8 responses, 512 new tokens, micro-batch 2" in out
    assert "variants: grpo, kd-rkl, kdrl, kdrl-anneal" in out and "within 3 steps" in out
    assert "estimated GPU memory" in out and "estimated wall time: about" in out
    assert "dry run: no model loaded" in out
    if not torch.cuda.is_available():
        assert "GPU memory check is skipped" in out
    assert not (tmp_path / "out").exists()


def test_list_and_presets_command(capsys):
    assert main(["reproduce", "--preset", "list"]) == 0
    listed = capsys.readouterr().out
    assert main(["presets"]) == 0
    assert capsys.readouterr().out == listed
    assert all(f"| {name} |" in listed for name in PRESETS) and "not measurements" in listed


def test_cli_errors_are_one_line(capsys):
    assert main(["reproduce", "--preset", "a100", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "kdrl-mini reproduce: error: unknown preset 'a100'; known presets: 24gb, 80gb-paper, t4-16gb"
    assert main(["reproduce", "--preset", "t4-16gb", "--full"]) == 2
    assert "two different studies" in capsys.readouterr().err


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_states_its_engine_and_why(name):
    cfg, info = load_preset(name)
    assert info.engine in ("kit", "trl") and len(info.engine_why) > 80
    est, sources = estimate_preset(cfg, info)
    from kdrl_mini.gpu.preset_study import describe, plan

    variants, seeds = plan(cfg, info)
    assert f"engine: {info.engine} (" in describe(cfg, info, est, sources, variants, seeds, Path("out"))


def test_train_takes_a_presets_config(monkeypatch):
    """`kdrl-mini train --preset 80gb-paper --engine trl` trains the preset's own TrainConfig on its engine
    (TRL + vLLM); overrides apply on top."""
    import kdrl_mini.commands as commands

    seen = {}
    monkeypatch.setattr(commands, "train", lambda config, overrides, resume, overwrite, engine:
                        seen.update(config=config, overrides=overrides, engine=engine) or 0)
    assert main(["train", "--preset", "80gb-paper", "--engine", "trl", "--set", "max_steps=2"]) == 0
    expected = load_preset("80gb-paper")[0]
    assert seen["config"] == expected and seen["engine"] == "trl" and seen["overrides"]["max_steps"] == 2
    info = load_preset("80gb-paper")[1]
    assert info.engine == "trl" and "--engine kit" in info.engine_why


def test_t4_has_an_fp16_safe_setup_that_the_refusal_names_and_the_estimate_prices(monkeypatch):
    """On a card without bf16 the refusal offers fp32 compute. The 8-bit teacher stays: LLM.int8 casts only
    the inputs it quantises (|x| <= 6) to fp16 and keeps outlier columns and its output in the input dtype.
    That setup is accepted, costs more memory and runs at the card's fp32 rate."""
    from kdrl_mini.gpu.presets import fp16_refusal

    monkeypatch.delenv("KDRL_ALLOW_FP16", raising=False)
    cfg, info = load_preset("t4-16gb")
    line = fp16_refusal("t4-16gb", cfg, card_bf16=False)
    assert "NaN" in line and "--set compute_dtype=fp32 (" in line and "\n" not in line
    safe, _ = load_preset("t4-16gb", compute_dtype="fp32")
    assert fp16_refusal("t4-16gb", safe, card_bf16=False) is None
    fp16_est, safe_est = estimate_preset(cfg, info)[0], estimate_preset(safe, info)[0]
    assert me.needed_bytes(fp16_est) < me.needed_bytes(safe_est) < 0.95 * info.machine.memory_gib * 2**30
    assert safe_est.step_seconds > 3 * fp16_est.step_seconds  # 8.1 fp32 TFLOPS against 65 fp16


def test_the_trl_engines_estimate_counts_vllm(monkeypatch):
    """On TRL with vLLM installed the rollout is vLLM's share of the card (asleep otherwise) in place of HF
    generate's KV cache; the head is chunked on both engines (TRL's fused LM head, or the kit's for exact /
    top-k KL); vLLM's CUDA-graph decoding makes the step shorter. Without vLLM the TRL engine generates with
    HF generate, and the estimate prices that (it priced vLLM whenever the engine was TRL)."""
    import dataclasses

    import kdrl_mini.gpu.presets as presets

    cfg, info = load_preset("80gb-paper")
    monkeypatch.setattr(presets, "vllm_installed", lambda: True)
    trl, _ = estimate_preset(cfg, info)
    kit, _ = estimate_preset(cfg, dataclasses.replace(info, engine="kit"))
    assert trl.part("vLLM (colocated)") == int(0.3 * info.machine.memory_gib * 2**30) and kit.part("vLLM (colocated)") == 0
    assert trl.part("KV cache (student sampling)") == 0 < kit.part("KV cache (student sampling)")
    s = trl.detail
    assert trl.part("student logits") == kit.part("student logits") and trl.phases["train"] == kit.phases["train"]
    assert trl.step_seconds < kit.step_seconds and trl.total < 0.95 * info.machine.memory_gib * 2**30
    assert s["micro_batch"] == cfg.micro_batch_size
    monkeypatch.setattr(presets, "vllm_installed", lambda: False)
    assert presets.generation_path(info) == "hf"
    no_vllm, _ = estimate_preset(cfg, info)
    assert no_vllm.part("vLLM (colocated)") == 0 and no_vllm.step_seconds == kit.step_seconds


def test_kd_fkl_samples_from_the_teacher_and_the_estimate_counts_it():
    """KD-FKL's rollouts are the teacher's: its KV cache and prefill make the generate phase (24gb: about
    4.9 GiB, against the student's 2.4); kd-then-grpo takes the larger of its two stages."""
    cfg, info = load_preset("24gb")
    kdrl, _ = estimate_preset(cfg, info)
    fkl, _ = estimate_preset(cfg.replace(algorithm="kd-fkl"), info)
    two_stage, _ = estimate_preset(cfg.replace(algorithm="kd-then-grpo"), info)
    assert round(kdrl.phases["generate"] / me.GiB, 1) == 2.4 and round(fkl.phases["generate"] / me.GiB, 1) == 4.9
    assert fkl.part("KV cache (teacher sampling)") > 0 == fkl.part("KV cache (student sampling)")
    assert two_stage.phases["generate"] == fkl.phases["generate"] and fkl.total > kdrl.total
    small = estimate_preset(cfg.replace(algorithm="kd-fkl", kd_fkl_group_size=2, kd_fkl_prompts_per_step=4), info)[0]
    assert small.phases["generate"] < fkl.phases["generate"]  # KD-FKL's own sampling sizes


def test_the_activation_factor_is_a_range_and_the_low_end_is_stated():
    """The activation factor was measured on CPU (1.54, peft's fp32 LoRA inputs); on CUDA it is expected
    between 1.0 and 1.54. The estimate uses the upper end; est.low the lower: 80gb-paper, whose peak is its
    activations (no checkpointing), is about 38 GiB at the low end against 52.9."""
    cfg, info = load_preset("80gb-paper")
    est, _ = estimate_preset(cfg, info)
    assert me.SAVED_FACTOR_RANGE == (1.0, me.SAVED_FACTOR)
    assert round(est.total / me.GiB, 1) == 52.9 and 36 < est.low / me.GiB < 40
    assert est.part("activations") / me.SAVED_FACTOR == pytest.approx(
        next(p.low for p in est.parts if p.name == "activations"), rel=0.02)
    t4 = estimate_preset(*load_preset("t4-16gb"))[0]
    assert t4.peak_phase == "eval" and t4.low == t4.total  # its peak is greedy decoding: no range
