"""``llmkit pull NAME``: fetch a registry-shipped model into the cache and print its path."""
from __future__ import annotations

from dataclasses import dataclass, field

POSITIONALS = {"name": dict(nargs="?", help="model name, e.g. smollm2-135m-instruct")}


@dataclass
class Args:
    name: str = field(default="smollm2-135m-instruct", metadata={"help": "model to fetch"})
    force: bool = field(default=False, metadata={"help": "download again even if cached"})


def run(args: Args) -> int:
    from llmkit.fetch import FetchError
    from llmkit.io.pull import pull

    try:
        print(pull(args.name, force=args.force))
    except FetchError as e:
        raise RuntimeError(str(e)) from None
    return 0
