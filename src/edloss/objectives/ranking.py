"""The ranking-consistency objective: what makes a loss network a good loss, with no real data.

One of the two pretraining objectives (``objectives``): ``RankingObjective`` is what ``pretrain``
calls; the penalties it scores come from ``edloss.penalties``, shared with the students world.

Two readings (EDL_METHOD.md, "Measured"):

* **per-sample** (the paper read literally): over random pairs of synthetic (p, y), a more
  erroneous prediction (severity 1 - p_y, or margin, or rank) must get the larger loss. Any
  decreasing function of p_y satisfies it, so the fitness saturates at once and the losses it
  selects are degenerate; kept to reproduce that finding.
* **expectation** (the default): for a synthetic truth q, the *expected* penalty
  E_{y~q} l(p, y) must rank predictions p by their divergence from q (KL + disagreement, the
  default; KL; or total variation).
  Comparisons are made between predictions of the same q, so the objective asks for a proper
  loss (it pays to predict the truth). Cross-entropy ranks perfectly under KL, since
  E_q[-log p_y] = H(q) + KL(q || p); other severities ask for other shapes. ``kl_disagreement``
  adds eps * (1 - q.p), the chance that a class drawn from p disagrees with one drawn from q:
  it counts how often a prediction is *wrong* as well as how surprised it is, and its perfect
  ranker is Poly-1, CE + eps * (1 - p_y) (E_q Poly-1 = H(q) + eps + KL(q || p) - eps q.p).

Terms, each reported and weighted into the fitness (weights are configuration):

* ``value``: fraction of ordered pairs whose losses are in severity order (or a soft version);
* ``gradient``: the same for the norm of d(loss)/d(logits), so wrong predictions pull hardest;
* ``anchor``: -|log(grad norm at the uniform prediction / cross-entropy's)|;
* ``margin``: -mean hinge(gamma * severity gap - loss gap), loss in CE-anchored units;
* ``calibration``: -mean |c * loss gap - severity gap| / mean severity gap, with c >= 0 the
  least-squares scale: expected losses should differ *as much as* their severities do, not only
  in the same order. Ranking pins a loss down only up to monotone distortions, so the tails the
  fitness hardly sees came out arbitrary (a 2x push on hopeless predictions cost 14 CIFAR-10
  points, docs/EXPERIMENTS.md); with exact expectations (K <= max_labels, and the held-out set)
  the proper loss of a severity (CE for KL, Poly-1 for kl_disagreement) scores exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from edloss.configs import check_fields, check_range
from edloss.lossnet import LossNetConfig
from edloss.penalties import Penalty, anchor_gradient_norm, ce_anchor_norm, population_penalty
from edloss.synthetic import ExpectationConfig, MixtureConfig, sample_class_count, sample_expectation, sample_mixture

KINDS = ("expectation", "per_sample", "students")
# "students": the fitness comes from the students world (edloss.students, the config's [world]
# section); its ranking settings here only score the exported loss for the record.
SEVERITIES = {"expectation": ("kl", "tv", "kl_disagreement"), "per_sample": ("one_minus_py", "margin", "rank"),
              "students": ("kl", "tv", "kl_disagreement")}
TERMS = ("value", "gradient", "anchor", "margin", "calibration")


@dataclass(frozen=True)
class ObjectiveConfig:
    """The fitness: which ranking, which severity, which terms with which weights, on what data."""

    kind: str = "expectation"
    severity: str = "kl_disagreement"  # measured best on CIFAR-10 validation (docs/EXPERIMENTS.md)
    value_weight: float = 1.0
    gradient_weight: float = 0.0
    anchor_weight: float = 0.0
    margin_weight: float = 0.0
    calibration_weight: float = 1.0  # `edloss pretrain --objective per_sample` sets 0: the paper's ranking only
    soft: bool = False  # soft ranking (mean sigmoid) instead of the hard fraction
    temperature: float = 0.1  # of the soft ranking, relative to each individual's loss spread
    delta: float = 1e-5  # a pair counts only if its severities differ by more than this
    margin_gamma: float = 1.0
    disagreement_weight: float = 1.0  # eps of the kl_disagreement severity
    classes: tuple[int, int] = (2, 1000)  # class count K drawn log-uniform from this range ...
    blocks: int = 4  # ... this many times per generation
    evals_per_block: int = 4096  # loss evaluations per block: pairs, or predictions x labels
    min_items: int = 16  # at least this many predictions per block, even at large K
    max_labels: int = 64  # above this K, E_{y~q} is estimated from this many labels drawn from q
    label_noise: float = 0.0  # symmetric label noise eta: labels come from T^T q, severity stays clean
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    expectation: ExpectationConfig = field(default_factory=ExpectationConfig)

    def __post_init__(self) -> None:
        """Every field is checked here, naming it and its valid range, so a bad config fails before a run starts."""
        check_fields(self)
        if self.kind not in KINDS:
            raise ValueError(f"objective kind must be one of {KINDS}, got {self.kind!r}")
        if self.severity not in SEVERITIES[self.kind]:
            raise ValueError(f"severity {self.severity!r} is not valid for the {self.kind} objective; valid: {SEVERITIES[self.kind]}")
        weights = [self.value_weight, self.gradient_weight, self.anchor_weight, self.margin_weight, self.calibration_weight]
        for term, weight in zip(TERMS, weights):
            check_range(f"{term}_weight", weight, 0)
        if sum(weights) == 0:
            raise ValueError(f"term weights must be finite, >= 0 and not all zero, got {dict(zip(TERMS, weights))}")
        lo, hi = self.classes
        if not (2 <= lo <= hi):
            raise ValueError(f"classes must be a range (lo, hi) with 2 <= lo <= hi, got {self.classes}")
        check_range("blocks", self.blocks, 1)
        check_range("evals_per_block", self.evals_per_block, 16)
        check_range("min_items", self.min_items, 2)
        check_range("max_labels", self.max_labels, 2)
        check_range("temperature", self.temperature, 0, lo_open=True)
        check_range("delta", self.delta, 0)
        check_range("margin_gamma", self.margin_gamma, 0)
        check_range("disagreement_weight", self.disagreement_weight, 0)
        check_range("label_noise", self.label_noise, 0, 0.99)
        if self.label_noise > 0 and self.kind == "per_sample":
            raise ValueError("label_noise needs the expectation objective: it changes the distribution the labels come from")
        if self.class_range[0] > hi:
            raise ValueError(f"label_noise {self.label_noise} leaves no class count in classes {self.classes}: symmetric noise "
                             f"at that rate needs K >= {self.class_range[0]} for a label to be more likely right than wrong")

    @property
    def class_range(self) -> tuple[int, int]:
        """The class counts drawn: ``classes``, less those where symmetric noise at ``label_noise``
        leaves a label no more likely right than any one wrong class (eta >= (K - 1) / K): there
        the labels say nothing, or the opposite, and no loss can learn from them."""
        lo, hi = self.classes
        if self.label_noise > 0:
            lo = max(lo, math.floor(1 / (1 - self.label_noise)) + 1)
        return lo, hi

    @property
    def needs_gradients(self) -> bool:
        return self.gradient_weight > 0 or self.margin_weight > 0


@dataclass
class RankingBatch:
    """Synthetic items at one class count, and the ordered pairs (worse, better) to compare."""

    logits: torch.Tensor  # (I, K) float32
    labels: torch.Tensor  # (I, L): the label per sample (L = 1), or the labels an expectation sums over
    weights: torch.Tensor  # (I, L): 1 per sample; q_y (every label) or 1/L (labels drawn from q)
    severity: torch.Tensor  # (I,)
    pairs: torch.Tensor  # (M, 2) long: severity[pairs[:, 0]] > severity[pairs[:, 1]] + delta

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]


# ---------------------------------------------------------------------- batches
def _orient(severity: torch.Tensor, i: torch.Tensor, j: torch.Tensor, delta: float) -> torch.Tensor:
    """Keep pairs whose severities differ by more than delta, worse one first."""
    gap = severity[i] - severity[j]
    keep = gap.abs() > delta
    i, j, gap = i[keep], j[keep], gap[keep]
    return torch.stack([torch.where(gap > 0, i, j), torch.where(gap > 0, j, i)], dim=1)


def _per_sample_severity(logp: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    logp_y = logp.gather(1, labels[:, None]).squeeze(1)
    rival = logp.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    rank = (logp > logp_y[:, None]).sum(dim=1).to(logp.dtype) / (logp.shape[1] - 1)
    if kind == "one_minus_py":  # ties (p_y ~ 1 or ~ 0) broken by rank, then by margin
        return -torch.expm1(logp_y) + 1e-6 * (rank + torch.sigmoid(rival - logp_y))
    if kind == "margin":
        return rival.exp() - logp_y.exp()
    return rank + 1e-6 * torch.sigmoid(rival - logp_y)


def _expectation_severity(q: torch.Tensor, log_q: torch.Tensor, logp: torch.Tensor, cfg: ObjectiveConfig) -> torch.Tensor:
    """How far each prediction logp (I, K) is from its truth q (I, K), float64."""
    if cfg.severity == "tv":
        return 0.5 * (q - logp.exp()).abs().sum(1)
    gap = log_q - logp
    kl = torch.where(q > 0, q * gap, torch.zeros_like(gap)).sum(1)
    if cfg.severity == "kl":
        return kl
    return kl + cfg.disagreement_weight * (1 - (q * logp.exp()).sum(1))


def noisy_label_distribution(q: torch.Tensor, eta: float) -> torch.Tensor:
    """T^T q for symmetric noise at rate eta: a label is kept with probability 1 - eta, else
    replaced by one of the other K - 1 classes uniformly. A loss good under noise ranks
    E_{y~T^T q} l(p, y) by the clean severity s(p, q): it pays to predict the truth although the
    labels lie."""
    if eta == 0:
        return q
    k = q.shape[-1]
    return (1 - eta) * q + eta / (k - 1) * (1 - q)


def make_batch(cfg: ObjectiveConfig, k: int, gen: torch.Generator) -> RankingBatch:
    """One block of synthetic items at class count k, sized to ~cfg.evals_per_block evaluations."""
    if cfg.kind == "per_sample":
        n = max(cfg.min_items, cfg.evals_per_block)
        logits, labels, _ = sample_mixture(n, k, cfg.mixture, gen)
        severity = _per_sample_severity(torch.log_softmax(logits, 1), labels, cfg.severity)
        i, j = torch.randint(0, n, (2, 2 * n), generator=gen)
        pairs = _orient(severity, i, j, cfg.delta)
        return RankingBatch(logits.float(), labels[:, None], torch.ones(n, 1), severity.float(), pairs)
    r = cfg.expectation.predictions_per_truth
    n_labels = min(k, cfg.max_labels)
    n_truths = max(-(-cfg.min_items // r), cfg.evals_per_block // (n_labels * r))
    log_q, logits, truth = sample_expectation(n_truths, k, cfg.expectation, gen)
    q = log_q.exp()
    logp = torch.log_softmax(logits, 1)
    severity = _expectation_severity(q[truth], log_q[truth], logp, cfg)  # how far from the *clean* truth
    label_q = noisy_label_distribution(q, cfg.label_noise)  # what the loss sees: labels through the channel
    if k <= cfg.max_labels:  # exact expectation over every label
        labels, weights = torch.arange(k).expand(len(truth), k), label_q[truth]
    else:  # labels drawn from q, shared by the predictions of one truth (common random numbers)
        labels = torch.multinomial(label_q, n_labels, replacement=True, generator=gen)[truth]
        weights = torch.full(labels.shape, 1.0 / n_labels, dtype=torch.float64)
    a, b = torch.triu_indices(r, r, offset=1)
    base = (torch.arange(n_truths) * r)[:, None]
    pairs = _orient(severity, (base + a).flatten(), (base + b).flatten(), cfg.delta)
    return RankingBatch(logits.float(), labels, weights.float(), severity.float(), pairs)


def sample_batches(cfg: ObjectiveConfig, gen: torch.Generator, class_counts: list[int] | None = None) -> list[RankingBatch]:
    """A generation's fresh synthetic data: cfg.blocks blocks at log-uniform class counts."""
    ks = class_counts or [sample_class_count(*cfg.class_range, gen) for _ in range(cfg.blocks)]
    return [make_batch(cfg, k, gen) for k in ks]


def heldout_batches(cfg: ObjectiveConfig, seed: int = 20260528, evals_per_block: int | None = None) -> list[RankingBatch]:
    """A fixed synthetic set (K = 2, 10, 100, 1000 within the configured range), so runs compare.

    ``evals_per_block`` per block (default: four times a training block's), and expectations
    exact over every label. Fixing it apart from the training blocks keeps one held-out set
    while the training fitness is made noisier or cleaner (the fitness-noise ablation).
    """
    gen = torch.Generator().manual_seed(seed)
    lo, hi = cfg.class_range
    ks = sorted({min(max(k, lo), hi) for k in (2, 10, 100, 1000)})
    evals = evals_per_block or 4 * cfg.evals_per_block
    bigger = ObjectiveConfig(**{**cfg.__dict__, "evals_per_block": evals, "min_items": 4 * cfg.min_items, "max_labels": hi})
    return [make_batch(bigger, k, gen) for k in ks]


# ---------------------------------------------------------------------- scoring
def _item_losses(penalty: Penalty, batch: RankingBatch, population: int, with_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Expected (or per-sample) loss of every item for every individual, and its logit-gradient norm."""
    b = population if with_grad else 1
    z = batch.logits.unsqueeze(0).expand(b, -1, -1)
    if with_grad:
        z = z.clone().requires_grad_(True)
    with torch.enable_grad() if with_grad else torch.no_grad():
        logp = torch.log_softmax(z, dim=-1)
        out = penalty(logp, batch.labels.unsqueeze(0))  # (P, I, L)
        losses = (out * batch.weights).sum(-1)
        if not with_grad:
            return losses.detach(), None
        (grad,) = torch.autograd.grad(losses.sum(), z)
    return losses.detach(), grad.norm(dim=-1)


def _consistency(diff: torch.Tensor, soft: bool, temperature: torch.Tensor) -> torch.Tensor:
    if soft:
        return torch.sigmoid(diff / temperature).mean(-1)
    return (diff > 0).to(diff.dtype).mean(-1)


def _calibration(diff: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
    """-mean |c diff - gap| / mean gap per individual, c >= 0 the least-squares fit of gap on diff."""
    c = ((diff * gap).sum(-1, keepdim=True) / (diff * diff).sum(-1, keepdim=True).clamp_min(1e-30)).clamp_min(0)
    return -(c * diff - gap).abs().mean(-1) / gap.mean()


def evaluate(penalty: Penalty, population: int, batches: list[RankingBatch], cfg: ObjectiveConfig, all_metrics: bool = False) -> dict[str, torch.Tensor]:
    """Fitness and its terms for each of ``population`` individuals, averaged over blocks by pair count.

    ``all_metrics`` computes the gradient terms and Kendall tau even when their weight is zero
    (for reports on the held-out set); the ES loop leaves it off to stay fast.
    """
    with_grad = all_metrics or cfg.needs_gradients
    anchor_norm = anchor_gradient_norm(penalty, population).clamp_min(1e-12)
    to_ce = ce_anchor_norm() / anchor_norm  # per-individual factor putting losses in CE units
    sums: dict[str, torch.Tensor] = {}
    total = 0
    for batch in batches:
        if batch.pairs.shape[0] == 0:
            continue
        losses, gnorm = _item_losses(penalty, batch, population, with_grad)
        worse, better = batch.pairs[:, 0], batch.pairs[:, 1]
        diff = losses[:, worse] - losses[:, better]
        spread = losses.std(dim=1, keepdim=True).clamp_min(1e-12) * cfg.temperature
        terms = {"value": _consistency(diff, cfg.soft, spread), "value_hard": _consistency(diff, False, spread)}
        gap = (batch.severity[worse] - batch.severity[better]).unsqueeze(0)
        if all_metrics or cfg.calibration_weight > 0:
            terms["calibration"] = _calibration(diff, gap)
        if gnorm is not None:
            gdiff = gnorm[:, worse] - gnorm[:, better]
            gspread = gnorm.std(dim=1, keepdim=True).clamp_min(1e-12) * cfg.temperature
            terms["gradient"] = _consistency(gdiff, cfg.soft, gspread)
            terms["margin"] = -torch.relu(cfg.margin_gamma * gap - to_ce[:, None] * diff).mean(-1)
        if all_metrics:
            terms["kendall_tau"] = torch.sign(diff).mean(-1)
        weight = batch.pairs.shape[0]
        for name, value in terms.items():
            sums[name] = sums.get(name, 0) + weight * value
        total += weight
    if total == 0:
        raise ValueError("no comparable pairs in the synthetic batches; lower delta or raise evals_per_block")
    metrics = {name: value / total for name, value in sums.items()}
    metrics["anchor"] = -torch.log(anchor_norm / ce_anchor_norm()).abs()
    fitness = cfg.value_weight * metrics["value"] + cfg.anchor_weight * metrics["anchor"]
    if "gradient" in metrics:
        fitness = fitness + cfg.gradient_weight * metrics["gradient"] + cfg.margin_weight * metrics["margin"]
    if cfg.calibration_weight > 0:
        fitness = fitness + cfg.calibration_weight * metrics["calibration"]
    metrics["fitness"] = fitness
    return metrics


POPULATION_CHUNK = 256  # individuals per evaluate() call (measured fastest of 64-2048 at P = 2048, one thread)


def evaluate_population(theta: torch.Tensor, net: LossNetConfig, batches: list[RankingBatch], cfg: ObjectiveConfig) -> dict[str, torch.Tensor]:
    """``evaluate`` of the population ``theta`` (P, D), in fixed chunks of ``POPULATION_CHUNK`` individuals.

    Every metric is per individual, but float results can depend in the last bits on the shapes
    an individual is computed in (row tiles sized by P, vector tails of elementwise ops). Fixed
    chunks make an individual's numbers depend only on its chunk, so any split of the population
    on chunk boundaries (``distributed.RayEvaluator``) reproduces them bit for bit with the same
    thread count. At P <= POPULATION_CHUNK this is exactly one ``evaluate`` call.
    """
    parts = [evaluate(population_penalty(t, net), t.shape[0], batches, cfg) for t in theta.split(POPULATION_CHUNK)]
    if len(parts) == 1:
        return parts[0]
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


# ---------------------------------------------------------------------- as pretrain runs it
# (theta (P, D), lossnet config, batches, objective config) -> per-individual metrics, as
# evaluate_population; distributed.RayEvaluator spreads it over Ray actors.
Evaluator = Callable[[torch.Tensor, LossNetConfig, list, ObjectiveConfig], dict[str, torch.Tensor]]


def ranking_heldout(cfg: Any) -> list[RankingBatch]:
    """The fixed held-out ranking batches of a pretraining run (``cfg``: its ``PretrainConfig``)."""
    return heldout_batches(cfg.objective, cfg.heldout_seed, cfg.heldout_evals_per_block or None)


class RankingObjective:
    """The ranking objective as ``pretrain`` runs it (an ``objectives.Objective``): each generation
    fresh synthetic batches, the fitness ``evaluate``'s, a fixed held-out set of batches, and the
    export ranks every candidate on that set itself. ``cfg``: the run's ``PretrainConfig``."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def check(self, population: int) -> None:
        """Nothing to refuse before the run: a ranking population's tensors are small."""

    def check_evaluator(self, evaluator: Evaluator | None) -> None:
        """Any evaluator serves: here in chunks, or on Ray actors, with the same numbers."""

    def heldout(self) -> list[RankingBatch]:
        return ranking_heldout(self.cfg)

    def sample(self, gen: torch.Generator) -> list[RankingBatch]:
        return sample_batches(self.cfg.objective, gen)

    def evaluate(self, theta: torch.Tensor, data: list[RankingBatch], evaluator: Evaluator | None = None) -> dict[str, torch.Tensor]:
        """Per-individual metrics of ``theta`` (P, D) on ``data``, by ``evaluator`` where one is given
        (in chunks, or on Ray), else in one ``evaluate`` call."""
        if evaluator is not None:
            return evaluator(theta, self.cfg.lossnet, data, self.cfg.objective)
        return evaluate(population_penalty(theta, self.cfg.lossnet), theta.shape[0], data, self.cfg.objective)

    def heldout_scores(self, theta: torch.Tensor, heldout: list[RankingBatch]) -> dict[str, torch.Tensor]:
        """Every held-out metric of ``theta`` (P, D), the gradient terms and Kendall tau included."""
        return evaluate(population_penalty(theta, self.cfg.lossnet), theta.shape[0], heldout, self.cfg.objective, all_metrics=True)

    def shortlist(self, candidates: torch.Tensor, heldout: list[RankingBatch]) -> tuple[torch.Tensor, dict[str, Any], int | None]:
        """Every candidate goes to the export, which picks the best on the held-out batches itself."""
        return candidates, {}, None
