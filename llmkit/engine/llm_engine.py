"""`LLMEngine`: continuous batching over a paged KV cache; ``step()`` = schedule -> run the model -> postprocess.

Requests arrive at any time (:meth:`LLMEngine.add_request`) and leave as soon
as they finish or are aborted, freeing their blocks at once; every step
batches whatever is running, prompt chunks and decodes together. The parts:

- :mod:`~llmkit.engine.scheduler` picks the step's sequences and token counts
  (chunked prefill, preemption) over :mod:`~llmkit.engine.block_manager`'s
  blocks (prefix caching, copy-on-write);
- :mod:`~llmkit.engine.model_runner` runs the model once over the flattened step;
- :mod:`~llmkit.engine.sampler` chooses every row's token in one batched pass;
- :mod:`~llmkit.engine.speculative` proposes tokens that one forward verifies;
- here, postprocessing: tokens are appended, text is detokenized incrementally
  with stop strings (the same rules as :func:`llmkit.generate.generate`), and
  finished sequences release their blocks.

A request with ``n > 1`` prefills once: the first token is drawn ``n`` times
from the same logits and the extra continuations fork the prompt's blocks.

Multi-LoRA (:meth:`LLMEngine.add_lora`): LoRA adapters are loaded into slots of
one base model (:mod:`llmkit.peft.multi_lora`); a request names its adapter
(``lora_name``), and requests under different adapters and the base share
every step. Prefix-cache chains start from the adapter's identity, so blocks
are shared only under the same adapter. Speculative decoding works unchanged:
proposals (n-gram, or a draft model running without adapters) are verified
by the target under the request's adapter, so outputs stay exact.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence as Seq
from dataclasses import dataclass
from typing import Any

import torch

from llmkit.engine import sampler
from llmkit.engine.block_manager import BlockManager
from llmkit.engine.memory import default_memory, parse_memory
from llmkit.engine.model_runner import BATCH_BUCKETS, Feed, ModelRunner, block_bytes
from llmkit.engine.outputs import CompletionOutput, RequestOutput
from llmkit.engine.scheduler import Scheduler
from llmkit.engine.sequence import Request, Sequence
from llmkit.engine.speculative import Proposal, SpeculativeConfig, build_proposer, verify
from llmkit.generate.prompts import encode_prompts
from llmkit.generate.sampling import SamplingParams
from llmkit.generate.stop import StopStrings
from llmkit.generate.text import RowText
from llmkit.model import CausalLM
from llmkit.peft.multi_lora import LoRAManager
from llmkit.tokenizer import Tokenizer


# (output token ids so far, (V,) processed logits) -> logits, e.g. a grammar's token mask (-inf = forbidden)
LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]


def _as_matrix(rows: list[torch.Tensor]) -> torch.Tensor:
    """(R, V) of R (V,) rows: a view when they are consecutive rows of one contiguous tensor (what the
    runner returns for a step's decode rows), else a copy; at 64 rows of a 49k vocabulary the copy took
    1-2 ms of a decode step."""
    first, v = rows[0], rows[0].shape[0]
    storage = first.untyped_storage().data_ptr()
    if first.stride() == (1,) and all(
            r.stride() == (1,) and r.untyped_storage().data_ptr() == storage
            and r.storage_offset() == first.storage_offset() + i * v for i, r in enumerate(rows)):
        return first.as_strided((len(rows), v), (v, 1))
    return torch.stack(rows)


@dataclass
class _Track:
    """Per request: its record, each continuation's text, its random source, and its logits processor."""

    request: Request
    texts: list[RowText]
    generator: torch.Generator | None
    logits_processor: LogitsProcessor | None = None


class LLMEngine:
    """The engine over one model.

    Args:
        model: a :class:`CausalLM` in eval mode (LoRA and quantized linears inside are fine).
        tokenizer: its tokenizer.
        max_num_seqs: sequences decoded together at most.
        max_num_batched_tokens: tokens per step at most (prompt chunks are cut to fit).
        block_size: token slots per KV block.
        kv_cache_memory: bytes (or "2GiB") for the pool; None = a share of free memory (see
            :mod:`llmkit.engine.memory`), never more than ``max_num_seqs`` full-context sequences need.
        kv_cache_dtype: None/"auto" (the model's dtype), "int8" or "fp8": a quantized pool
            (:mod:`llmkit.quant.kv`), about twice the blocks of bf16 in the same memory (a draft model's
            pool stays unquantized).
        enable_prefix_caching: reuse the computed blocks of common prompt prefixes.
        speculative: speculative decoding (:class:`SpeculativeConfig`); None = off.
        compile: run decode-only steps through ``torch.compile`` (one compile per batch bucket).
        compile_max_batch: compile only decode steps of at most this many sequences; larger ones run eager.
        lora_adapters: {name: directory} of peft-format LoRA adapters to serve (see :meth:`add_lora`).
        prepack_weights: run eager steps on oneDNN-prepacked copies of the linear weights
            (:mod:`llmkit.generate.packed`: 1.1x the fp32 throughput on a 2-core Zen 4, for a second copy
            of the weights); None = on the CPU.
    """

    def __init__(self, model: CausalLM, tokenizer: Tokenizer, *, max_num_seqs: int = 64,
                 max_num_batched_tokens: int = 2048, block_size: int = 16, kv_cache_memory: int | str | None = None,
                 kv_cache_dtype: str | None = None,
                 enable_prefix_caching: bool = True, speculative: SpeculativeConfig | None = None,
                 compile: bool = False, lora_adapters: Mapping[str, str | os.PathLike] | None = None,
                 compile_max_batch: int = BATCH_BUCKETS[-1], prepack_weights: bool | None = None):
        cfg = getattr(model, "cfg", None)
        if not isinstance(model, CausalLM):
            raise TypeError(f"the engine runs a CausalLM, got {type(model).__name__} "
                            "(prefix/prompt-tuned models decode with llmkit.generate)")
        if cfg.sliding_window is not None:
            raise ValueError("the engine does not implement sliding-window attention; decode with llmkit.generate")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_seq_len = cfg.max_seq_len
        self.lookahead = speculative.slots if speculative else 0
        per_block = block_bytes(model, block_size, model.dtype, kv_cache_dtype)
        draft = speculative.load_draft(model) if speculative else None
        if draft is not None:
            per_block += block_bytes(draft, block_size, draft.dtype)
        memory = parse_memory(kv_cache_memory) if kv_cache_memory is not None else default_memory(model.device)
        blocks_per_seq = -(-(self.max_seq_len + self.lookahead) // block_size)
        num_blocks = min(memory // per_block, max_num_seqs * blocks_per_seq)
        if num_blocks < 1:
            raise ValueError(f"kv_cache_memory={kv_cache_memory!r} is smaller than one KV block ({per_block} bytes)")
        self.runner = ModelRunner(model, num_blocks, block_size, compile=compile, kv_cache_dtype=kv_cache_dtype,
                                  compile_max_batch=compile_max_batch, prepack=prepack_weights)
        self.blocks = BlockManager(num_blocks, block_size, enable_prefix_caching)
        self.scheduler = Scheduler(self.blocks, max_num_seqs, max_num_batched_tokens, self.lookahead)
        self.proposer = build_proposer(speculative, draft, num_blocks, block_size) if speculative else None
        self.tracks: dict[str, _Track] = {}
        eos = tokenizer.eos_id
        self.eos_ids = frozenset() if eos is None else frozenset({eos})
        self.num_preemptions = 0
        self.loras = LoRAManager(model, self.runner.lora_mapping)
        for name, directory in (lora_adapters or {}).items():
            self.add_lora(name, directory)

    def add_lora(self, name: str, directory: str | os.PathLike) -> None:
        """Serve the peft-format LoRA adapter in ``directory`` as ``name`` (requests pick it by ``lora_name``).

        Raises:
            ValueError: naming the adapter, for a name in use, unreadable files, an unsupported adapter,
                or weights that do not fit this model.
        """
        self.loras.add(name, directory)
        self.runner.steps.clear()  # compiled steps traced the model before its layers were wrapped

    def warmup(self) -> None:
        """Compile the decode steps now rather than on first use (a server does this while it reports loading)."""
        self.runner.warmup()

    # ----- requests -----
    def encode(self, prompt: Any) -> list[int]:
        """Token ids of a prompt: text, a conversation (rendered with the chat template) or token ids."""
        if isinstance(prompt, Seq) and not isinstance(prompt, str) and prompt and all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            if max(prompt) >= self.model.cfg.vocab_size or min(prompt) < 0:
                raise ValueError(f"prompt token ids must be in [0, {self.model.cfg.vocab_size})")
            return list(prompt)
        if not isinstance(prompt, str) and not (isinstance(prompt, Seq) and prompt
                                                and all(isinstance(m, Mapping) for m in prompt)):
            raise ValueError("a prompt is a string, a list of token ids or a list of {'role', 'content'} messages")
        rows, _ = encode_prompts(self.tokenizer, prompt)
        return rows[0]

    def check_request(self, prompt: Any, params: SamplingParams | None = None,
                      lora_name: str | None = None) -> tuple[list[int], SamplingParams, int]:
        """Validate a request without touching the engine's state.

        Returns:
            (prompt token ids, validated params, max tokens clipped to the context).
        Raises:
            ValueError: bad parameters, an unreadable or empty prompt, a prompt as long as the
                context, a sequence the KV pool cannot hold, or an unknown LoRA adapter.
        """
        if lora_name is not None and lora_name not in self.loras.slots:
            raise ValueError(f"unknown LoRA adapter {lora_name!r} (loaded: {sorted(self.loras.slots) or 'none'})")
        params = (params or SamplingParams()).validate()
        ids = self.encode(prompt)
        if len(ids) >= self.max_seq_len:
            raise ValueError(f"the prompt has {len(ids)} tokens but the model's context is {self.max_seq_len}: "
                             "shorten the prompt")
        max_tokens = min(params.max_tokens, self.max_seq_len - len(ids))
        need = self.blocks.blocks_for(len(ids) + max_tokens + self.lookahead)
        if need > self.blocks.num_blocks:
            raise ValueError(f"the KV pool ({self.blocks.num_blocks} blocks of {self.blocks.block_size} tokens) "
                             f"cannot hold one sequence of {len(ids) + max_tokens} tokens: raise kv_cache_memory "
                             "or lower max_tokens")
        return ids, params, max_tokens

    def add_request(self, request_id: str, prompt: Any, params: SamplingParams | None = None,
                    arrival_time: float | None = None, logits_processor: LogitsProcessor | None = None,
                    lora_name: str | None = None) -> None:
        """Queue a request (see :meth:`check_request` for what is refused, with a ValueError).

        ``logits_processor`` (optional) edits each of its continuations' processed logits before a token is
        chosen (constrained decoding); such a request is not decoded speculatively. ``lora_name`` runs it
        under that adapter (see :meth:`add_lora`); None = the base model.
        """
        if request_id in self.tracks:
            raise ValueError(f"request id {request_id!r} is already in use")
        ids, params, max_tokens = self.check_request(prompt, params, lora_name)
        request = Request(request_id, prompt, ids, params, max_tokens, arrival_time or time.time(), lora_name)
        stops = StopStrings(params.stop)
        texts = [RowText(self.tokenizer, stops) for _ in range(params.n)]
        generator = None
        if params.seed is not None:
            generator = torch.Generator(self.model.device).manual_seed(params.seed)
        self.tracks[request_id] = _Track(request, texts, generator, logits_processor)
        seq = Sequence(request, 0, ids)
        request.seqs.append(seq)
        self.scheduler.add(seq)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its blocks; its final output (finish reason "abort"), or None if unknown."""
        track = self.tracks.pop(request_id, None)
        if track is None:
            return None
        for seq in track.request.seqs:
            if not seq.finished:
                self.scheduler.finish(seq)
                seq.finish_reason = "abort"
        track.request.metrics.finished_time = time.time()
        return self._output(track)

    def has_unfinished_requests(self) -> bool:
        return bool(self.tracks)

    def stats(self) -> dict[str, float]:
        blocks = self.blocks
        return {"num_running": len(self.scheduler.running), "num_waiting": len(self.scheduler.waiting),
                "num_free_blocks": blocks.num_free_blocks, "num_total_blocks": blocks.num_blocks,
                "kv_cache_usage": 1 - blocks.num_free_blocks / blocks.num_blocks,
                "prefix_cache_hit_rate": blocks.hit_rate, "prefix_cache_queries": blocks.cache_queries,
                "prefix_cache_hits": blocks.cache_hits, "num_preemptions": self.num_preemptions}

    # ----- the step -----
    def step(self) -> list[RequestOutput]:
        """Run one step; the outputs of the requests that made progress (cumulative), finished ones included."""
        plan = self.scheduler.schedule()
        self.num_preemptions += len(plan.preempted)
        if not plan.scheduled:
            return []
        self.runner.copy_blocks(plan.copies)
        if self.proposer is not None:
            self.proposer.copy_blocks(plan.copies)
        now = time.time()
        for seq, _ in plan.scheduled:
            if seq.request.metrics.first_scheduled_time is None:
                seq.request.metrics.first_scheduled_time = now
        proposals = self._propose([seq for seq, n in plan.scheduled if n == seq.num_uncomputed == 1])
        feeds = []
        for seq, n in plan.scheduled:
            start = seq.num_computed_tokens
            known = seq.token_ids[start:start + n]
            wanted = 1 if start + n == seq.num_tokens else 0
            prop = proposals.get(seq.seq_id)
            lora = self.loras.slot(seq.lora_name)
            if prop is None:
                feeds.append(Feed(seq.block_table, start, known, wanted, lora=lora))
            else:  # the last token, then the proposal's tokens, all scored
                positions = None if prop.positions is None else [start] + prop.positions
                feeds.append(Feed(seq.block_table, start, known + prop.tokens, 1 + len(prop.tokens), positions,
                                  prop.mask, lora))
        logits = self.runner.run(feeds)
        for seq, n in plan.scheduled:
            seq.num_computed_tokens += n
        progressed = self._postprocess([(seq, lg) for (seq, _), lg in zip(plan.scheduled, logits)], proposals)
        return [self._output(self.tracks.pop(rid) if self.tracks[rid].request.finished else self.tracks[rid])
                for rid in progressed]

    def _propose(self, seqs: list[Sequence]) -> dict[int, Proposal]:
        """Speculative proposals for the decoding sequences that take them."""
        if self.proposer is None:
            return {}
        eligible = [s for s in seqs if not s.params.penalised and len(s.request.seqs) == s.params.n
                    and self.tracks[s.request.request_id].logits_processor is None
                    and s.num_tokens + self.lookahead <= self.max_seq_len]  # proposals stay inside the context
        if not eligible:
            return {}
        room = [min(self.lookahead, s.request.max_tokens - s.num_output_tokens - 1,
                    self.max_seq_len - s.num_tokens - 1) for s in eligible]
        return {s.seq_id: p for s, p, r in zip(eligible, self.proposer.propose(eligible, room), room)
                if r > 0 and p.tokens}

    def _postprocess(self, results: list[tuple[Sequence, torch.Tensor]], proposals: dict[int, Proposal]) -> list[str]:
        """Choose tokens for every sequence that has logits; append them; return the progressed request ids."""
        plain, spec = [], []
        for seq, lg in results:
            if lg.shape[0] == 0:
                continue
            (spec if seq.seq_id in proposals else plain).append((seq, lg))
        progressed: dict[str, None] = {}
        # plain rows: one token each, or n for a request's first token (its continuations fork here)
        rows, params, generators, owners = [], [], [], []
        for seq, lg in plain:
            copies = seq.params.n if len(seq.request.seqs) < seq.params.n else 1
            for _ in range(copies):
                rows.append(lg[-1])
                params.append(seq.params)
                generators.append(self.tracks[seq.request.request_id].generator)
                owners.append(seq)
        if rows:
            raw = _as_matrix(rows)
            processed = sampler.process(raw, params, owners)
            for r, seq in enumerate(owners):
                processor = self.tracks[seq.request.request_id].logits_processor
                if processor is not None:
                    if processed is raw:  # log-probs are read from the raw logits: keep them
                        processed = raw.clone()
                    processed[r] = processor(seq.output_token_ids, processed[r])
            tokens = sampler.sample(processed, params, generators)
            logprobs = self._logprobs(raw, tokens, params)
            i = 0
            while i < len(owners):
                seq = owners[i]
                copies = seq.params.n if len(seq.request.seqs) < seq.params.n else 1
                for j in range(1, copies):
                    self._fork(seq, j, int(tokens[i + j]), logprobs[i + j])
                self._append(seq, [int(tokens[i])], [logprobs[i]])
                progressed[seq.request.request_id] = None
                i += copies
        for seq, lg in spec:
            prop = proposals[seq.seq_id]
            drafts = prop.tokens[:prop.num_drafts]
            track = self.tracks[seq.request.request_id]
            rows = lg[:1 + len(drafts)]  # the last token's and each draft's next-token logits
            processed = sampler.process(rows, [seq.params] * rows.shape[0], [None] * rows.shape[0])
            accepted = verify(processed, drafts, seq.params.greedy, prop.q, track.generator)
            metrics = seq.request.metrics
            metrics.spec_proposed_tokens += len(drafts)
            metrics.spec_accepted_tokens += len(accepted) - 1
            metrics.spec_target_steps += 1
            seq.num_computed_tokens += len(accepted) - 1  # the accepted drafts' K/V are valid
            self.proposer.observe(seq, lg, accepted)
            chosen = torch.tensor(accepted, device=lg.device)
            logprobs = self._logprobs(rows[:len(accepted)], chosen, [seq.params] * len(accepted))
            self._append(seq, accepted, logprobs)
            progressed[seq.request.request_id] = None
        return list(progressed)

    @staticmethod
    def _logprobs(raw: torch.Tensor, tokens: torch.Tensor, params: list[SamplingParams]) -> list[dict[int, float] | None]:
        if all(p.logprobs is None for p in params):
            return [None] * len(params)
        return sampler.top_logprobs(raw, tokens, [p.logprobs or 0 for p in params])

    def _fork(self, parent: Sequence, index: int, token: int, logprobs: dict[int, float] | None) -> None:
        child = Sequence(parent.request, index, parent.token_ids)
        parent.request.seqs.append(child)
        self.blocks.fork(parent, child)
        self.scheduler.add_running(child)
        self._append(child, [token], [logprobs])

    def _append(self, seq: Sequence, tokens: list[int], logprobs: list[dict[int, float] | None]) -> None:
        """Add generated tokens one by one until one ends the sequence (the rest are dropped)."""
        track = self.tracks[seq.request.request_id]
        params, text = seq.params, track.texts[seq.index]
        metrics = seq.request.metrics
        if metrics.first_token_time is None:
            metrics.first_token_time = time.time()
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_ids)
        for token, lp in zip(tokens, logprobs):
            seq.token_ids.append(token)
            if lp is not None:
                seq.logprobs.append(lp)
            reason = None
            if token in stop_ids:
                reason = "stop"
                text.close()
            elif text.add(token):
                reason = "stop"
            elif seq.num_output_tokens >= seq.request.max_tokens:
                reason = "length"
                text.close()
            if reason:
                seq.finish_reason = reason
                self.scheduler.finish(seq)
                if seq.request.finished:
                    metrics.finished_time = time.time()
                return

    def _output(self, track: _Track) -> RequestOutput:
        request = track.request
        outputs = []
        for seq in request.seqs:
            text = track.texts[seq.index]
            shown = text.text if seq.finished else text.text[:len(text.text) - text.stops.holdback(text.text)]
            outputs.append(CompletionOutput(seq.index, shown, seq.output_token_ids, seq.finish_reason,
                                            list(seq.logprobs) if request.params.logprobs is not None else None))
        return RequestOutput(request.request_id, request.prompt, request.prompt_token_ids, outputs,
                             request.finished or all(o.finish_reason == "abort" for o in outputs), request.metrics)
