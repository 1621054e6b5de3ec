"""Mixup with EDL: soft targets (probabilities of the logits' shape) instead of class indices.

    python examples/mixup.py                      # tiny synthetic images, a few seconds on CPU
    python examples/mixup.py --data my.pt         # a dict {"x": (N, 3, H, W), "y": (N,)}
"""
import argparse

import torch
from torch.nn import functional as F

from common import check_images, fail, images, load_arrays, small_cnn
from edloss import EDLLoss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help=".pt or .npz file with x (N, 3, H, W) and y (N,) (default: synthetic)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--alpha", type=float, default=0.4, help="mixup's Beta(alpha, alpha)")
    args = parser.parse_args()
    if args.alpha <= 0:
        fail(f"--alpha must be positive, got {args.alpha}")
    torch.manual_seed(0)

    if args.data:
        arrays = load_arrays(args.data, ("x", "y"))
        x, y = check_images(arrays["x"], arrays["y"])
    else:
        x, y = images(2000)
    classes = int(y.max()) + 1
    model = small_cnn(classes)
    criterion = EDLLoss.pretrained()  # soft targets: the expected penalty sum_y t_y loss(p, y)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    beta = torch.distributions.Beta(args.alpha, args.alpha)

    for step in range(1, args.steps + 1):
        idx = torch.randint(len(x), (64,))
        lam = beta.sample()
        perm = torch.randperm(len(idx))
        mixed = lam * x[idx] + (1 - lam) * x[idx][perm]
        onehot = F.one_hot(y[idx], classes).float()
        target = lam * onehot + (1 - lam) * onehot[perm]   # rows sum to 1
        loss = criterion(model(mixed), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == args.steps:
            print(f"step {step}: loss {loss.item():.4f} (lambda {lam.item():.2f})")
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(f"training accuracy {100 * accuracy:.1f}% on unmixed images")


if __name__ == "__main__":
    main()
