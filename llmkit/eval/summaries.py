"""A small built-in summarisation set, and ROUGE of `llmkit.longdoc.summarize` on it.

Seven (document, reference summary) pairs. The documents are chapters of
the public-domain novels llmkit's corpora already fetch (``austen``,
``moby-dick``; :func:`llmkit.data.corpora.load_corpus`), named by corpus,
title and section, so no text is copied into the package. The reference
summaries are hand-written for llmkit (December 2026) from those chapters:
each is three to four plain sentences of who does what, in the order the
chapter tells it, with the characters' names as the novel spells them -- the
style of a study-guide chapter summary, the kind of output map-reduce
summarisation aims at. They are short on purpose (40-70 words), so ROUGE
recall rewards covering the chapter's events rather than its length.

Chapters run 800-2,200 words (1,000-3,000 tokens); with ``chunk_tokens=512``
each is split into two to six chunks, so every method has to combine pieces.
The numbers measure the summarisation pipeline with a given model; with a
135M-parameter model expect ROUGE-1 F around 0.2-0.3, not the 0.4+ of large
models on news benchmarks.
"""
from __future__ import annotations

from dataclasses import dataclass

from llmkit.eval.results import Report, mean_stderr
from llmkit.eval.rouge import rouge

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@dataclass(frozen=True)
class SummaryPair:
    corpus: str
    title: str
    section: str
    reference: str


PAIRS = (
    SummaryPair("austen", "Pride and Prejudice", "CHAPTER 1",
                "Mrs. Bennet tells her husband that Netherfield Park has been let to Mr. Bingley, a rich young single "
                "man, and hopes he will marry one of their five daughters. She begs Mr. Bennet to visit him so that "
                "the girls can be introduced. Mr. Bennet teases her and pretends he will not go, praising only "
                "Lizzy. Mrs. Bennet complains of her nerves."),
    SummaryPair("austen", "Pride and Prejudice", "CHAPTER 2",
                "Mr. Bennet visits Mr. Bingley but keeps it secret from his wife. While Elizabeth trims a hat and "
                "Kitty coughs, Mrs. Bennet says they will never know Mr. Bingley and complains about Mrs. Long. Mr. "
                "Bennet then reveals that he has already called on Bingley, and the family is delighted and "
                "wonders when Bingley will return the visit and dine with them."),
    SummaryPair("austen", "Pride and Prejudice", "CHAPTER 3",
                "Mr. Bingley returns Mr. Bennet's visit and then comes to the assembly ball with his sisters, Mr. "
                "Hurst and his friend Mr. Darcy. Bingley is lively and dances twice with Jane. Darcy is thought "
                "proud and disagreeable; he refuses to dance and says Elizabeth is tolerable but not handsome enough "
                "to tempt him. Elizabeth laughs about it with her friends, and Mrs. Bennet reports the ball to her "
                "husband."),
    SummaryPair("austen", "Sense and Sensibility", "CHAPTER 1",
                "The Dashwood family owns the Norland estate in Sussex. When old Mr. Dashwood dies, the estate goes "
                "to his nephew Henry Dashwood but is secured for Henry's son John and grandson, leaving little for "
                "Henry's wife and three daughters, Elinor, Marianne and Margaret. Henry dies soon after and asks John "
                "to provide for them. John promises and thinks of giving his sisters a thousand pounds each. His "
                "wife, Mrs. John Dashwood, arrives at Norland and takes over the house."),
    SummaryPair("austen", "Sense and Sensibility", "CHAPTER 2",
                "Mrs. John Dashwood becomes mistress of Norland and Mrs. Dashwood and her daughters become her "
                "guests. Fanny persuades her husband John that giving his half-sisters three thousand pounds would "
                "rob their own son. Step by step she talks him down to an annuity, then to occasional presents, and "
                "finally to nothing more than helping them move and sending them some fish and game."),
    SummaryPair("moby-dick", "Moby-Dick", "CHAPTER 1. Loomings.",
                "Ishmael, the narrator, explains that whenever he feels gloomy he goes to sea. He describes how "
                "crowds in the city of the Manhattoes are drawn to the water and how all people are drawn to it. He goes as a common "
                "sailor rather than a passenger or officer, because sailors are paid. This time he decides to go on "
                "a whaling voyage, drawn by the idea of the great whale."),
    SummaryPair("moby-dick", "Moby-Dick", "CHAPTER 2. The Carpet-Bag.",
                "Ishmael packs his carpet-bag and leaves for Cape Horn and the Pacific, travelling to New Bedford to "
                "catch a ship to Nantucket. He arrives on a cold December Saturday night and has missed the boat, so "
                "he must find a cheap place to stay. Walking the dark streets with little money, he stumbles into a "
                "Black church and finally finds the Spouter-Inn, kept by Peter Coffin."),
)


def load_pairs() -> list[tuple[str, str]]:
    """The (document text, reference summary) pairs, the documents read from the cached corpora."""
    from llmkit.data.corpora import load_corpus

    docs = {}
    for corpus in {p.corpus for p in PAIRS}:
        docs.update({(corpus, d.title, d.section): d.text for d in load_corpus(corpus)})
    missing = [p for p in PAIRS if (p.corpus, p.title, p.section) not in docs]
    if missing:
        raise ValueError(f"the {missing[0].corpus} corpus has no {missing[0].title!r} {missing[0].section!r}")
    return [(docs[p.corpus, p.title, p.section], p.reference) for p in PAIRS]


def rouge_report(task: str, model: str, predictions: list[str], references: list[str],
                 rouge_types: tuple[str, ...] = ROUGE_TYPES, use_stemmer: bool = False,
                 settings: dict | None = None) -> Report:
    """Mean ROUGE F-measure of each type (with its standard error over pairs) as a :class:`Report`."""
    scores = rouge(predictions, references, rouge_types=rouge_types, use_stemmer=use_stemmer)
    metrics = {}
    for t in rouge_types:
        f = [s[t][2] for s in scores]
        metrics[t] = (sum(f) / len(f), mean_stderr(f))
    return Report(task, model, metrics, settings=dict(settings or {}, rouge_types=list(rouge_types), use_stemmer=use_stemmer),
                  extras=dict(pairs=len(scores)))
