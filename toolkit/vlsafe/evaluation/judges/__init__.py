"""Judges that label a model's answers: `keyword` (vlsafe's structural refusal detector, the default), the
paper baselines `vlguard_keyword` / `xstest_strmatch` (opt-in, for paper-comparable numbers), `model` (a local
judge VLM) and `api` (an OpenAI-compatible endpoint). See keyword.py for the detector's known weaknesses."""

from vlsafe.evaluation.judges.keyword import (
    ANSWERED,
    EMPTY,
    REFUSED,
    RefusalCue,
    find_refusal,
    is_refusal,
    keyword_label,
)
from vlsafe.evaluation.judges.string_match import (
    VLGUARD_REFUSAL_PHRASES,
    XSTEST_REFUSAL_PREFIXES,
    vlguard_keyword,
    xstest_strmatch,
)
from vlsafe.evaluation.judges.verdicts import PreferenceItem, SafetyItem, Verdict, cohen_kappa

__all__ = [
    "ANSWERED",
    "EMPTY",
    "REFUSED",
    "VLGUARD_REFUSAL_PHRASES",
    "XSTEST_REFUSAL_PREFIXES",
    "PreferenceItem",
    "RefusalCue",
    "SafetyItem",
    "Verdict",
    "cohen_kappa",
    "find_refusal",
    "is_refusal",
    "keyword_label",
    "vlguard_keyword",
    "xstest_strmatch",
]
