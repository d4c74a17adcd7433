"""Mixing several corpora into one training set by character weights.

Weights are shares of *characters* (a proxy for tokens that needs no
tokenizer), not of documents: 14k one-line fortunes and 37 plays should not
count alike. Each source is drawn whole-document, without replacement, in a
seeded random order; a source whose share exceeds its size is repeated (a new
shuffle per pass), which is how small high-quality sources are up-sampled in
practice (e.g. the "epochs" column of the Pile, Gao et al. 2020). A source
stops at the document that reaches its budget, so shares are exact only up to
one document's length. The result is shuffled, so shards interleave sources.
"""
from __future__ import annotations

import numpy as np

from llmkit.data.document import Document


def mix(sources: dict[str, list[Document]], weights: dict[str, float], seed: int = 0,
        total_chars: int | None = None) -> list[Document]:
    """Sample a mixture where source ``s`` holds ``weights[s] / sum(weights)`` of the characters.

    Args:
        sources: documents per source name.
        weights: non-negative weight per source name (same keys as ``sources``).
        seed: fixes the draw and the final order.
        total_chars: size of the mixture; default the sources' combined size.

    Returns:
        The mixture's documents, shuffled. Same inputs and seed, same list.
    """
    if set(weights) != set(sources):
        raise ValueError(f"weights name {sorted(weights)} but sources are {sorted(sources)}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    sizes = {name: sum(len(d.text) for d in docs) for name, docs in sources.items()}
    total = sum(sizes.values()) if total_chars is None else total_chars
    rng = np.random.default_rng(seed)
    out: list[Document] = []
    for name in sorted(sources):  # sorted: the draw must not depend on dict order
        budget = total * weights[name] / sum(weights.values())
        if budget > 0 and sizes[name] == 0:
            raise ValueError(f"source {name!r} has weight {weights[name]} but no text")
        taken = 0
        while taken < budget:
            for i in rng.permutation(len(sources[name])):
                out.append(sources[name][i])
                taken += len(sources[name][i].text)
                if taken >= budget:
                    break
    return [out[i] for i in rng.permutation(len(out))]
