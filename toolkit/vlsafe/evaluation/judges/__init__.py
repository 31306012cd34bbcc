"""Judges that label a model's answers: `keyword` (refusal phrases), `model` (a local judge VLM) and
`api` (an OpenAI-compatible endpoint). See keyword.py for the keyword judge's known weakness."""

from vlsafe.evaluation.judges.keyword import (
    ANSWERED,
    EMPTY,
    REFUSAL_PHRASES,
    REFUSED,
    is_refusal,
    keyword_label,
)
from vlsafe.evaluation.judges.verdicts import PreferenceItem, SafetyItem, Verdict, cohen_kappa

__all__ = [
    "ANSWERED",
    "EMPTY",
    "REFUSAL_PHRASES",
    "REFUSED",
    "PreferenceItem",
    "SafetyItem",
    "Verdict",
    "cohen_kappa",
    "is_refusal",
    "keyword_label",
]
