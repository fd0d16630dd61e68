"""The TRL engine's one-GPU failures predicted by reading TRL 1.16 (issue 31), checked on CPU: what vLLM is
given for a 4-bit LoRA student (vLLM faked), the NF4 teacher of teacher_quant=4bit, and a padding-row id
sampled from a Qwen2.5-layout student (cut, and scored on the tokenizer's rows)."""

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")

import trl.generation.vllm_generation as vllm_generation  # noqa: E402
from safetensors import safe_open  # noqa: E402

from helpers_qwen_layout import STUDENT_ROWS, TOKENS, write_pair  # noqa: E402
from kdrl_mini import models  # noqa: E402
from kdrl_mini.config import load_config  # noqa: E402
from kdrl_mini.integrations.trl.config import KDRLConfig  # noqa: E402
from kdrl_mini.integrations.trl.launch import config_from_train_config, load_student_base, peft_config_for  # noqa: E402
from kdrl_mini.integrations.trl.rewards import correctness_reward_func, load_prompt_dataset  # noqa: E402
from kdrl_mini.integrations.trl.teacher import teacher_init_kwargs  # noqa: E402
from kdrl_mini.integrations.trl.trainer import KDRLTrainer  # noqa: E402
from kdrl_mini.sampling_copy import _dense_weight  # noqa: E402

TINY = dict(group_size=4, prompts_per_step=2, max_new_tokens=8, lora_r=4, threads=1)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread."""


class FakeLLM:
    """Stands in for ``vllm.LLM``: records the keyword arguments it is built with and the weights a sync loads."""

    def __init__(self, **kwargs):
        self.kwargs, self.loaded = kwargs, {}
        runner = SimpleNamespace(model=SimpleNamespace(load_weights=lambda pairs: self.loaded.update(
            {name: t.detach().clone() for name, t in pairs})))
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner)))

    def sleep(self, level=1):
        pass

    def wake_up(self, tags=None):
        pass

    def reset_prefix_cache(self):
        pass


def _kd_trainer(cfg, tmp_path, teacher="data/models/teacher", rows=8, **kd):
    args = config_from_train_config(cfg.replace(output_dir=str(tmp_path)), save_strategy="no", **kd)
    model, path = load_student_base(cfg, torch.device("cpu"))
    tok = models.load_tokenizer(path)
    data = load_prompt_dataset("data/train.jsonl").select(range(rows))
    return KDRLTrainer(model=model, reward_funcs=[correctness_reward_func], args=args, train_dataset=data,
                       processing_class=tok, peft_config=peft_config_for(cfg), teacher_model=teacher)


def test_vllm_gets_the_dense_weights_of_a_4bit_lora_student(tmp_path, monkeypatch):
    """TRL 1.16 alone starts vLLM with quantization='bitsandbytes' and sends the packed uint8 NF4 weights of the
    merged PeftModel (TRL #4973: [2048, 1] for a 64 x 64 q_proj), re-rounding the base at each merge. The kit's
    sync: vLLM loads the 16-bit checkpoint, and each sync sends every checkpoint weight, dense, under its
    checkpoint name, equal to dequant(W) + the LoRA update; the trained 4-bit base is left bit for bit."""
    monkeypatch.setattr(vllm_generation, "LLM", FakeLLM, raising=False)
    monkeypatch.setattr(vllm_generation, "is_vllm_available", lambda: True)
    cfg = load_config("kdrl", **TINY)
    assert cfg.student_quant == "4bit"
    tr = _kd_trainer(cfg, tmp_path, use_vllm=True, vllm_mode="colocate", vllm_enable_sleep_mode=True)
    llm = tr.vllm_generation.llm
    assert llm.kwargs["quantization"] is None and llm.kwargs["model"] == cfg.student_path
    with torch.no_grad():
        for name, p in tr.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # a trained adapter: its update is not zero
    packed = {n: p.detach().clone() for n, p in tr.model.named_parameters() if p.dtype == torch.uint8}
    tr.vllm_generation.sync_weights()

    with safe_open(f"{cfg.student_path}/model.safetensors", "pt") as f:
        assert set(llm.loaded) == set(f.keys())  # the names vLLM's loader knows (tied head once)
    assert all(t.is_floating_point() for t in llm.loaded.values())
    layer = tr.model.get_base_model().model.layers[0].self_attn.q_proj
    b, a = layer.lora_B["default"].weight, layer.lora_A["default"].weight
    expected = _dense_weight(layer.get_base_layer()) + (b @ a) * layer.scaling["default"]
    torch.testing.assert_close(llm.loaded["model.layers.0.self_attn.q_proj.weight"], expected)
    assert all(torch.equal(p, packed[n]) for n, p in tr.model.named_parameters() if n in packed)


def test_teacher_quant_4bit_reaches_the_teacher_as_nf4(tmp_path):
    """--engine trl with teacher_quant=4bit: the teacher is NF4 on a card (it was loaded in full precision:
    only 8bit was mapped), computing in the run's dtype; 8-bit and 4-bit together are refused in one line."""
    kd = config_from_train_config(load_config("kdrl", teacher_quant="4bit", output_dir=str(tmp_path)))
    assert (kd.teacher_load_in_4bit, kd.teacher_load_in_8bit) == (True, False)
    kd.teacher_model_init_kwargs = {"dtype": "bfloat16"}
    kw = teacher_init_kwargs(kd, torch.device("cuda", 0))
    q = kw["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_compute_dtype == torch.bfloat16
    assert kw["device_map"] == {"": torch.device("cuda", 0)}
    assert teacher_init_kwargs(kd, torch.device("cpu")) == {"dtype": "bfloat16"}  # CPU runs keep their dtype
    eight = config_from_train_config(load_config("kdrl", output_dir=str(tmp_path)))
    assert teacher_init_kwargs(eight, torch.device("cuda", 0))["quantization_config"].load_in_8bit
    with pytest.raises(ValueError, match=r"^KDRLConfig.teacher_load_in_4bit=True: and teacher_load_in_8bit"):
        KDRLConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], teacher_load_in_4bit=True)


@pytest.fixture(scope="module")
def qwen_pair(tmp_path_factory, data_dir):
    return write_pair(data_dir / "models" / "student", tmp_path_factory.mktemp("qwen_layout_trl"))


def test_a_padding_row_sample_is_cut_and_scored_on_the_tokenizers_rows(qwen_pair, tmp_path, monkeypatch):
    """vLLM samples from all 151,936 rows of a Qwen2.5 student; an id >= 151,665 is no token, and the teacher
    (cut to the tokenizer) cannot score it: an out-of-bounds index on CPU, a device-side assert on CUDA. Forced here into
    TRL's generation: the completion ends before it, no crash. TRL's fused LM head reads lm_head.weight itself;
    the student's log-probs are normalised over the tokenizer's 151,665 rows, as the teacher's are."""
    from trl import GRPOTrainer

    student, teacher = qwen_pair
    cfg = load_config("kdrl", student_path=str(student), teacher_path=str(teacher), lora_alpha=8, chat_template=True,
                      **{**TINY, "group_size": 2, "prompts_per_step": 1, "max_new_tokens": 6})
    real = GRPOTrainer._generate_single_turn

    def with_padding_id(self, *args, **kwargs):
        ids, logprobs = real(self, *args, **kwargs)
        ids[0] = list(ids[0][:2]) + [STUDENT_ROWS - 1] + list(ids[0][2:])  # a padding row, as vLLM may sample
        return ids, logprobs

    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", with_padding_id)
    tr = _kd_trainer(cfg, tmp_path, teacher=str(teacher), rows=2)
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    out = tr._generate_and_score_completions(next(iter(tr.get_train_dataloader())))
    ids, mask = out["completion_ids"], out["completion_mask"]
    assert int(ids[mask.bool()].max()) < TOKENS and int(mask[0].sum()) <= 2
    assert tr._metrics["train"]["kd/padding_cut"] == [0.5] and torch.isfinite(out["teacher_per_token_logps"]).all()

    full = torch.cat([out["prompt_ids"], ids], 1)
    attn = torch.cat([out["prompt_mask"], mask], 1)
    fused = tr._get_per_token_logps_and_entropies(tr.model, full, attn, ids.shape[1])[0]
    with torch.no_grad():
        logits = tr.model(input_ids=full, attention_mask=attn).logits[:, -ids.shape[1] - 1:-1]  # the hooked head
    assert logits.shape[-1] == TOKENS
    kit = torch.log_softmax(logits.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(fused[mask.bool()], kit[mask.bool()], rtol=1e-4, atol=1e-4)
