"""``llmkit chat``: a multi-turn conversation in the terminal, through the model's chat template.

Each turn renders the whole history (system prompt, earlier turns, the new
user message) with the chat template and streams the reply. In a terminal,
Ctrl-C stops the current reply (what was shown is kept in the history) and
Ctrl-C or Ctrl-D at the prompt quits. With piped stdin every line is one
user message and only the replies are printed, one per line, so a session
can be scripted. Lines starting with ``/`` are commands: ``/reset`` forgets
the conversation, ``/system TEXT`` sets the system prompt (empty: the
template's default).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from llmkit.cli.generate import GenerationArgs

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt)"


@dataclass
class Args(GenerationArgs):
    system: str | None = field(default=None, metadata={"help": "system prompt (default: the template's own)"})


def _read(interactive: bool) -> str | None:
    """The next user line, or None at end of input (EOF, or Ctrl-C at the prompt)."""
    if not interactive:
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None
    try:
        return input(">>> ")
    except (EOFError, KeyboardInterrupt):
        print()
        return None


def _command(line: str, history: list[dict], system: str | None, interactive: bool) -> str | None:
    """Apply a /command; returns the (possibly new) system prompt."""
    name, _, rest = line.partition(" ")
    if name == "/reset":
        history.clear()
        note = "(conversation reset)"
    elif name == "/system":
        system = rest.strip() or None
        note = "(system prompt set)" if system else "(system prompt cleared)"
    else:
        note = f"unknown command {name}; {HELP}"
    print(note, file=sys.stdout if interactive else sys.stderr)
    return system


def load_for_chat(args: Args):
    """Load the model and check that it can chat (its tokenizer renders conversations)."""
    from llmkit.cli.args import UsageError
    from llmkit.cli.generate import load

    model, tokenizer = load(args)
    try:
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    except ValueError as e:
        raise UsageError(f"{args.model} cannot chat: {e}") from None
    return model, tokenizer


def run(args: Args) -> int:
    from llmkit.generate import generate

    model, tokenizer = load_for_chat(args)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.model}; Ctrl-C stops a reply, Ctrl-D quits; {HELP}")
    kwargs = args.generate_kwargs()
    history: list[dict] = []
    system = args.system
    while (line := _read(interactive)) is not None:
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            system = _command(line, history, system, interactive)
            continue
        user = {"role": "user", "content": line}
        messages = ([{"role": "system", "content": system}] if system else []) + history + [user]
        reply, interrupted = "", False
        try:
            for delta in generate(model, tokenizer, messages, stream=True, **kwargs):
                print(delta, end="", flush=True)
                reply += delta
        except KeyboardInterrupt:  # stop this reply, keep the session
            interrupted = True
        except ValueError as e:  # the conversation no longer fits the context
            print(f"error: {e}; /reset starts a new conversation", file=sys.stderr)
            continue
        print(flush=True)
        if reply or not interrupted:  # a reply stopped before its first word leaves no turn behind
            history += [user, {"role": "assistant", "content": reply}]
    return 0
