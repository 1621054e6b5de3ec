"""edloss: Evolutionary Dynamic Loss, a classification loss pretrained with no real data."""

from edloss._version import __version__
from edloss.loss import EDLLoss

__all__ = ["EDLLoss", "__version__"]
