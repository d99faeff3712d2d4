"""Evaluate stage: how good is a model or checkpoint. Loss and perplexity, BLEU/ROUGE of generated
answers, multiple-choice accuracy; scored by Ray Data actors on the cluster's spare CPUs or GPUs."""

from .metrics import bleu4, generation_scores, rouge_l, rouge_n, words
from .run import (
    BUILTIN_CHOICE_SETS,
    EvalReport,
    EvalTarget,
    eval_target,
    format_report,
    read_choice_file,
    run_evaluation,
)

__all__ = [
    "BUILTIN_CHOICE_SETS",
    "EvalReport",
    "EvalTarget",
    "bleu4",
    "eval_target",
    "format_report",
    "generation_scores",
    "read_choice_file",
    "rouge_l",
    "rouge_n",
    "run_evaluation",
    "words",
]
