"""Generation metrics as pure functions: BLEU-4 and ROUGE-1/2/L on one prediction against one reference.

Scores are on a 0-100 scale and averaged over a predict set, as LLaMA-Factory reports them, so
figures compare. Text is split into lower-cased words, and CJK text into single characters (the
role jieba plays there), so the metrics work without a tokenizer download.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["bleu4", "generation_scores", "rouge_l", "rouge_n", "words"]

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
_WORD = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens; each CJK character is a token of its own."""
    return _WORD.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu4(hypothesis: Sequence[str], reference: Sequence[str]) -> float:
    """Sentence BLEU-4 (Papineni et al., 2002, eq. 1-2): BP * exp(sum_n 1/4 log p_n), n = 1..4.

    p_n is the clipped n-gram precision; BP = exp(1 - r/c) when the hypothesis (c tokens) is shorter
    than the reference (r tokens). An order with no match gets 1 / (2^k * count), k = 1, 2, ... for each
    such order in turn (Chen & Cherry, 2014, smoothing 3; NLTK's ``method3``, which LLaMA-Factory uses).
    """
    if not hypothesis or not reference:
        return 0.0
    log_sum, zeros = 0.0, 0
    for n in range(1, 5):
        counts = _ngrams(hypothesis, n)
        total = max(sum(counts.values()), 1)
        matched = sum((counts & _ngrams(reference, n)).values())
        if matched == 0:
            zeros += 1
            precision = 1.0 / (2**zeros * total)
        else:
            precision = matched / total
        log_sum += math.log(precision) / 4
    c, r = len(hypothesis), len(reference)
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return 100.0 * brevity * math.exp(log_sum)


def _f1(matched: int, predicted: int, relevant: int) -> float:
    if matched == 0:
        return 0.0
    precision, recall = matched / predicted, matched / relevant
    return 2 * precision * recall / (precision + recall)


def rouge_n(hypothesis: Sequence[str], reference: Sequence[str], n: int) -> float:
    """ROUGE-N F1 (Lin, 2004, eq. 1 for recall; precision likewise over the hypothesis' n-grams)."""
    predicted, relevant = _ngrams(hypothesis, n), _ngrams(reference, n)
    matched = sum((predicted & relevant).values())
    return 100.0 * _f1(matched, sum(predicted.values()), sum(relevant.values()))


def rouge_l(hypothesis: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F1 (Lin, 2004, eq. 2-4 with beta = 1): from the longest common subsequence."""
    if not hypothesis or not reference:
        return 0.0
    previous = [0] * (len(reference) + 1)
    for token in hypothesis:
        current = [0]
        for j, other in enumerate(reference):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return 100.0 * _f1(previous[-1], len(hypothesis), len(reference))


def generation_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean BLEU-4, ROUGE-1, ROUGE-2 and ROUGE-L over prediction/reference pairs."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    totals = dict.fromkeys(("bleu-4", "rouge-1", "rouge-2", "rouge-l"), 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        hyp, ref = words(prediction), words(reference)
        totals["bleu-4"] += bleu4(hyp, ref)
        totals["rouge-1"] += rouge_n(hyp, ref, 1)
        totals["rouge-2"] += rouge_n(hyp, ref, 2)
        totals["rouge-l"] += rouge_l(hyp, ref)
    return {key: value / len(predictions) for key, value in totals.items()}
