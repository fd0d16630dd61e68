"""The tiny world's parts that are not trained: its character tokenizer, the two model shapes, the
build plan (sizes, step caps and stop criteria) and a random Llama of a given shape."""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = string.digits + " \n+-*/=#.,:?()" + string.ascii_lowercase + string.ascii_uppercase
GROUP = 8  # samples per prompt for the per-sample accuracy and pass@G gates


def build_tokenizer(out_dir: str | Path):
    """A character-level tokenizer (one token per character) saved as a HF tokenizer folder."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL + list(CHARS))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>", padding_side="left")
    tok.save_pretrained(str(out_dir))
    return tok


@dataclass
class TinyModelSpec:
    """A small Llama shape (RMSNorm, SwiGLU, RoPE, grouped-query attention)."""

    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 384


TEACHER_SPEC = TinyModelSpec(hidden_size=128, num_hidden_layers=6, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=512)
# Every linear layer's input size is a multiple of 64: bitsandbytes' 4-bit CPU kernels are wrong
# otherwise (see models._refuse_misaligned_4bit).
STUDENT_SPEC = TinyModelSpec(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=256)


@dataclass
class BuildPlan:
    """Sizes, step caps and stop criteria of a build (the defaults build the shipped world).

    teacher_stop: teacher stops once greedy validation accuracy on chains below 100 reaches it.
    student_crossing_share: share of the student's warm-up rows whose total crosses 100.
    student_stop_test: student stops at the first check whose greedy validation accuracy on
        chains below 100 reaches this ...
    student_stop_blind: ... and whose per-sample accuracy on crossing chains reaches this.
    """

    pool_size: int = 40000
    pool_crossing_4: int = 2500  # only ~4,500 distinct 4-operand crossing prompts exist
    val_size: int = 200
    batch_size: int = 64
    teacher_steps: int = 4000
    teacher_lr: float = 2e-3
    teacher_eval_every: int = 250
    teacher_stop: float = 0.98
    student_steps: int = 1500
    student_lr: float = 2e-3
    student_eval_every: int = 10
    student_crossing_share: float = 0.1
    student_stop_test: float = 0.2
    student_stop_blind: float = 0.03
    check_seed: int = 1234


def tiny_llama(spec: TinyModelSpec, tokenizer, seed: int):
    """A randomly initialised LlamaForCausalLM of ``spec`` for ``tokenizer``.

    Llama rather than Qwen2: transformers maps a Qwen2 config to its byte-level BPE tokenizer
    class, which would silently drop our character tokenizer's whitespace on reload.
    """
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=256, tie_word_embeddings=True,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, rope_theta=10000.0, **asdict(spec))
    return LlamaForCausalLM(cfg)
