"""A tiny random Qwen2 pair in Qwen2.5's exact vocabulary layout, built offline for tests.

Tokenizer: the tiny world's 80 characters plus filler tokens up to 151,665 tokens, with
``<|endoftext|>`` at 151,643, ``<|im_start|>`` 151,644 and ``<|im_end|>`` 151,645 (Qwen2.5's ids) and a
chat template. Student: 2 layers, hidden 64, 151,936 tied rows; teacher: 152,064 untied rows; both
with an Instruct-style generation config (top-k 20, top-p 0.8, repetition penalty 1.05, two EOS ids).
Hidden 64 and intermediate 128 keep bitsandbytes' 4-bit CPU path exact (multiples of 64).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TOKENS, STUDENT_ROWS, TEACHER_ROWS = 151_665, 151_936, 152_064
SPECIALS = {"<|endoftext|>": 151_643, "<|im_start|>": 151_644, "<|im_end|>": 151_645}
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>{% endif %}")


def _tokenizer_files(tiny: Path, out: Path) -> None:
    data = json.loads((tiny / "tokenizer.json").read_text())
    vocab = dict(data["model"]["vocab"])
    taken = set(vocab.values())
    by_id = {i: t for t, i in SPECIALS.items()}
    for i in range(TOKENS):
        if i not in taken:
            vocab[by_id.get(i, f"<|x{i}|>")] = i
    data["model"]["vocab"] = vocab
    data["added_tokens"] += [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": True} for t, i in SPECIALS.items()]
    (out / "tokenizer.json").write_text(json.dumps(data))
    config = json.loads((tiny / "tokenizer_config.json").read_text())
    config.update(eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE)
    config.pop("added_tokens_decoder", None)
    (out / "tokenizer_config.json").write_text(json.dumps(config))


def _model(rows: int, tied: bool, seed: int):
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=rows, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=tied, bos_token_id=None, eos_token_id=151_645, pad_token_id=151_643)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).eval()
    model.generation_config = GenerationConfig(do_sample=True, temperature=0.7, top_k=20, top_p=0.8,
                                               repetition_penalty=1.05, eos_token_id=[151_645, 151_643],
                                               pad_token_id=151_643)
    return model


def write_pair(tiny_student: Path, out: Path) -> tuple[Path, Path]:
    """Write ``out/student`` (151,936 tied rows) and ``out/teacher`` (152,064 untied) with the tokenizer."""
    dirs = []
    for name, rows, tied, seed in (("student", STUDENT_ROWS, True, 0), ("teacher", TEACHER_ROWS, False, 1)):
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        _model(rows, tied, seed).save_pretrained(str(d))
        _tokenizer_files(tiny_student, d)
        dirs.append(d)
    return dirs[0], dirs[1]
