"""``llmkit bench``: load-test an OpenAI-compatible endpoint (llmperf's workload and metrics, fixed ITL).

Prints one table row per concurrency and writes ``summary.json``,
``individual_responses.json``, ``latency_percentiles.png`` and
``throughput.png`` to ``--out``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

HELP = "Load-test an OpenAI-compatible endpoint (llmperf-style): latency percentiles and throughput vs concurrency"


@dataclass
class Args:
    url: str = field(default="http://127.0.0.1:8000/v1", metadata={"help": "API base URL (ending in /v1)"})
    model: str | None = field(default=None, metadata={"help": "model name (default: the first the server lists)"})
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 64], metadata={
        "help": "comma-separated concurrent clients, one run each"})
    num_requests: int = field(default=64, metadata={"help": "requests per concurrency (a level gets at least its concurrency)"})
    input_tokens: str = field(default="550:150", metadata={"help": "prompt tokens MEAN[:STD]"})
    output_tokens: str = field(default="150:10", metadata={"help": "max_tokens MEAN[:STD]"})
    stream: bool = field(default=True, metadata={"help": "stream responses (needed for TTFT and ITL)"})
    api_key: str | None = field(default=None, metadata={"help": "sent as 'Authorization: Bearer KEY'"})
    out: str = field(default="bench_results", metadata={"help": "directory for the JSON files and PNGs"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "the served model's tokenizer (name, HF dir or .gguf) to size prompts; default: estimate"})
    ignore_eos: bool = field(default=False, metadata={"help": "ask the server to ignore EOS (exact output lengths)"})
    timeout_s: float = field(default=600, metadata={"help": "per-request timeout in seconds"})
    max_seconds: float = field(default=600, metadata={"help": "per concurrency: start no request after this"})
    seed: int = field(default=0, metadata={"help": "seed of the workload"})


def _count(name: str | None):
    if name is None:
        return None
    from llmkit.io.pull import resolve_model
    from llmkit.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(resolve_model(name))
    return lambda s: len(tok.encode(s, add_special_tokens=False))


def run(args: Args) -> int:
    from llmkit.bench import BenchConfig, run_bench
    from llmkit.bench.workload import parse_length
    from llmkit.cli.args import UsageError

    if not args.url.startswith(("http://", "https://")):
        raise UsageError(f"--url must start with http:// or https://, got {args.url!r}")
    if not args.concurrency or min(args.concurrency) < 1 or args.num_requests < 1:
        raise UsageError("--concurrency values and --num_requests must be >= 1")
    cfg = BenchConfig(args.url, args.model, tuple(args.concurrency), args.num_requests,
                      parse_length(args.input_tokens, "input_tokens"), parse_length(args.output_tokens, "output_tokens"),
                      args.stream, args.api_key, args.timeout_s, args.max_seconds, args.ignore_eos, args.seed)
    summary = run_bench(cfg, args.out, _count(args.tokenizer))
    print(f"{'conc':>5} {'req/min':>8} {'out tok/s':>10} {'p50 ttft':>9} {'p99 ttft':>9} {'p50 itl':>9} "
          f"{'p99 itl':>9} {'errors':>7}")
    for r in summary["runs"]:
        def ms(metric, q):
            v = r[metric][q]
            return "-" if v is None else f"{v * 1000:.1f}ms"
        print(f"{r['concurrency']:>5} {r['num_completed_requests_per_min']:>8.1f} "
              f"{r['mean_output_throughput_token_per_s']:>10.1f} {ms('ttft_s', 'p50'):>9} {ms('ttft_s', 'p99'):>9} "
              f"{ms('inter_token_latency_s', 'p50'):>9} {ms('inter_token_latency_s', 'p99'):>9} "
              f"{r['error_rate']:>7.1%}")
    print(f"wrote {args.out}/summary.json, individual_responses.json, latency_percentiles.png, throughput.png")
    return 0
