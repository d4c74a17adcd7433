"""Reading the user's own text: ``--data PATH`` for offline machines and private corpora.

Accepted inputs, chosen by what ``path`` is:

* a folder: every ``*.txt`` below it (sorted), one document per file;
* ``*.txt``: one document;
* ``*.jsonl``: one document per line, text in ``field`` (default ``"text"``),
  title in ``"title"`` when present;
* ``*.parquet``: one document per row of column ``field``. Needs ``pyarrow``,
  an optional dependency, imported only here.

Every text goes through :func:`~llmkit.data.text.normalize`; empty documents
are dropped.
"""
from __future__ import annotations

import json
from pathlib import Path

from llmkit.data.document import Document
from llmkit.data.text import decode, normalize


def load_local(path: str | Path, field: str = "text") -> list[Document]:
    """Load documents from a text file, a folder of them, a JSON-lines or a Parquet file.

    Args:
        path: a ``.txt``/``.jsonl``/``.parquet`` file or a folder of ``.txt`` files.
        field: the text field (JSON lines) or column (Parquet).

    Returns:
        Documents with ``source`` set to ``path``.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise ValueError(f"{path} holds no .txt files")
        items = [(str(f.relative_to(path).with_suffix("")), decode(f.read_bytes())) for f in files]
    elif path.suffix == ".txt":
        items = [(path.stem, decode(path.read_bytes()))]
    elif path.suffix == ".jsonl":
        items = _read_jsonl(path, field)
    elif path.suffix == ".parquet":
        items = _read_parquet(path, field)
    else:
        raise ValueError(f"cannot read {path}: expected a folder, .txt, .jsonl or .parquet")
    docs = [Document(title, normalize(text), source=str(path)) for title, text in items]
    return [d for d in docs if d.text]


def _read_jsonl(path: Path, field: str) -> list[tuple[str, str]]:
    items = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if field not in record:
                raise ValueError(f"{path}:{lineno} has no field {field!r} (fields: {sorted(record)})")
            items.append((str(record.get("title", f"{path.stem}:{lineno}")), str(record[field])))
    return items


def _read_parquet(path: Path, field: str) -> list[tuple[str, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow (or convert it to .jsonl)") from e
    column = pq.read_table(path, columns=[field]).column(field).to_pylist()
    return [(f"{path.stem}:{i}", str(text)) for i, text in enumerate(column) if text is not None]
