"""Mix safety data with ordinary instruction data, as the VLGuard post-hoc recipe does."""

from __future__ import annotations

import logging

from datasets import Dataset, concatenate_datasets

from vlsafe.errors import DataError

logger = logging.getLogger(__name__)


def mix_with_helpfulness(
    safety: Dataset, helpful: Dataset | None, helpful_samples: int | None, *, seed: int
) -> Dataset:
    """Safety data plus `helpful_samples` conversations drawn at random (seeded) from `helpful`, shuffled.

    The VLGuard paper's post-hoc recipe is VLGuard train + 5,000 LLaVA instruction samples.
    `helpful_samples=None` takes all of `helpful`; asking for more than it has is an error, not a silent cap.
    """
    if helpful is None or helpful_samples == 0:
        return safety.shuffle(seed=seed)
    if helpful_samples is not None:
        if helpful_samples > len(helpful):
            raise DataError(
                f"Asked for {helpful_samples} helpfulness samples but the helpfulness data has only {len(helpful)}; "
                "lower helpful_samples or point at a larger dataset."
            )
        helpful = helpful.shuffle(seed=seed).select(range(helpful_samples))
    logger.info("Mixture: %d safety + %d helpfulness samples", len(safety), len(helpful))
    return concatenate_datasets([safety, helpful.cast(safety.features)]).shuffle(seed=seed)
