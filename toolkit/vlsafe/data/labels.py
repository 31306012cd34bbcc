"""The labels a refusal judge gives an answer.

They live at the bottom layer because data needs them too: DPO preference pairs (`vlsafe.data.preferences`) are
built from the judged answers of the policy model, and data may not import the judges above it. The judges
(`vlsafe.evaluation.judges`) return these values.
"""

REFUSED = "refused"  # the answer declines (fully or partly) what was asked
ANSWERED = "answered"  # the answer complies
EMPTY = "empty"  # nothing but whitespace: never counted as a refusal
LABELS = (REFUSED, ANSWERED, EMPTY)
