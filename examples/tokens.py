"""A token model with EDL: logits (B, C, T), targets (B, T), padding ignored by ignore_index.

    python examples/tokens.py                      # next-character prediction on a built-in text
    python examples/tokens.py --data notes.txt     # any UTF-8 text file: one training sequence per line
"""
import argparse
import os

import torch
from torch import nn

from common import fail
from edloss import EDLLoss

TEXT = """a loss is a small network pretrained with no real data
it ranks predictions so that a worse one pays more
then it replaces cross entropy in your training code
padding tokens count nowhere when ignore index marks them
short lines and long lines share one padded batch"""
PAD = -100  # CE's default ignore_index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="UTF-8 text file, one sequence per line (default: a built-in text)")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    torch.manual_seed(0)

    text = TEXT
    if args.data:
        if not os.path.isfile(args.data):
            fail(f"--data {args.data}: no such file")
        try:
            with open(args.data, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as err:
            fail(f"--data {args.data}: cannot read it as UTF-8 text ({type(err).__name__})")
    lines = [line for line in text.splitlines() if len(line) >= 2]
    if not lines:
        fail(f"--data {args.data}: no line with two or more characters")
    vocab = sorted(set("".join(lines)))
    index = {ch: i for i, ch in enumerate(vocab)}
    length = max(map(len, lines))
    tokens = torch.full((len(lines), length), PAD)  # padded to the longest line
    for i, line in enumerate(lines):
        tokens[i, :len(line)] = torch.tensor([index[ch] for ch in line])
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # predict the next character; padding stays PAD

    classes = len(vocab)
    embed = nn.Embedding(classes + 1, 32)  # the last row embeds padding
    rnn = nn.GRU(32, 64, batch_first=True)
    head = nn.Linear(64, classes)
    params = [*embed.parameters(), *rnn.parameters(), *head.parameters()]
    criterion = EDLLoss.pretrained(ignore_index=PAD)
    opt = torch.optim.Adam(params, lr=0.01)

    for step in range(1, args.steps + 1):
        hidden, _ = rnn(embed(inputs.masked_fill(inputs == PAD, classes)))
        logits = head(hidden)                                 # (B, T, C)
        loss = criterion(logits.transpose(1, 2), targets)     # (B, C, T) with (B, T), as nn.CrossEntropyLoss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == args.steps:
            print(f"step {step}: loss {loss.item():.4f}")
    real = targets != PAD
    accuracy = (logits.argmax(-1) == targets)[real].float().mean().item()
    print(f"{len(lines)} sequences, {classes} classes, {int(real.sum())} real tokens of {targets.numel()}: "
          f"next-character accuracy {100 * accuracy:.1f}%")


if __name__ == "__main__":
    main()
