"""edloss: Evolutionary Dynamic Loss, a classification loss pretrained with no real data."""

from edloss.loss import EDLLoss

__version__ = "0.1.0"
__all__ = ["EDLLoss", "__version__"]
