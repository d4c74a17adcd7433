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
- ``lookahead`` (Fu et al. 2024, lookahead decoding): no extra model either. Each
  sequence keeps a window of ``lookahead_window`` guesses for the next positions;
  the same forward that verifies a candidate also runs one Jacobi iteration on the
  window (guess i attends to the context and the guesses before it, never to the
  candidate, and vice versa: a (T, T) mask inside the step's chunk). The refreshed
  guesses form n-grams that go into a per-sequence pool keyed by their first token;
  the next candidate is the pool's most recent n-gram that starts with the last
  token. This is the one-level variant: the paper keeps N - 1 past Jacobi levels and
  collects n-grams across them; here n-grams come from consecutive guesses of one
  level, which needs no level history and shares the verification code.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch

from llmkit.engine import sampler
from llmkit.engine.model_runner import Feed, ModelRunner
from llmkit.engine.sequence import Sequence
from llmkit.generate.argmax import argmax
from llmkit.model import CausalLM



class Proposal(NamedTuple):
    """What a decoding sequence feeds after its last token: ``tokens``, of which the first
    ``num_drafts`` are a draft chain to verify (the rest are scored but not verified, such as
    lookahead's guesses). ``q``: the proposer's (num_drafts, V) probabilities if it sampled;
    ``positions``/``mask``: RoPE positions of ``tokens`` and a (1 + T, 1 + T) mask, when not the
    plain causal continuation."""

    tokens: list[int]
    num_drafts: int
    q: torch.Tensor | None = None
    positions: list[int] | None = None
    mask: torch.Tensor | None = None


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding settings.

    Attributes:
        method: "ngram" (prompt lookup), "draft" (a smaller model) or "lookahead" (Jacobi n-gram pool).
        num_tokens: k, tokens proposed (and verified) per step; for "lookahead", N - 1 of its n-grams.
        draft_model: for "draft": a :class:`CausalLM`, or a name or path ``llmkit.generate`` loads.
        prompt_lookup_max: longest n-gram matched by "ngram".
        prompt_lookup_min: shortest n-gram matched by "ngram".
        lookahead_window: W, Jacobi guesses per step for "lookahead".
        lookahead_pool: n-grams kept per first token for "lookahead".
    """

    method: Literal["ngram", "draft", "lookahead"] = "ngram"
    num_tokens: int = 4
    draft_model: Any = None
    prompt_lookup_max: int = 3
    prompt_lookup_min: int = 1
    lookahead_window: int = 5
    lookahead_pool: int = 8

    def __post_init__(self):
        if self.method not in ("ngram", "draft", "lookahead"):
            raise ValueError(f"speculative method must be 'ngram', 'draft' or 'lookahead', got {self.method!r}")
        if self.num_tokens < 1 or self.lookahead_window < 1 or self.lookahead_pool < 1:
            raise ValueError("speculative num_tokens, lookahead_window and lookahead_pool must be >= 1")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError("need 1 <= prompt_lookup_min <= prompt_lookup_max")
        if (self.method == "draft") != (self.draft_model is not None):
            raise ValueError("a draft_model is needed by, and only by, method='draft'")

    @property
    def slots(self) -> int:
        """Cache slots a decoding sequence needs beyond its last token per step."""
        return self.num_tokens + (self.lookahead_window if self.method == "lookahead" else 0)

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

    def propose(self, seqs: list[Sequence], room: list[int]) -> list[Proposal]:
        proposals = []
        for seq, k in zip(seqs, room):
            drafts = self._lookup(seq.token_ids, k)
            proposals.append(Proposal(drafts, len(drafts)))
        return proposals

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

    def observe(self, seq: Sequence, logits: torch.Tensor, accepted: list[int]) -> None:
        pass

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        pass


class DraftProposer:
    """A smaller model proposes k tokens by decoding them, over its own pool with the target's block tables."""

    def __init__(self, draft: CausalLM, num_blocks: int, block_size: int):
        self.runner = ModelRunner(draft, num_blocks, block_size)

    def propose(self, seqs: list[Sequence], room: list[int]) -> list[Proposal]:
        out: list[tuple[list[int], list[torch.Tensor]]] = [([], []) for _ in seqs]
        # first round: catch up on what the draft has not seen (a prompt, or the last accepted tokens)
        feeds = [Feed(s.block_table, s.draft_computed, s.token_ids[s.draft_computed:], 1) for s in seqs]
        active = list(range(len(seqs)))
        for step in range(max(room, default=0)):
            logits = torch.cat(self.runner.run(feeds))  # (len(active), V)
            params = [seqs[i].params for i in active]
            processed = sampler.process(logits, params, [None] * len(active))
            tokens = sampler.sample(processed, params, [None] * len(active))
            for row, i in enumerate(active):
                seq = seqs[i]
                seq.draft_computed = seq.num_tokens + step  # everything fed so far is in the draft's pool
                out[i][0].append(int(tokens[row]))
                if not seq.params.greedy:  # q for speculative sampling; greedy verification needs none
                    out[i][1].append(processed[row].softmax(-1))
            active = [i for i in active if len(out[i][0]) < room[i]]
            feeds = [Feed(seqs[i].block_table, seqs[i].num_tokens + step, [out[i][0][-1]], 1) for i in active]
            if not active:
                break
        return [Proposal(ids, len(ids), None if seq.params.greedy or not ids else torch.stack(q))
                for seq, (ids, q) in zip(seqs, out)]

    def observe(self, seq: Sequence, logits: torch.Tensor, accepted: list[int]) -> None:
        """After verification: the draft's pool is valid only up to what the target kept."""
        seq.draft_computed = min(seq.draft_computed, seq.num_computed_tokens)

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        self.runner.copy_blocks(copies)


class LookaheadProposer:
    """Lookahead decoding: a Jacobi window of guesses refreshed in the verifying forward, and an n-gram pool.

    Per sequence (``seq.spec_state``): ``guesses`` for the W positions after the last token, and
    ``pool``, first token -> most recent n-grams (tuples of the N - 1 tokens that follow it).
    """

    def __init__(self, cfg: SpeculativeConfig):
        self.cfg = cfg

    def _state(self, seq: Sequence) -> dict:
        if seq.spec_state is None:  # first guesses: the tokens that followed the last one's earlier occurrences
            w = self.cfg.lookahead_window
            tokens = seq.token_ids
            seq.spec_state = {"guesses": (tokens[-w:] * w)[:w], "pool": {}}
        return seq.spec_state

    def propose(self, seqs: list[Sequence], room: list[int]) -> list[Proposal]:
        out = []
        for seq, k in zip(seqs, room):
            state = self._state(seq)
            grams = state["pool"].get(seq.token_ids[-1])
            cand = list(next(reversed(grams)))[:k] if grams and k > 0 else []
            guesses = state["guesses"]
            p = seq.num_tokens - 1  # position of the last token
            c, w = len(cand), len(guesses)
            # chunk order: last token, candidate, guesses; candidate and guesses both continue the last token
            mask = torch.zeros(1 + c + w, 1 + c + w, dtype=torch.bool)
            mask[:, 0] = True
            mask[1:1 + c, 1:1 + c] = torch.ones(c, c, dtype=torch.bool).tril()
            mask[1 + c:, 1 + c:] = torch.ones(w, w, dtype=torch.bool).tril()
            positions = list(range(p + 1, p + 1 + c)) + list(range(p + 1, p + 1 + w))
            out.append(Proposal(cand + guesses, c, None, positions, mask))
        return out

    def observe(self, seq: Sequence, logits: torch.Tensor, accepted: list[int]) -> None:
        """One Jacobi iteration: new guesses from the window's logits; their n-grams join the pool."""
        state = self._state(seq)
        w, n = len(state["guesses"]), self.cfg.num_tokens
        c = logits.shape[0] - 1 - w
        best = argmax(logits).tolist()
        fresh = [best[0]] + best[1 + c:]  # guess i+1 is what the model predicts after guess i: W + 1 tokens
        pool = state["pool"]
        for i in range(len(fresh) - n):
            grams = pool.setdefault(fresh[i], OrderedDict())
            grams.pop(tuple(fresh[i + 1:i + 1 + n]), None)
            grams[tuple(fresh[i + 1:i + 1 + n])] = None  # most recent last
            if len(grams) > self.cfg.lookahead_pool:
                grams.popitem(last=False)
        shifted = fresh[len(accepted):]  # the window moves past the accepted tokens
        state["guesses"] = (shifted + fresh[-1:] * w)[:w]

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        pass


def build_proposer(cfg: SpeculativeConfig, draft: CausalLM | None, num_blocks: int,
                   block_size: int) -> NgramProposer | DraftProposer | LookaheadProposer:
    if cfg.method == "draft":
        return DraftProposer(draft, num_blocks, block_size)
    return LookaheadProposer(cfg) if cfg.method == "lookahead" else NgramProposer(cfg)


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
        target = argmax(logits).tolist()
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
