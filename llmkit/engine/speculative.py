"""Speculative decoding: cheap proposals of the next k tokens, verified by the target in one forward.

A decoding sequence feeds its last token plus k proposed tokens; the target's
logits at those k + 1 positions say which proposals it agrees with. Greedy
requests keep the longest prefix of proposals equal to the target's argmax,
plus the target's own next token, so the output is token for token that of
plain greedy decoding, only with fewer target forwards. Sampled requests use
speculative sampling (Leviathan et al. 2023; Chen et al. 2023): proposal x at
a position is kept with probability min(1, p(x) / q(x)), and the first
rejected position is resampled from norm(max(0, p - q)); this leaves the
output distributed exactly as sampling from the target p. A deterministic
proposer has q = one-hot(x).

Proposers (:class:`SpeculativeConfig.method`):

- ``ngram`` (prompt lookup decoding, Saxena 2023): the tokens that followed the
  last earlier occurrence of the sequence's final n-gram (n from
  ``prompt_lookup_max`` down to ``prompt_lookup_min``); no extra model, strong
  when the output copies from the input (editing, extraction, code).
- ``draft`` (Leviathan et al.): a smaller model with the same tokenizer runs k
  cheap decode steps. It keeps its own paged pool with the target's block
  tables, so it needs no block bookkeeping of its own; ``draft_computed``
  tracks how much of each sequence that pool holds, and after verification it
  is cut back to what the target accepted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from llmkit.engine import sampler
from llmkit.engine.model_runner import ModelRunner
from llmkit.engine.sequence import Sequence
from llmkit.model import CausalLM

Drafts = tuple[list[int], torch.Tensor | None]  # proposed ids, and the proposer's (k, V) probabilities if it sampled


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding settings.

    Attributes:
        method: "ngram" (prompt lookup) or "draft" (a smaller model).
        num_tokens: k, tokens proposed per step.
        draft_model: for "draft": a :class:`CausalLM`, or a name or path ``llmkit.generate`` loads.
        prompt_lookup_max: longest n-gram matched by "ngram".
        prompt_lookup_min: shortest n-gram matched by "ngram".
    """

    method: Literal["ngram", "draft"] = "ngram"
    num_tokens: int = 4
    draft_model: Any = None
    prompt_lookup_max: int = 3
    prompt_lookup_min: int = 1

    def __post_init__(self):
        if self.method not in ("ngram", "draft"):
            raise ValueError(f"speculative method must be 'ngram' or 'draft', got {self.method!r}")
        if self.num_tokens < 1:
            raise ValueError(f"speculative num_tokens must be >= 1, got {self.num_tokens}")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError("need 1 <= prompt_lookup_min <= prompt_lookup_max")
        if (self.method == "draft") != (self.draft_model is not None):
            raise ValueError("a draft_model is needed by, and only by, method='draft'")

    def load_draft(self, target: CausalLM) -> CausalLM | None:
        """The draft model on the target's device and dtype (None for "ngram"); checks the vocabularies agree."""
        if self.method != "draft":
            return None
        draft = self.draft_model
        if not isinstance(draft, CausalLM):
            from llmkit.generate import load_model_and_tokenizer

            draft, _ = load_model_and_tokenizer(draft, dtype=target.dtype, device=target.device)
        if draft.cfg.vocab_size != target.cfg.vocab_size:
            raise ValueError(f"the draft model's vocabulary ({draft.cfg.vocab_size}) differs from the target's "
                             f"({target.cfg.vocab_size}): they must share a tokenizer")
        return draft.eval()


class NgramProposer:
    """Prompt lookup: continue the sequence's last n-gram as it continued before."""

    def __init__(self, cfg: SpeculativeConfig):
        self.cfg = cfg

    def propose(self, seqs: list[Sequence], room: list[int]) -> list[Drafts]:
        return [(self._lookup(seq.token_ids, k), None) for seq, k in zip(seqs, room)]

    def _lookup(self, tokens: list[int], k: int) -> list[int]:
        if k <= 0:
            return []
        for n in range(self.cfg.prompt_lookup_max, self.cfg.prompt_lookup_min - 1, -1):
            if len(tokens) <= n:
                continue
            key = tokens[-n:]
            for i in range(len(tokens) - n - 1, -1, -1):  # the latest earlier occurrence
                if tokens[i:i + n] == key:
                    return tokens[i + n:i + n + k]
        return []

    def rollback(self, seq: Sequence) -> None:
        pass

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        pass


class DraftProposer:
    """A smaller model proposes k tokens by decoding them, over its own pool with the target's block tables."""

    def __init__(self, draft: CausalLM, num_blocks: int, block_size: int):
        self.runner = ModelRunner(draft, num_blocks, block_size)

    def propose(self, seqs: list[Sequence], room: list[int]) -> list[Drafts]:
        out: list[tuple[list[int], list[torch.Tensor]]] = [([], []) for _ in seqs]
        # first round: catch up on what the draft has not seen (a prompt, or the last accepted tokens)
        feeds = [(s.block_table, s.draft_computed, s.token_ids[s.draft_computed:], 1) for s in seqs]
        active = list(range(len(seqs)))
        for step in range(max(room, default=0)):
            logits = torch.cat(self.runner.run(feeds))  # (len(active), V)
            params = [seqs[i].params for i in active]
            probs = sampler.process(logits, params, [((), ())] * len(active))
            tokens = sampler.sample(probs, params, [None] * len(active))
            for row, i in enumerate(active):
                seq = seqs[i]
                seq.draft_computed = seq.num_tokens + step  # everything fed so far is in the draft's pool
                out[i][0].append(int(tokens[row]))
                out[i][1].append(probs[row].softmax(-1))
            active = [i for i in active if len(out[i][0]) < room[i]]
            feeds = [(seqs[i].block_table, seqs[i].num_tokens + step, [out[i][0][-1]], 1) for i in active]
            if not active:
                break
        return [(ids, None if seq.params.greedy else torch.stack(q)) if ids else ([], None)
                for seq, (ids, q) in zip(seqs, out)]

    def rollback(self, seq: Sequence) -> None:
        """After verification: the draft's pool is valid only up to what the target kept."""
        seq.draft_computed = min(seq.draft_computed, seq.num_computed_tokens)

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        self.runner.copy_blocks(copies)


def build_proposer(cfg: SpeculativeConfig, draft: CausalLM | None, num_blocks: int,
                   block_size: int) -> NgramProposer | DraftProposer:
    return DraftProposer(draft, num_blocks, block_size) if cfg.method == "draft" else NgramProposer(cfg)


def verify(logits: torch.Tensor, drafts: list[int], greedy: bool, q: torch.Tensor | None,
           generator: torch.Generator | None) -> list[int]:
    """The tokens a verification step yields: the accepted proposals, then one token of the target's.

    Args:
        logits: (k + 1, V) processed target logits at the last token and each proposal.
        drafts: the k proposed ids.
        greedy: keep proposals equal to the argmax (else speculative sampling).
        q: (k, V) the proposer's probabilities, or None for a deterministic proposer (one-hot).
        generator: the request's random source.
    Returns:
        1 to k + 1 token ids.
    """
    if greedy:
        target = logits.argmax(dim=-1).tolist()
        a = 0
        while a < len(drafts) and drafts[a] == target[a]:
            a += 1
        return drafts[:a] + [target[a]]
    p = logits.softmax(dim=-1)
    for j, x in enumerate(drafts):
        qx = 1.0 if q is None else float(q[j, x])
        u = torch.rand((), generator=generator, device=p.device)
        if float(u) * qx < float(p[j, x]):  # accept with probability min(1, p/q)
            continue
        residual = p[j].clone()
        if q is None:
            residual[x] = 0.0
        else:
            residual = (residual - q[j]).clamp(min=0)
        token = torch.multinomial(residual / residual.sum(), 1, generator=generator)
        return drafts[:j] + [int(token)]
    return drafts + [int(torch.multinomial(p[len(drafts)], 1, generator=generator))]
