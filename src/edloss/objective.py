"""The ranking objective, now ``edloss.objectives.ranking`` (its penalties in ``edloss.penalties``);
this module keeps every name it had importable from here."""

from edloss.features import label_features  # noqa: F401 (re-exported)
from edloss.lossnet import LossNetConfig, base_penalty, forward_corrected_nll, population_forward  # noqa: F401 (re-exported)
from edloss.objectives.ranking import (  # noqa: F401 (re-exported)
    KINDS,
    POPULATION_CHUNK,
    SEVERITIES,
    TERMS,
    ObjectiveConfig,
    RankingBatch,
    _calibration,
    _consistency,
    _expectation_severity,
    _item_losses,
    _orient,
    _per_sample_severity,
    evaluate,
    evaluate_population,
    heldout_batches,
    make_batch,
    noisy_label_distribution,
    sample_batches,
)
from edloss.penalties import (  # noqa: F401 (re-exported)
    Penalty,
    anchor_gradient_norm,
    ce_anchor_norm,
    cross_entropy_penalty,
    forward_corrected_penalty,
    mae_penalty,
    poly1_penalty,
    population_penalty,
)
from edloss.synthetic import ExpectationConfig, MixtureConfig, sample_class_count, sample_expectation, sample_mixture  # noqa: F401 (re-exported)
