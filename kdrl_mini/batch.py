"""The :class:`Batch` record: a rollout's token ids, masks and texts.

Conventions: a batch of ``B`` sequences is ``[prompt | completion]`` with prompts left-padded
to a common length ``P``; completions ``[B, T]`` hold the generated tokens; ``mask [B, T]`` is 1
for completion tokens up to and including the first EOS, 0 after it. Sampling one lives in
:mod:`kdrl_mini.rollout`, scoring one in :mod:`kdrl_mini.scoring`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Batch:
    """One rollout: ``B = len(prompts) * group_size`` sequences, groups contiguous.

    input_ids, attention_mask: [B, P + T]; completion_mask: [B, T] (float 0/1); prompt_len: P;
    truncated: [B] bool, True where the budget ran out before an EOS; texts: decoded completions.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_len: int
    texts: list[str]
    truncated: torch.Tensor | None = None

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len:]

    def rows(self, sl: slice) -> "Batch":
        """The sequences ``sl`` (a micro-batch); tensors are views, not copies."""
        return Batch(**{f.name: _take(getattr(self, f.name), sl) for f in fields(self)})


def _take(value, sl: slice):
    return value[sl] if isinstance(value, (torch.Tensor, list)) else value
