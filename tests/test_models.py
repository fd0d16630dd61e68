"""Loading the shipped world: 4-bit NF4 + LoRA student, 8-bit teacher, and the errors users hit."""

import json

import pytest
import torch

import helpers_quant
from kdrl_mini import models, sampling_copy, vocab
from kdrl_mini.rollout import sample, teacher_forced_batch
from kdrl_mini.scoring import token_logprobs

PROMPTS = ["Compute 47+38-19.\n", "Compute 12+80-55.\n"]
SOLUTIONS = ["47+38=85\n85-19=66\n#### 66", "12+80=92\n92-55=37\n#### 37"]


@pytest.fixture(scope="module")
def student_dir(data_dir):
    return data_dir / "models" / "student"


@pytest.fixture(scope="module")
def teacher_dir(data_dir):
    return data_dir / "models" / "teacher"


def test_shipped_checkpoints_load_with_auto_classes(student_dir, teacher_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for path in (student_dir, teacher_dir):
        model = AutoModelForCausalLM.from_pretrained(str(path))
        tok = AutoTokenizer.from_pretrained(str(path))
        assert model.config.vocab_size == len(tok)
        assert tok.decode(tok("Compute 1+2.\n", add_special_tokens=False)["input_ids"]) == "Compute 1+2.\n"


def test_4bit_lora_step_changes_only_adapters(student_dir, tokenizer):
    torch.manual_seed(0)
    student = models.load_student(student_dir, "4bit", models.LoraSpec(r=4, alpha=8))
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    trainable = [p for p in student.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in student.named_parameters() if p.requires_grad)
    opt = torch.optim.SGD(trainable, lr=0.5)
    batch = teacher_forced_batch(tokenizer, PROMPTS, SOLUTIONS, "cpu")
    loss = -(token_logprobs(student, batch) * batch.completion_mask).sum()
    loss.backward()
    opt.step()
    changed = {n for n, p in student.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed, "the optimiser step changed nothing"
    assert all("lora_" in n for n in changed), f"frozen weights changed: {sorted(changed)[:3]}"
    assert any("lora_B" in n for n in changed)


def test_4bit_lora_gradients_after_generate_match_dequantized_reference(student_dir, tokenizer):
    """The CPU trap: an eval-mode generate must not corrupt later 4-bit LoRA gradients."""
    lora = models.LoraSpec(r=4, alpha=8)
    torch.manual_seed(0)
    student = models.load_student(student_dir, "4bit", lora)
    helpers_quant.randomize_lora_b(student)  # so every adapter's gradient passes through the base
    ref = helpers_quant.dequantized_reference(student, student_dir, lora)
    student.eval()
    sample(student, tokenizer, PROMPTS, group_size=2, max_new_tokens=12)  # the generate step of GRPO
    grads = helpers_quant.lora_gradients(student, tokenizer, PROMPTS, SOLUTIONS)
    reference = helpers_quant.lora_gradients(ref, tokenizer, PROMPTS, SOLUTIONS)
    for name, rel in helpers_quant.relative_errors(grads, reference).items():
        assert rel < 1e-3, f"{name}: relative gradient error {rel:.2e}"


def test_8bit_teacher_logits_close_to_full_precision(teacher_dir, tokenizer):
    from kdrl_mini.kl import exact_kl

    full = models.load_teacher(teacher_dir, "none")
    int8 = models.load_teacher(teacher_dir, "8bit")
    batch = teacher_forced_batch(tokenizer, PROMPTS, SOLUTIONS, "cpu")
    _, l32 = token_logprobs(full, batch, return_logits=True)
    _, l8 = token_logprobs(int8, batch, return_logits=True)
    kl = exact_kl(l8, l32)[batch.completion_mask.bool()]
    print(f"KL(8-bit || fp32) per token: mean {kl.mean():.2e}, max {kl.max():.2e}")
    assert kl.mean() < 1e-2 and kl.max() < 0.1
    assert not torch.equal(l8, l32), "8-bit load gave identical logits: quantisation did not happen"


def test_missing_checkpoint_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load_teacher(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no teacher model"):
        models.load_teacher(tmp_path / "empty")


def test_vocab_mismatch_is_refused(student_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    other = AutoModelForCausalLM.from_pretrained(str(student_dir))
    other.resize_token_embeddings(other.config.vocab_size + 16)
    other.save_pretrained(str(tmp_path / "bigger"))
    student = models.load_causal_lm(student_dir)
    teacher = models.load_teacher(tmp_path / "bigger", "none")
    with pytest.raises(ValueError, match=r"teacher vocabulary \(\d+\) differs from student \(\d+\)"):
        vocab.check_same_vocab(student, teacher)


def test_quantised_student_without_lora_is_refused(student_dir):
    with pytest.raises(ValueError, match="needs LoRA adapters"):
        models.load_student(student_dir, "4bit", lora=None)


def test_merged_lora_generation_is_exact_and_restores_weights(student_dir, tokenizer):
    torch.manual_seed(0)
    student = models.load_student(student_dir, "none", models.LoraSpec(r=4, alpha=8))
    with torch.no_grad():
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    student.eval()
    torch.manual_seed(1)
    plain = sample(student, tokenizer, PROMPTS, group_size=2, max_new_tokens=16)
    torch.manual_seed(1)
    with sampling_copy.merged_lora(student):
        merged = sample(student, tokenizer, PROMPTS, group_size=2, max_new_tokens=16)
    assert torch.equal(plain.input_ids, merged.input_ids)
    assert all(torch.equal(p.detach(), before[n]) for n, p in student.named_parameters())


def test_a_model_folder_that_asks_to_run_code_is_refused_and_nothing_runs(tmp_path, data_dir):
    import shutil

    from kdrl_mini import models

    folder = tmp_path / "evil"
    shutil.copytree(data_dir / "models" / "student", folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    with pytest.raises(ValueError, match="never runs code from a model folder"):
        models.load_student(folder, "none", None)
    assert not marker.exists()


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "config.json").write_text("{not json"), "config.json is not valid JSON"),
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:1000]),
     "checkpoint cannot be loaded"),
])
def test_damaged_checkpoints_name_the_path_and_the_fix(tmp_path, data_dir, damage, message):
    import shutil

    from kdrl_mini import models

    folder = tmp_path / "damaged"
    shutil.copytree(data_dir / "models" / "teacher", folder)
    damage(folder)
    with pytest.raises(ValueError, match=message) as err:
        models.load_teacher(folder, "none")
    assert str(folder) in str(err.value)


def test_a_teacher_tokenizer_with_other_tokens_of_the_same_size_is_refused(tmp_path, data_dir):
    import shutil

    from kdrl_mini.vocab import check_same_tokenizer

    folder = tmp_path / "teacher"
    shutil.copytree(data_dir / "models" / "teacher", folder)
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = "a", "b"
    vocab[a], vocab[b] = vocab[b], vocab[a]  # same size, two ids swapped
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ValueError, match="differs from the student's .* in 2 tokens"):
        check_same_tokenizer(data_dir / "models" / "student", folder)
