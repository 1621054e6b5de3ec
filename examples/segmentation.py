"""Dense prediction with EDL: logits (N, C, H, W), per-pixel targets (N, H, W), as with CE.

    python examples/segmentation.py                   # tiny synthetic scenes, a few seconds on CPU
    python examples/segmentation.py --data my.pt      # a dict {"x": (N, 3, H, W), "y": (N, H, W)}; 255 = ignore
"""
import argparse

import torch
from torch import nn

from common import fail, load_arrays
from edloss import EDLLoss

IGNORE = 255  # "don't care" pixels, as in Pascal VOC


def scenes(n: int, classes: int = 4, size: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Background (class 0) with one rectangle of class 1..C-1; each class has its colour; borders ignored."""
    gen = torch.Generator().manual_seed(seed)
    colours = torch.rand(classes, 3, generator=torch.Generator().manual_seed(7))
    y = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        c = int(torch.randint(1, classes, (1,), generator=gen))
        r0, c0 = (int(v) for v in torch.randint(0, size // 2, (2,), generator=gen))
        y[i, r0:r0 + size // 2, c0:c0 + size // 2] = c
    x = colours[y].permute(0, 3, 1, 2) + 0.3 * torch.randn(n, 3, size, size, generator=gen)
    y[:, 0, :] = y[:, -1, :] = y[:, :, 0] = y[:, :, -1] = IGNORE
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help=".pt or .npz file with x (N, 3, H, W) and y (N, H, W) (default: synthetic)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)

    if args.data:
        arrays = load_arrays(args.data, ("x", "y"))
        x, y = arrays["x"].float(), arrays["y"].long()
        if x.dim() != 4 or y.shape != (x.shape[0], *x.shape[2:]):
            fail(f"--data: expected x (N, 3, H, W) and y (N, H, W), got {tuple(x.shape)} and {tuple(y.shape)}")
    else:
        x, y = scenes(256)
    classes = int(y[y != IGNORE].max()) + 1
    model = nn.Sequential(nn.Conv2d(x.shape[1], 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, classes, 1))
    criterion = EDLLoss.pretrained(ignore_index=IGNORE)  # (N, C, H, W) logits with (N, H, W) targets
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    for step in range(1, args.steps + 1):
        idx = torch.randint(len(x), (args.batch_size,))
        loss = criterion(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == args.steps:
            print(f"step {step}: loss {loss.item():.4f}")
    with torch.no_grad():
        per_pixel = EDLLoss.pretrained(ignore_index=IGNORE, reduction="none")(model(x[:4]), y[:4])
        keep = y != IGNORE
        accuracy = (model(x).argmax(1) == y)[keep].float().mean().item()
    print(f"per-pixel loss map {tuple(per_pixel.shape)}; pixel accuracy {100 * accuracy:.1f}%")


if __name__ == "__main__":
    main()
