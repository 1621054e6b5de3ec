"""The CIFAR lab: everything that *measures* a loss, kept apart from the loss itself.

Data (CIFAR-10/100 in memory), CIFAR ResNets, the loss registry with its baselines, the trainer,
the comparison grid, the mutation ablation and the reports. It needs the ``lab`` extra
(``pip install 'edloss[lab]'``: numpy, matplotlib, scipy, cma); ``import edloss`` never imports it.
"""
