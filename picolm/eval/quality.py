"""Generation quality without references: Self-BLEU (Zhu et al. 2018, Texygen) and distinct-n (Li et al. 2016).

Both work on lower-cased whitespace words. Self-BLEU scores each sample with BLEU-4 against all the other
samples as references and averages: high means the samples repeat each other. Distinct-n is the share of
n-grams over all samples that are unique: low means repetition.
"""

from __future__ import annotations

import math
from collections import Counter


def words(text: str) -> list[str]:
    return text.lower().split()


def ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(hypothesis: list[str], references: list[list[str]], max_n: int = 4) -> float:
    """BLEU of one hypothesis against several references: clipped n-gram precisions up to max_n, their geometric
    mean with add-one smoothing for n > 1 (Lin and Och 2004), and the brevity penalty against the reference
    closest in length."""
    if not hypothesis or not references:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        counts = ngrams(hypothesis, n)
        most = Counter()
        for reference in references:
            most |= ngrams(reference, n)
        matched = sum(min(count, most[gram]) for gram, count in counts.items())
        total = max(len(hypothesis) - n + 1, 0)
        if n == 1 and matched == 0:
            return 0.0
        smooth = 0 if n == 1 else 1
        log_precision += math.log((matched + smooth) / (total + smooth)) if total + smooth else 0.0
    closest = min((len(r) for r in references), key=lambda length: (abs(length - len(hypothesis)), length))
    brevity = 1.0 if len(hypothesis) > closest else math.exp(1 - closest / len(hypothesis))
    return brevity * math.exp(log_precision / max_n)


def self_bleu(texts: list[str], max_n: int = 4) -> float:
    """Mean BLEU of each text against all the others."""
    tokenized = [words(t) for t in texts]
    if len(tokenized) < 2:
        return 0.0
    scores = [sentence_bleu(h, tokenized[:i] + tokenized[i + 1:], max_n) for i, h in enumerate(tokenized)]
    return sum(scores) / len(scores)


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams / all n-grams over all texts."""
    grams = Counter()
    for text in texts:
        grams.update(ngrams(words(text), n))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0
