"""A long-tailed training set with EDL: tell the loss the class counts.

    python examples/long_tail.py                       # 10 synthetic classes, largest / smallest = 100
    python examples/long_tail.py --ce                  # plain cross-entropy, for comparison
    python examples/long_tail.py --data my.pt          # a dict {"x": (N, 3, H, W), "y": (N,)}: counts from y
"""
import argparse

import torch
from torch import nn

from common import check_images, fail, images, load_arrays, small_cnn
from edloss import EDLLoss


def balanced_accuracy(pred: torch.Tensor, y: torch.Tensor, classes: int) -> float:
    """Mean over classes of each class's accuracy: what a balanced test set measures."""
    return torch.stack([(pred[y == c] == c).float().mean() for c in range(classes) if (y == c).any()]).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help=".pt or .npz file with x (N, 3, H, W) and y (N,) (default: synthetic)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--imbalance", type=float, default=100.0, help="synthetic data: largest / smallest class count")
    parser.add_argument("--ce", action="store_true", help="use nn.CrossEntropyLoss instead, for comparison")
    args = parser.parse_args()
    if args.imbalance < 1:
        fail(f"--imbalance must be at least 1, got {args.imbalance}")
    torch.manual_seed(0)

    if args.data:
        arrays = load_arrays(args.data, ("x", "y"))
        x, y = check_images(arrays["x"], arrays["y"])
        x_test, y_test = x, y
    else:
        counts = [max(1, int(300 * args.imbalance ** (-c / 9))) for c in range(10)]  # 300 ... 3
        x, y = images(0, counts=counts)
        x_test, y_test = images(1000, seed=1)  # balanced test set
    classes = int(y.max()) + 1
    class_counts = torch.bincount(y, minlength=classes)  # per-class training counts
    if (class_counts == 0).any():
        fail(f"--data: class {int((class_counts == 0).nonzero()[0])} has no training example; class_counts must be positive")
    print(f"class counts {class_counts.tolist()}")
    criterion = nn.CrossEntropyLoss() if args.ce else EDLLoss.pretrained(class_counts=class_counts)
    model = small_cnn(classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    for step in range(1, args.steps + 1):
        idx = torch.randint(len(x), (64,))  # plain sampling: the loss, not the sampler, handles the tail
        loss = criterion(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == args.steps:
            print(f"step {step}: loss {loss.item():.4f}")
    with torch.no_grad():
        score = balanced_accuracy(model(x_test).argmax(1), y_test, classes)
    print(f"balanced accuracy {100 * score:.1f}% with {'CE' if args.ce else 'EDL told the counts'}")


if __name__ == "__main__":
    main()
