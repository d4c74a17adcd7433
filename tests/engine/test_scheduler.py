"""Scheduler with a mock model (no torch): budgets, fairness, preemption and resumption."""
import random

import pytest

from llmkit.engine.block_manager import BlockManager
from llmkit.engine.scheduler import Scheduler
from llmkit.engine.sequence import Request, Sequence
from llmkit.generate import SamplingParams


def mock_next(tokens):
    """The mock model: the next token is a fixed function of the last three."""
    return (tokens[-1] * 7 + (tokens[-2] if len(tokens) > 1 else 0) * 3 + len(tokens)) % 50


def simulate(requests, num_blocks, block_size=4, max_num_seqs=8, budget=32, lookahead=0):
    """Run the scheduler to the end; (outputs, per-step records, preemptions, first-scheduled order)."""
    bm = BlockManager(num_blocks, block_size)
    sched = Scheduler(bm, max_num_seqs, budget, lookahead)
    seqs = []
    for i, (prompt, max_tokens) in enumerate(requests):
        req = Request(str(i), None, prompt, SamplingParams(max_tokens=max_tokens), max_tokens)
        seq = Sequence(req, 0, prompt)
        req.seqs.append(seq)
        seqs.append(seq)
        sched.add(seq)
    steps, preempted, started = [], 0, []
    while sched.has_unfinished():
        plan = sched.schedule()
        preempted += len(plan.preempted)
        assert plan.scheduled, "a step with nothing to run while requests wait: stuck"
        steps.append(plan)
        for seq, n in plan.scheduled:
            if seq.request.request_id not in started:
                started.append(seq.request.request_id)
            assert seq.num_computed_tokens + n <= seq.num_tokens
            assert len(seq.block_table) * block_size >= seq.num_computed_tokens + n
            seq.num_computed_tokens += n
            if seq.num_computed_tokens == seq.num_tokens:
                seq.token_ids.append(mock_next(seq.token_ids))
                if seq.num_output_tokens >= seq.request.max_tokens:
                    sched.finish(seq)
        assert len(steps) < 5000
    assert bm.num_free_blocks == num_blocks
    return [s.output_token_ids for s in seqs], steps, preempted, started


def reference(prompt, max_tokens):
    tokens = list(prompt)
    for _ in range(max_tokens):
        tokens.append(mock_next(tokens))
    return tokens[len(prompt):]


def workload(n=24, seed=0):
    rng = random.Random(seed)
    return [([rng.randrange(50) for _ in range(rng.randint(1, 60))], rng.randint(1, 30)) for _ in range(n)]


@pytest.mark.parametrize("budget,lookahead", [(32, 0), (7, 0), (32, 3)])
def test_budget_and_seat_limits_hold(budget, lookahead):
    reqs = workload()
    outs, steps, _, _ = simulate(reqs, num_blocks=200, budget=budget, lookahead=lookahead)
    for plan in steps:
        extra = sum(lookahead for s, n in plan.scheduled if n == 1 and s.num_computed_tokens == s.num_tokens - 1)
        assert plan.num_tokens <= budget
        assert plan.num_tokens + extra <= budget + lookahead  # reserved draft slots fit the budget too
        assert len(plan.scheduled) <= 8
        kinds = [n == 1 for _, n in plan.scheduled]
        assert kinds == sorted(kinds, reverse=True)  # decodes first
    assert outs == [reference(p, m) for p, m in reqs]


def test_long_prompts_are_chunked_and_mixed_with_decodes():
    reqs = [([1] * 5, 40)] + [([2] * 90, 3)]
    _, steps, _, _ = simulate(reqs, num_blocks=100, budget=16)
    mixed = [p for p in steps if any(n == 1 for _, n in p.scheduled) and any(n > 1 for _, n in p.scheduled)]
    assert mixed, "the 90-token prompt never shared a step with the other request's decodes"
    assert max(n for p in steps for _, n in p.scheduled) <= 16


def test_first_come_first_served_and_no_starvation():
    reqs = [([3] * 60, 20)] + [([4] * 2, 2)] * 30  # a big request first, then many small ones
    outs, steps, _, started = simulate(reqs, num_blocks=30, max_num_seqs=4, budget=64)
    assert started == [str(i) for i in range(len(reqs))]  # admitted in arrival order
    assert all(len(o) == m for o, (_, m) in zip(outs, reqs))  # everyone finished


def test_preempted_requests_resume_and_finish_with_the_same_output():
    reqs = workload(16, seed=3)
    outs, _, preempted, _ = simulate(reqs, num_blocks=40, max_num_seqs=16, budget=64)
    assert preempted > 0
    assert outs == [reference(p, m) for p, m in reqs]
