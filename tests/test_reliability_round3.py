"""Issue 35, "No silent wrong results, round three": each reproduction of the issue is a test here.

Numbers in the test names' comments refer to the issue's lists: silent wrong results (S1-S17),
lost work (L2), tracebacks (T1-T5), vague errors (V) and "Also" (A).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from edloss import EDLLoss
from edloss.lab.losses import PriorAwareEDL, build_loss_from_spec, definition_sha256, parse_loss_spec, spec_definition
from edloss.loss import CONFIG_FILE, pretrained_noise_rate

COUNTS = [500, 200, 80, 30, 10]
CIFAR10_LT = [4468, 2678, 1605, 962, 577, 345, 207, 124, 74, 44]
PANEL = Path(__file__).resolve().parents[1] / "src" / "edloss" / "lab" / "panel"


def _batch(k: int = 5, n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=gen), torch.randint(0, k, (n,), generator=gen)


# ---------------------------------------------------------------------- S1, S2: the prior is part of the loss
def test_s1_a_saved_prior_aware_loss_loads_with_its_prior_and_tau(tmp_path):
    told = EDLLoss.pretrained("default", class_counts=COUNTS, prior_strength=2)
    told.save(tmp_path)
    loaded = EDLLoss.from_file(tmp_path)
    z, y = _batch()
    torch.testing.assert_close(loaded(z, y), told(z, y))
    assert loaded.class_counts == COUNTS and loaded.prior_strength == 2.0
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["prior"] == {"class_counts": COUNTS, "prior_strength": 2.0}


def test_s1_the_saved_prior_is_checksummed(tmp_path):
    EDLLoss.pretrained("default", class_counts=COUNTS).save(tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    meta["prior"]["class_counts"][0] = 5000
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="edited after saving"):
        EDLLoss.from_file(tmp_path)


def test_s1_a_prior_blind_loss_is_saved_as_before(tmp_path):
    EDLLoss.pretrained().save(tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert meta["format_version"] == 3 and "prior" not in meta  # every edloss that reads format 3 still reads it


def test_s2_load_state_dict_refuses_another_prior_strength():
    tau2 = EDLLoss.pretrained("default", class_counts=COUNTS, prior_strength=2)
    tau1 = EDLLoss.pretrained("default", class_counts=COUNTS)
    with pytest.raises(ValueError, match="prior"):
        tau1.load_state_dict(tau2.state_dict())
    tau1.load_state_dict(EDLLoss.pretrained("default", class_counts=COUNTS).state_dict())  # the same definition loads


# ---------------------------------------------------------------------- S3: prior_strength without a prior
def test_s3_prior_strength_without_class_counts_is_refused():
    with pytest.raises(ValueError, match="prior_strength=5 scales the class prior, but no class_counts"):
        EDLLoss.pretrained(prior_strength=5)


def test_s3_the_labs_prior_strength_without_prior_aware_is_refused():
    with pytest.raises(ValueError, match="add prior_aware=true"):
        build_loss_from_spec("edl:prior_strength=2")
    loss = build_loss_from_spec("edl:prior_aware=true,prior_strength=2")
    loss.set_class_counts(COUNTS)
    z, y = _batch()
    torch.testing.assert_close(loss(z, y), EDLLoss.pretrained("default", class_counts=COUNTS, prior_strength=2)(z, y))


# ---------------------------------------------------------------------- S4: the probabilities warning
def test_s4_probabilities_for_logits_are_warned_about_with_class_counts_too():
    probs = torch.softmax(torch.randn(8, 5), 1)
    with pytest.warns(UserWarning, match="looks like probabilities"):
        EDLLoss.pretrained(class_counts=COUNTS)(probs, torch.zeros(8, dtype=torch.long))


# ---------------------------------------------------------------------- S5, S16: a loss evolved with the prior
def test_s5_prior_strength_zero_does_not_pick_the_loss_evolved_for_the_prior():
    loss = EDLLoss.pretrained(class_counts=CIFAR10_LT, prior_strength=0)
    default = EDLLoss.pretrained()
    assert torch.equal(loss.net.flat(), default.net.flat())


def test_s16_a_loss_evolved_for_the_prior_warns_when_used_without_one():
    z, y = _batch(10)
    with pytest.warns(UserWarning, match="evolved to be used with the class prior"):
        EDLLoss.pretrained("longtail-k10")(z, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EDLLoss.pretrained("longtail-k10", class_counts=CIFAR10_LT)(z, y)  # told the prior: silent
        EDLLoss.pretrained()(z, y)  # a prior-blind loss: silent


def test_s16_repr_shows_the_prior_and_tau():
    text = repr(EDLLoss.pretrained("longtail-k10", class_counts=CIFAR10_LT, prior_strength=1.5))
    assert "class_counts=[4468, 2678, 1605, 962, 577, ..., 44] (10 classes)" in text and "prior_strength=1.5" in text
    assert "evolved_with_prior=True" in text
    assert "prior=none" in repr(EDLLoss.pretrained())


# ---------------------------------------------------------------------- S6: booleans are no counts
@pytest.mark.parametrize("mask", [[True, True], torch.tensor([True, False, True]), np.array([True, True])])
def test_s6_boolean_masks_are_refused_as_counts(mask):
    with pytest.raises(ValueError, match="booleans"):
        EDLLoss.pretrained(class_counts=mask)


# ---------------------------------------------------------------------- S7: the students world's noise rate
def test_s7_from_file_reads_the_noise_rate_of_a_students_world_loss():
    folder = PANEL / "students-noise-0.4"
    assert pretrained_noise_rate(json.loads((folder / CONFIG_FILE).read_text())) == 0.4
    EDLLoss.from_file(folder, noise_rate=0.4)
    with pytest.raises(ValueError, match="pretrained for label noise 0.4, not 0.0"):
        EDLLoss.from_file(folder, noise_rate=0.0)
    with pytest.raises(ValueError, match="pretrained for label noise 0.4"):  # the lab's guard is the same check
        build_loss_from_spec(f"edl:checkpoint={folder},noise_rate=0")


# ---------------------------------------------------------------------- S8: prior-aware arms carry a checksum
def test_s8_a_prior_aware_arm_carries_its_networks_definition(tmp_path):
    EDLLoss.pretrained().save(tmp_path / "loss")
    spec = f"edl:checkpoint={tmp_path / 'loss'},prior_aware=true"
    before = spec_definition(spec)
    assert before is not None
    told = build_loss_from_spec(spec)
    told.set_class_counts(COUNTS)
    assert definition_sha256(told) == before  # the trainer's counts do not change what the spec names
    EDLLoss.pretrained("longtail-k10").save(tmp_path / "loss")  # re-pretrained in place
    assert spec_definition(spec) != before
    assert definition_sha256(build_loss_from_spec(f"{spec},gain=0.5")) == spec_definition(spec)


# ---------------------------------------------------------------------- S9: repeated options
@pytest.mark.parametrize("spec", ["gce:gain=2,gain=0.5", "logit_adjusted:2,tau=3", "focal:gamma=1,gamma=2"])
def test_s9_an_option_given_twice_is_refused(spec):
    with pytest.raises(ValueError, match="twice"):
        parse_loss_spec(spec)


# ---------------------------------------------------------------------- S17: float64 gets the exact prior
def test_s17_float64_logits_are_shifted_by_the_float64_log_prior():
    counts = [10**6, 3, 7]
    z, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    prior = torch.tensor(counts, dtype=torch.float64)
    exact = z + (prior / prior.sum()).log()
    for fused in (True, False):
        got = EDLLoss.pretrained(class_counts=counts, fused=fused, reduction="none")(z, y)
        want = EDLLoss.pretrained(fused=fused, reduction="none")(exact, y)
        assert torch.equal(got, want)
    assert EDLLoss.pretrained(class_counts=counts).float().log_prior64.dtype == torch.float64


# ---------------------------------------------------------------------- V: vague errors of the loss
def test_v_counts_whose_sum_overflows_are_blamed_on_the_counts():
    with pytest.raises(ValueError, match="class_counts"):
        EDLLoss.pretrained(class_counts=[1e308, 1e308])


@pytest.mark.parametrize("tau", [np.float32(1.5), np.float64(1.5), torch.tensor(1.5), np.int64(1)])
def test_v_numpy_and_torch_scalars_are_accepted_as_prior_strength(tau):
    assert EDLLoss.pretrained(class_counts=COUNTS, prior_strength=tau).prior_strength == float(tau)


def test_v_edl_path_followed_by_options_is_parsed_as_path_and_options(tmp_path):
    EDLLoss.pretrained().save(tmp_path / "loss")
    name, options = parse_loss_spec(f"edl:{tmp_path / 'loss'},gain=0.5")
    assert (name, options) == ("edl", {"checkpoint": str(tmp_path / "loss"), "gain": 0.5})
    assert build_loss_from_spec(f"edl:{tmp_path / 'loss'},gain=0.5").gain == 0.5


def test_v_a_loss_json_that_is_a_folder_is_named_as_such(tmp_path):
    EDLLoss.pretrained().save(tmp_path)
    (tmp_path / CONFIG_FILE).unlink()
    (tmp_path / CONFIG_FILE).mkdir()
    with pytest.raises(ValueError, match="is a folder, not a file"):
        EDLLoss.from_file(tmp_path)


# ---------------------------------------------------------------------- A: also
def test_a_a_soft_target_that_requires_grad_raises_no_torch_warning():
    z = torch.randn(4, 5)
    soft = torch.softmax(torch.randn(4, 5), 1).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EDLLoss.pretrained()(z, soft).backward()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_a_an_empty_batch_is_an_error_for_every_reduction_saying_what_to_do(reduction):
    with pytest.raises(ValueError, match="empty batch.*drop_last"):
        EDLLoss.pretrained(reduction=reduction)(torch.randn(0, 5), torch.zeros(0, dtype=torch.long))
