"""Swap cross-entropy for EDL in a plain PyTorch image classifier: one line changes.

    python examples/image_classifier.py                 # tiny synthetic images, a few seconds on CPU
    python examples/image_classifier.py --ce            # the same run with nn.CrossEntropyLoss
    python examples/image_classifier.py --data my.pt    # your images: a dict {"x": (N, 3, H, W), "y": (N,)}
"""
import argparse

import torch
from torch import nn

from common import check_images, images, load_arrays, small_cnn
from edloss import EDLLoss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help=".pt or .npz file with x (N, 3, H, W) and y (N,) (default: synthetic)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--ce", action="store_true", help="use nn.CrossEntropyLoss instead, for comparison")
    args = parser.parse_args()
    torch.manual_seed(0)

    if args.data:
        arrays = load_arrays(args.data, ("x", "y"))
        x, y = check_images(arrays["x"], arrays["y"])
    else:
        x, y = images(2000)
    classes = int(y.max()) + 1
    model = small_cnn(classes)
    criterion = nn.CrossEntropyLoss() if args.ce else EDLLoss.pretrained()  # the only change: was nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)  # CE's learning rate carries over

    for step in range(1, args.steps + 1):
        idx = torch.randint(len(x), (args.batch_size,))
        loss = criterion(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == args.steps:
            print(f"step {step}: loss {loss.item():.4f}")
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(f"training accuracy {100 * accuracy:.1f}% with {'CE' if args.ce else 'EDL'}")


if __name__ == "__main__":
    main()
