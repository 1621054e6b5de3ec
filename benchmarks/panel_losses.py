"""Write the world-check panel's EDL losses that no longer ship into ``src/edloss/lab/panel/``.

Each is the loss a recorded CIFAR arm trained with (``edloss.lab.world.PANEL``): a file the
package shipped at the time, taken from git history, or for arms that never shipped (the Gaussian
mutation arms) regenerated with the code of the commit the CIFAR grid ran with, by
``runs/panel/regen_at_commits.sh`` (each commit validated by regenerating its shipped chaotic loss
bit for bit). Every file is re-saved in today's checksummed format with its source in the
provenance, so ``edloss world-check`` works from an installed wheel without git.

    python benchmarks/panel_losses.py [--raw runs/panel/raw]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from edloss.loss import EDLLoss

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "edloss" / "lab" / "panel"
# name -> (git commit, shipped folder) for files taken from history
FROM_GIT = {
    "noise-kld-0.4": ("8297ee0", "noise-0.4", "the KL + disagreement noise loss shipped in sessions 3-4 (CIFAR arm edl-noise)"),
    "v2-chaotic": ("25cc29c", "default", "the v2 default (CIFAR arm edl-onehot)"),
    "v0-chaotic": ("c5e7629", "default", "the v0 default (CIFAR arm edl-chaotic)"),
}
# name -> (commit, description) for losses regenerated at a commit into --raw
# Only where the commit regenerates its shipped chaotic loss bit for bit (1079b30: v3, checked by
# regen_at_commits.sh). 25cc29c and c5e7629 do not reproduce the v2 / v0 files they shipped, so
# their Gaussian arms (CIFAR edl-gaussian-onehot, edl-gaussian) cannot be remade as trained and
# are left out of the panel rather than stood in for by another loss.
# name -> (folder, description) for losses evolved in the students world: the search's own picks,
# recorded with the run (docs/figures/students/evolution); a world must rank them where CIFAR does
FROM_DOCS = {
    "students-clean": ("docs/figures/students/evolution/clean-chaotic/loss", "evolved in the gaussian-default clean world, 60 generations (CIFAR arm edl-students-clean)"),
    "students-noise-0.4": ("docs/figures/students/evolution/noise-0.4-chaotic/loss", "evolved in the gaussian-small-data world at eta 0.4, 60 generations (CIFAR arm edl-students-noise)"),
    "students-noise-0.4-long": ("docs/figures/students/evolution/noise-0.4-long-chaotic/loss", "evolved in the gaussian-long world at eta 0.4, 40 generations (CIFAR arm edl-students-noise-long)"),
    # near pairs (world-check's second gate, edloss.lab.world_pairs): evolved losses against their start
    "students-images-clean": ("docs/figures/students/evolution/images-clean/loss", "evolved in the images-default clean world, 25 generations (CIFAR arm edl-students-images)"),
    "students-robust-clean": ("docs/figures/students/evolution/robust-clean/loss", "evolved in the worst of three clean worlds, 20 generations (CIFAR arm edl-students-robust)"),
}
REGENERATED = {
    "v3-gaussian": ("1079b30", "v3 objective, Gaussian mutation, seed 0 (CIFAR arm edl-kldcal-gaussian)"),
}


def resave(src: Path, name: str, source: str) -> None:
    loss = EDLLoss.from_file(src, allow_unverified=True)
    loss.metadata["panel_source"] = source
    loss.save(OUT / name)
    print(f"{name}: {source}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", default=str(ROOT / "runs" / "panel" / "raw"), help="where regen_at_commits.sh wrote its runs")
    args = parser.parse_args()
    for name, (commit, folder, what) in FROM_GIT.items():
        with tempfile.TemporaryDirectory() as tmp:
            for f in ("loss.json", "loss.safetensors"):
                blob = subprocess.check_output(["git", "show", f"{commit}:src/edloss/weights/{folder}/{f}"], cwd=ROOT)
                (Path(tmp) / f).write_bytes(blob)
            resave(Path(tmp), name, f"git {commit}:src/edloss/weights/{folder}: {what}")
    for name, (folder, what) in FROM_DOCS.items():
        resave(ROOT / folder, name, f"{folder}: {what}")
    for name, (commit, what) in REGENERATED.items():
        src = Path(args.raw) / name / "loss"
        if (src / "loss.json").exists():
            resave(src, name, f"regenerated with the code of commit {commit}: {what}")
        else:
            print(f"{name}: missing in {args.raw}; run runs/panel/regen_at_commits.sh first")


if __name__ == "__main__":
    main()
