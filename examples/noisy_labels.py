"""Noisy labels with EDL: a loss pretrained for the share of wrong labels you expect.

    python examples/noisy_labels.py                         # synthetic images, 40% of labels flipped
    python examples/noisy_labels.py --noise-rate 0.6 --ce   # plain cross-entropy, for comparison
    python examples/noisy_labels.py --data my.pt --noise-rate 0.2   # your (noisy) labels: {"x": ..., "y": ...}
"""
import argparse

import torch
from torch import nn

from common import check_images, fail, images, load_arrays, small_cnn
from edloss import EDLLoss


def flip(y: torch.Tensor, rate: float, classes: int, seed: int = 0) -> torch.Tensor:
    """Symmetric noise: each label, with probability ``rate``, becomes one of the other classes."""
    gen = torch.Generator().manual_seed(seed)
    wrong = torch.rand(len(y), generator=gen) < rate
    shift = torch.randint(1, classes, (len(y),), generator=gen)
    return torch.where(wrong, (y + shift) % classes, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help=".pt or .npz file with x (N, 3, H, W) and noisy y (N,) (default: synthetic)")
    parser.add_argument("--noise-rate", type=float, default=0.4, help="share of wrong labels, in [0, 0.8]")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--ce", action="store_true", help="use nn.CrossEntropyLoss instead, for comparison")
    args = parser.parse_args()
    torch.manual_seed(0)

    if args.data:
        arrays = load_arrays(args.data, ("x", "y"))
        x, noisy = check_images(arrays["x"], arrays["y"])
        x_test, y_test = x, noisy  # no clean labels to test on: report agreement with the given ones
        classes = int(noisy.max()) + 1
    else:
        x, clean = images(2000)
        classes = 10
        noisy = flip(clean, min(max(args.noise_rate, 0.0), 1.0), classes)
        x_test, y_test = images(1000, seed=1)  # clean test set
    try:
        criterion = nn.CrossEntropyLoss() if args.ce else EDLLoss.pretrained(noise_rate=args.noise_rate, num_classes=classes)
    except ValueError as err:
        fail(f"--noise-rate: {err}")
    if not args.data:
        print(f"{100 * (noisy != clean).float().mean().item():.1f}% of training labels flipped")
    model = small_cnn(classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    for step in range(1, args.steps + 1):
        idx = torch.randint(len(x), (64,))
        loss = criterion(model(x[idx]), noisy[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == args.steps:
            print(f"step {step}: loss {loss.item():.4f}")
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    print(f"test accuracy {100 * accuracy:.1f}% with {'CE' if args.ce else f'EDL for noise rate {args.noise_rate}'}")


if __name__ == "__main__":
    main()
