"""Scoring a batch: chunked log-probs, the teacher's shared-prompt pass, temperature, memory, devices."""

import json
from pathlib import Path

import pytest
import torch

from kdrl_mini import models, sampling_copy
from kdrl_mini.real.measure import reset_peak
from kdrl_mini.batch import Batch
from kdrl_mini.rollout import sample
from kdrl_mini.scoring import logprobs_from_logits, score_groups, score_in_micro_batches, token_logprobs


@pytest.fixture(scope="module")
def pair(data_dir):
    tok = models.load_tokenizer(data_dir / "models" / "student")
    teacher = models.load_teacher(data_dir / "models" / "teacher", "none")
    rows = [json.loads(line) for line in open(data_dir / "train.jsonl")][:3]
    torch.manual_seed(0)
    batch = sample(teacher, tok, [r["prompt"] for r in rows], group_size=4, max_new_tokens=24)
    return tok, teacher, batch


def test_chunked_logprobs_equal_log_softmax_at_any_temperature():
    torch.manual_seed(0)
    z = torch.randn(5, 7, 11, dtype=torch.float64) * 3
    y = torch.randint(0, 11, (5, 7))
    for tau in (1.0, 0.7, 1.3):
        expected = torch.log_softmax(z / tau, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(logprobs_from_logits(z, y, tau), expected.float())


def test_shared_prompt_teacher_pass_equals_the_plain_forward(pair):
    _, teacher, batch = pair
    plain, plain_logits = score_in_micro_batches(teacher, batch, None, keep_logits=True)
    for mb in (None, 4, 8):  # whole groups per call; 8 = two groups
        shared, logits = score_groups(teacher, batch, 4, mb, keep_logits=True)
        m = batch.completion_mask.bool()
        torch.testing.assert_close(shared[m], plain[m], rtol=0, atol=2e-5)
        torch.testing.assert_close(logits[m], plain_logits[m], rtol=0, atol=2e-4)


def test_micro_batched_scoring_equals_whole_batch(pair):
    _, teacher, batch = pair
    whole, _ = score_in_micro_batches(teacher, batch, None)
    parts, _ = score_in_micro_batches(teacher, batch, 5)  # 12 rows = 5 + 5 + 2
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-5)


def test_generation_samples_the_scored_policy(pair, data_dir):
    """A model's own repetition penalty must not change what is sampled (the losses score the
    plain softmax), and every EOS id of the model ends a response."""
    tok, teacher, _ = pair
    prompts = ["Compute 37+8-5+9.\n", "Compute 12+3-4+5.\n"]
    ref = sample(teacher, tok, prompts, max_new_tokens=30, greedy=True)
    teacher.generation_config.repetition_penalty = 5.0
    try:
        again = sample(teacher, tok, prompts, max_new_tokens=30, greedy=True)
    finally:
        teacher.generation_config.repetition_penalty = 1.0
    assert again.texts == ref.texts
    newline = tok.convert_tokens_to_ids("\n")
    teacher.generation_config.eos_token_id = [tok.eos_token_id, newline]
    try:
        cut = sample(teacher, tok, prompts, max_new_tokens=30, greedy=True)
    finally:
        teacher.generation_config.eos_token_id = tok.eos_token_id
    assert all("\n" not in t[:-1] for t in cut.texts) and (cut.completion_mask.sum(1) < ref.completion_mask.sum(1)).all()


def test_dequantised_rollout_copy_scores_like_the_4bit_student(data_dir, tokenizer):
    """Sampling from a full-precision copy is sampling from the same policy: its log-probs match
    the 4-bit model's (which computes dequant(W) x + LoRA(x)) to float rounding."""
    student = models.load_student(data_dir / "models" / "student", "4bit", models.LoraSpec(r=4, alpha=8))
    with torch.no_grad():
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # a trained adapter: LoRA must be in the copy
    copy = sampling_copy.MergedCopy(student)
    batch = sample(copy.model, tokenizer, ["Compute 37+8-5+9.\n"] * 2, group_size=3, max_new_tokens=30)
    student.train()
    with torch.no_grad():
        a, b = token_logprobs(student, batch), token_logprobs(copy.refresh(), batch)
    m = batch.completion_mask.bool()
    assert (a - b)[m].abs().max() < 1e-4
    with torch.no_grad():  # an optimiser step later, refresh() follows the adapters
        next(p for n, p in student.named_parameters() if "lora_B" in n).add_(0.5)
        a, b = token_logprobs(student, batch), token_logprobs(copy.refresh(), batch)
    assert (a - b)[m].abs().max() < 1e-4


def _big_vocab_pair(tmp_path, vocab=32000):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def _batch(B, P, T, vocab):
    torch.manual_seed(1)
    ids = torch.randint(3, vocab, (B, P + T))
    return Batch(ids, torch.ones(B, P + T, dtype=torch.long), torch.ones(B, T), P, [""] * B,
                 torch.zeros(B, dtype=torch.bool))


PEAK_PRELUDE = """
import json, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from kdrl_mini.real.measure import memory_mb, release_freed_memory, reset_peak

def peak_added(fn):
    release_freed_memory()
    reset_peak()
    start = memory_mb()["peak"]
    fn()
    return memory_mb()["peak"] - start
"""

PEAK_SCRIPT = PEAK_PRELUDE + """
from test_scoring import _batch, _big_vocab_pair
from kdrl_mini.scoring import score_groups

vocab, B, P, T = 32000, 64, 8, 32
model, batch = _big_vocab_pair(None, vocab), _batch(B, P, T, vocab)
score_groups(model, batch.rows(slice(0, 2)), 2, micro_batch_size=2)  # warm-up: one-time allocations
lean = peak_added(lambda: score_groups(model, batch, 2, micro_batch_size=2))
kept = peak_added(lambda: score_groups(model, batch, 2, micro_batch_size=2, keep_logits=True))
print(json.dumps({"lean": lean, "kept": kept, "full": B * T * vocab * 4 / 2**20}))
"""


def test_no_vocabulary_sized_tensor_is_kept_for_sampled_estimators():
    """Measured, not assumed, in a fresh process (so nothing earlier in the test session moves the
    peak): at V = 32,000 one fp32 [B, T, V] of this batch is 250 MB. Teacher scoring in
    micro-batches of 2 (what k1/k2/k3 need: [B, T] log-probs) stays far below it; keeping the
    logits (what exact / top-k KL need) costs at least that much, so the test can tell the two apart."""
    import subprocess
    import sys

    if not reset_peak():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak")
    import os

    here = str(Path(__file__).parent)
    # A fixed mmap threshold makes glibc hand every large block straight back on free, so the peak
    # is what was alive at once (with its default, adaptive threshold freed blocks linger: 24-85 MB).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, here], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"[B, T, V] = {r['full']:.0f} MB; peak added: lean {r['lean']:.0f} MB, keeping logits {r['kept']:.0f} MB")
    assert r["lean"] < 0.25 * r["full"]
    assert r["kept"] >= 0.9 * r["full"]


def test_loss_path_keeps_every_tensor_on_the_model_device():
    """The CUDA wiring checked on CPU with the meta device: a rollout whose tensors all live on
    ``meta`` goes through rewards, masks, advantages, every loss and the diagnostics; a tensor
    created on the CPU by mistake would raise "... is not on the expected device meta"."""
    from kdrl_mini.advantages import group_advantages, sequence_kl_rewards
    from kdrl_mini.config import TrainConfig
    from kdrl_mini.losses import kd_mask, token_weights
    from kdrl_mini.rewards import batch_rewards
    from kdrl_mini.algorithms import ALGORITHMS, LossInputs, Rollout

    meta, B, P, T, G = torch.device("meta"), 8, 3, 5, 4
    rewards = batch_rewards(["#### 1"] * B, ["1"] * B, device=meta)
    assert rewards.device == meta
    mask = torch.ones(B, T, device=meta)
    batch = Batch(torch.zeros(B, P + T, dtype=torch.long, device=meta), torch.ones(B, P + T, dtype=torch.long, device=meta),
                  mask, P, [""] * B, torch.zeros(B, dtype=torch.bool, device=meta))
    loss_kl = torch.empty(B, T, device=meta, requires_grad=True)  # the token-chunked head's exact KL
    logp = torch.empty(B, T, device=meta, requires_grad=True)
    teacher_logp, teacher_hidden = torch.empty(B, T, device=meta), torch.empty(B, T, 16, device=meta)
    for algorithm, extra in [("grpo", {}), ("kd-fkl", {}), ("kd-rkl", {}), ("kdrl", {}), ("kdrl", {"kl_kind": "exact"}),
                             ("kdrl", {"kl_mode": "reward", "kl_kind": "k1"}), ("kdrl", {"kd_strategy": "incorrect"})]:
        cfg = TrainConfig(algorithm=algorithm, group_size=G, **extra)
        kd_w = kd_mask(rewards, G, cfg.kd_strategy)
        shaped = sequence_kl_rewards(rewards, 0.1, teacher_logp, teacher_logp, mask=mask, kd_weights=kd_w)
        adv = group_advantages(shaped, G)
        ro = Rollout(batch=batch, rewards=rewards, correct=rewards, advantages=adv, kd_weights=kd_w,
                     weights=token_weights(mask, cfg.loss_agg, T), teacher_logp=teacher_logp, teacher_hidden=teacher_hidden)
        loss, metrics = ALGORITHMS[algorithm].loss(ro, logp, LossInputs.of(cfg).at(0.1, loss_kl))
        assert loss.device == meta and all(v.device == meta for v in metrics.values()), algorithm


def test_merged_copy_never_changes_the_student(data_dir):
    """refresh() reads the student's weights; it must not write them (an fp32 base aliased by the
    merge would drift by one LoRA update per step and wreck training)."""
    student = models.load_student(data_dir / "models" / "student", "none", models.LoraSpec(r=4, alpha=8))
    with torch.no_grad():
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    copy = sampling_copy.MergedCopy(student)
    copy.refresh()
    copy.refresh()
    assert all(torch.equal(before[n], p) for n, p in student.named_parameters())


HEAD_PEAK_SCRIPT = PEAK_PRELUDE + """
from transformers import LlamaConfig, LlamaForCausalLM
from test_scoring import _batch
from kdrl_mini.scoring import CHUNK_ELEMENTS, completion_hidden, head_token_stats, score_groups, tokens_per_chunk

V, P, T = 151936, 8, 1024
cfg = LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True)
torch.manual_seed(0)
model = LlamaForCausalLM(cfg).eval().requires_grad_(False)
batch = _batch(2, P, T, V)
with torch.no_grad():
    hidden = completion_hidden(model, batch.rows(slice(0, 1)))
head, y = model.get_output_embeddings(), batch.completion_ids[:1]

teacher_head = torch.nn.Linear(64, V, bias=False).requires_grad_(False)  # another model's head
teacher_hidden = torch.randn(1, T, 64)

def train(budget, kl_kind=None):  # one row's forward and backward through the head (a LoRA student: frozen head)
    h = hidden.detach().requires_grad_()
    ref = {} if kl_kind is None else {"ref_head": teacher_head, "ref_hidden": teacher_hidden, "kl_kind": kl_kind,
                                      "top_k": 20}
    logp, _, _, kl = head_token_stats(head, h, y, chunk_tokens=tokens_per_chunk(V, budget), **ref)
    (logp.sum() + (0 if kl is None else kl.sum())).backward()

train(CHUNK_ELEMENTS)  # warm-up: one-time allocations
train(CHUNK_ELEMENTS, "exact")
out = {"row": T * V * 4 / 2**20, "chunk": CHUNK_ELEMENTS * 4 / 2**20}
for name, budget in (("train", CHUNK_ELEMENTS), ("train_quarter", CHUNK_ELEMENTS // 4)):
    out[name] = peak_added(lambda: train(budget))
for kind in ("exact", "topk"):
    out[f"train_{kind}"] = peak_added(lambda: train(CHUNK_ELEMENTS, kind))
out["train_exact_quarter"] = peak_added(lambda: train(CHUNK_ELEMENTS // 4, "exact"))
out["teacher"] = peak_added(lambda: score_groups(model, batch, 2, micro_batch_size=1))
print(json.dumps(out))
"""


def test_token_chunked_head_peak_is_set_by_the_chunk_budget():
    """At Qwen2.5's 151,936 rows and T = 1,024 one fp32 row of logits is 593 MiB, and chunking by rows
    (the old path) held it whole. Through the token-chunked head the training forward + backward and the
    teacher's scoring (micro-batch 1 row, below the group of 2) add a few chunks (64 MiB each), and a
    quarter budget lowers the peak about 4x: it is set by the chunk budget, not by T x V. Fresh process,
    tiny hidden size (64)."""
    import os
    import subprocess
    import sys

    if not reset_peak():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run([sys.executable, "-c", HEAD_PEAK_SCRIPT, str(Path(__file__).parent)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    print({k: round(v) for k, v in r.items()})
    # measured here: train 319 MiB (5 chunks: logits, logsumexp, the logged entropy; rebuilt in the backward),
    # a quarter budget 78 MiB, teacher 129 MiB (2 chunks: no entropy, no backward)
    assert r["train"] <= 6 * r["chunk"] and r["teacher"] <= 3 * r["chunk"]
    assert r["train"] < 0.6 * r["row"] and r["train_quarter"] < 0.4 * r["train"]
    # the exact / top-k KL against another model's head: the teacher's chunk logits rebuilt next to the
    # student's, the KL's log-softmaxes and its backward; still set by the chunk budget, not T x V
    for kind in ("exact", "topk"):
        assert r[f"train_{kind}"] <= 12 * r["chunk"] and r[f"train_{kind}"] < 1.5 * r["row"]
    assert r["train_exact_quarter"] < 0.4 * r["train_exact"]


def test_teacher_pieces_below_a_group_equal_the_plain_forward(pair):
    _, teacher, batch = pair
    plain, plain_logits = score_in_micro_batches(teacher, batch, None, keep_logits=True)
    m = batch.completion_mask.bool()
    for mb in (1, 3):  # pieces of one group of 4: 1+1+1+1 and 3+1
        pieces, logits = score_groups(teacher, batch, 4, mb, keep_logits=True)
        torch.testing.assert_close(pieces[m], plain[m], rtol=0, atol=2e-5)
        torch.testing.assert_close(logits[m], plain_logits[m], rtol=0, atol=2e-4)


def test_token_chunked_logprobs_and_gradients_equal_the_full_head(pair):
    from kdrl_mini.scoring import student_token_stats

    _, teacher, batch = pair
    student = models.load_student(Path(__file__).resolve().parents[1] / "data/models/student", "none",
                                   models.LoraSpec(r=4, alpha=8))
    grads = []
    for chunk in (None, 7):
        student.zero_grad()
        if chunk is None:
            logp = token_logprobs(student, batch, temperature=0.8)
        else:
            logp = student_token_stats(student, batch, 0.8, chunk_tokens=chunk)[0]
        (logp * batch.completion_mask).sum().backward()
        grads.append([p.grad.clone() for p in student.parameters() if p.requires_grad])
        if chunk is None:
            ref = logp.detach()
    torch.testing.assert_close(logp.detach(), ref, rtol=0, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["exact", "topk"])
def test_token_chunked_kl_and_its_gradient_equal_the_full_logits(pair, kind):
    """The exact / top-k KL the trainer sums a chunk of tokens at a time, the teacher's logits rebuilt
    from its kept hidden states, equals token_kl on the full [B, T, V] logits of both models, and so
    does its gradient (autograd through the checkpointed chunks)."""
    from kdrl_mini.kl import token_kl
    from kdrl_mini.scoring import completion_logits, student_token_stats

    _, teacher, batch = pair
    student = models.load_student(Path(__file__).resolve().parents[1] / "data/models/student", "none",
                                  models.LoraSpec(r=4, alpha=8))
    m = batch.completion_mask.bool()
    _, teacher_logits = score_in_micro_batches(teacher, batch, None, keep_logits=True)
    _, hidden = score_groups(teacher, batch, 4, keep_hidden=True)
    results = []
    for chunked in (False, True):
        student.zero_grad()
        if chunked:
            kl = student_token_stats(student, batch, 0.8, teacher, hidden, chunk_tokens=7, kl_kind=kind, top_k=5)[3]
        else:
            kl = token_kl(kind, None, None, completion_logits(student, batch).float() / 0.8, teacher_logits, top_k=5)
        torch.where(m, kl, torch.zeros_like(kl)).sum().backward()
        results.append((kl.detach()[m], [p.grad.clone() for p in student.parameters() if p.requires_grad]))
    (full, g_full), (chunk, g_chunk) = results
    assert full.abs().sum() > 0  # a test that cannot pass vacuously
    torch.testing.assert_close(chunk, full, rtol=1e-4, atol=1e-5)
    for a, b in zip(g_chunk, g_full):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_kl_kind_without_the_teacher_is_refused():
    from kdrl_mini.scoring import head_token_stats

    head = torch.nn.Linear(4, 6, bias=False)
    with pytest.raises(ValueError, match="needs the teacher's ref_head and ref_hidden"):
        head_token_stats(head, torch.randn(1, 2, 4), torch.zeros(1, 2, dtype=torch.long), kl_kind="exact")
