"""edloss.distributed: grids and population evaluation on a real local Ray cluster (2 CPUs, loopback).

Skipped without the ``ray`` extra. The cluster starts once for the module (~5 s); every result is
compared with the same computation done locally, in this process, with one torch thread.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from _cifar_fixtures import _one_thread, tiny_cifar  # noqa: F401

from edloss.lab import ablate as A
from edloss.lab import compare as C
from edloss import distributed as D
from edloss.cli import main as cli_main
from edloss.configs import to_dict
from edloss.evolve import ESConfig
from edloss.loss import EDLLoss
from edloss.lab.losses import LOSSES, register_loss
from edloss.lossnet import LossNetConfig, init_scale
from edloss.objective import (
    POPULATION_CHUNK,
    ObjectiveConfig,
    evaluate,
    evaluate_population,
    population_penalty,
    sample_batches,
)
from edloss.pretrain import PretrainConfig, pretrain
from edloss.lab.train import EPOCHS, RESULT, TrainConfig

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the ray extra: pip install 'edloss[ray]'")


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- no cluster needed
def test_addresses_are_read_and_unreachable_ones_fail_fast(tmp_path: Path, tiny_cifar: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    assert D.split_address("10.0.0.5:6380") == ("10.0.0.5", 6380)
    assert D.split_address("head") == ("head", D.GCS_PORT)
    assert D.split_address("ray://head") == ("head", D.CLIENT_PORT)
    assert D.split_address("[::1]:7000") == ("::1", 7000)
    for bad in ("http://head:8265", "head:port", "head:70000", ""):
        with pytest.raises(ValueError, match="Ray address"):
            D.split_address(bad)
    address = f"127.0.0.1:{closed_port()}"
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"cannot reach Ray cluster at 127\.0\.0\.1:\d+: .*ray start --head"):
        D.connect(address)
    code = cli_main(["compare", "--losses", "ce", "--seeds", "0", "--data-dir", str(tiny_cifar), "--train-subset", "64",
                     "--val-size", "32", "--epochs", "1", "--out", str(tmp_path / "grid"), "--ray", address, "--quiet"])
    assert code == 2 and "cannot reach Ray cluster" in capsys.readouterr().err
    code = cli_main(["ablate", "--arms", "chaotic", "--seeds", "0", "--sigmas", "0.1", "--generations", "1",
                     "--out", str(tmp_path / "ablation"), "--ray", address, "--quiet"])
    assert code == 2 and "cannot reach Ray cluster" in capsys.readouterr().err
    assert time.perf_counter() - start < 15  # three refusals, each within seconds, no hang
    assert cli_main(["pretrain", "--ray-actors", "2", "--out", str(tmp_path / "pretrain")]) == 2
    assert "--ray-actors needs --ray" in capsys.readouterr().err
    assert not (tmp_path / "grid" / "resnet20").exists()  # nothing trained


def test_a_port_where_something_else_listens_is_refused_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dashboard port or a typo: ray.init would retry for minutes; the gRPC probe refuses within seconds."""
    def serve(reply: bytes) -> int:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(4)

        def answer() -> None:
            conn, _ = server.accept()
            conn.sendall(reply)
            time.sleep(5)  # hold the connection open: a silent server never answers
            conn.close()

        threading.Thread(target=answer, daemon=True).start()
        return server.getsockname()[1]

    for reply in (b"HTTP/1.1 400 Bad Request\r\n\r\n", b""):
        start = time.perf_counter()
        with pytest.raises(ValueError, match="something listens there but it is not a Ray cluster"):
            D.check_reachable(f"127.0.0.1:{serve(reply)}", timeout=1.0)
        assert time.perf_counter() - start < 3

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{closed_port()}")
    assert D.resolve_address("auto") is None  # a stale record of a stopped cluster: start a local one
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{closed_port()}")
    with pytest.raises(ValueError, match="cannot reach Ray cluster"):
        D.resolve_address("auto")


def test_nothing_imports_ray_without_the_flag(tmp_path: Path) -> None:
    script = ("import sys; from edloss.cli import main; import edloss.distributed\n"
              f"assert main(['pretrain', '--generations', '1', '--population', '8', '--classes', '2,20', "
              f"'--out', {str(tmp_path)!r}, '--quiet']) == 0\n"
              "assert 'ray' not in sys.modules, 'ray imported'")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "loss" / "loss.json").is_file()


def test_population_chunks_keep_small_populations_exact() -> None:
    """At P <= POPULATION_CHUNK, evaluate_population is evaluate: earlier runs' numbers stay."""
    net, objective = LossNetConfig(), ObjectiveConfig(classes=(2, 50), blocks=2, evals_per_block=512)
    theta = torch.randn(POPULATION_CHUNK, net.num_params, generator=torch.Generator().manual_seed(0)) * 0.3
    batches = sample_batches(objective, torch.Generator().manual_seed(1))
    one = evaluate(population_penalty(theta, net), theta.shape[0], batches, objective)
    chunked = evaluate_population(theta, net, batches, objective)
    assert all(torch.equal(one[k], chunked[k]) for k in one)


# ---------------------------------------------------------------------- on a local cluster
@pytest.fixture(scope="module")
def cluster() -> str:
    """A 2-CPU Ray cluster on 127.0.0.1, started here, its GCS address."""
    started = D.connect("local", num_cpus=2)
    import ray

    address = ray.get_runtime_context().gcs_address
    assert address.startswith("127.0.0.1:") and D._loopback_only(address)  # listens on loopback only
    yield address
    if started:
        ray.shutdown()


def grid_config(data: Path) -> TrainConfig:
    """ResNet-20, one epoch of 64 images in batches of 32, 32 validation images (as tiny_config)."""
    return TrainConfig(model="resnet20", data_dir=str(data), epochs=1, batch_size=32, lr=0.05, val_size=32,
                       train_subset=64, eval_batch_size=64, device="cpu")


@pytest.fixture(scope="module")
def local_grid(tiny_cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The miniature grid (ce, seeds 0 and 1) trained locally, one torch thread."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("local_grid")
    C.compare(grid_config(tiny_cifar), ["ce"], [0, 1], out, progress=False)
    return out


def run_numbers(run_dir: Path) -> dict:
    result = json.loads((run_dir / RESULT).read_text())
    epochs = [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in (run_dir / EPOCHS).read_text().splitlines()]
    return {"status": result["status"], "test_acc": result["test_acc"], "test_loss": result["test_loss"],
            "final_val_acc": result["final_val_acc"], "final_val_loss": result["final_val_loss"],
            "final_train_loss": result["final_train_loss"], "epochs": epochs}


def test_grid_half_done_locally_finishes_on_ray_with_local_numbers(cluster: str, local_grid: Path, tiny_cifar: Path,
                                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = grid_config(tiny_cifar)
    seed0 = tmp_path / "resnet20" / "ce" / "seed0"
    shutil.copytree(local_grid / "resnet20" / "ce" / "seed0", seed0)  # half the grid, done locally
    before = (seed0 / RESULT).read_bytes()
    summary = C.compare(config, ["ce"], [0, 1], tmp_path, progress=False, ray=cluster, threads=1)
    assert (seed0 / RESULT).read_bytes() == before  # finished locally: not rerun
    assert run_numbers(tmp_path / "resnet20" / "ce" / "seed1") == run_numbers(local_grid / "resnet20" / "ce" / "seed1")
    assert summary["rows"][0]["n"] == 2 and [r["status"] for r in summary["runs"]] == ["finished", "finished"]
    assert json.loads((tmp_path / "summary.json").read_text())["rows"] == summary["rows"]
    assert (D.gpus_for("cpu"), D.gpus_for("cuda:1"), D.gpus_for("auto")) == (0, 1, 0)  # this cluster has no GPU

    calls = []  # and back: the local command takes the Ray-made run as finished
    monkeypatch.setattr(C, "train", lambda *a, **k: calls.append(a))
    C.compare(config, ["ce"], [0, 1], tmp_path, progress=False)
    assert calls == []


def test_a_failing_run_is_reported_and_the_grid_goes_on(cluster: str, local_grid: Path, tiny_cifar: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    shutil.copytree(local_grid / "resnet20" / "ce" / "seed0", tmp_path / "resnet20" / "ce" / "seed0")
    register_loss("driver_only", torch.nn.CrossEntropyLoss)  # the Ray workers do not know it: their run fails
    try:
        summary = C.compare(grid_config(tiny_cifar), ["ce", "driver_only"], [0], tmp_path, progress=False, ray=cluster)
    finally:
        LOSSES.pop("driver_only")
    runs = {r["label"]: r for r in summary["runs"]}
    assert runs["ce"]["status"] == "finished"
    assert runs["driver_only"]["status"] == "failed" and "unknown loss 'driver_only'" in runs["driver_only"]["error"]
    assert "| driver_only | `driver_only` | 0 (+1 failed) |" in (tmp_path / "summary.md").read_text()
    assert "failed on Ray" in capsys.readouterr().err  # said even without progress


def crash_once(marker: str) -> str:
    """Kill the worker process the first time (a lost node or an OOM kill), succeed when retried."""
    path = Path(marker)
    if not path.exists():
        path.write_text("crashed once")
        os._exit(1)
    return path.name


def test_a_killed_worker_is_retried_or_reported(cluster: str, tmp_path: Path) -> None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    try:
        markers = [str(tmp_path / "a"), str(tmp_path / "b")]
        seen = []
        done = D.run_tasks(crash_once, markers, address=cluster, on_result=lambda p, r: seen.append(r))
        assert sorted(seen) == ["a", "b"] and all(error is None for _, _, error in done)

        errors = []
        (tmp_path / "c").write_text("already crashed")  # c succeeds at once; d's crash is not retried
        done = D.run_tasks(crash_once, [str(tmp_path / "d"), str(tmp_path / "c")], address=cluster, max_retries=0,
                           on_error=lambda p, message: errors.append((Path(p).name, message)))
        assert {Path(p).name: r for p, r, _ in done}["c"] == "c"
        assert len(errors) == 1 and errors[0][0] == "d" and "Worker" in errors[0][1]
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_ablation_seeds_on_ray_match_local(cluster: str, tmp_path: Path) -> None:
    base = PretrainConfig(lossnet=LossNetConfig(hidden=(4,)),
                          objective=ObjectiveConfig(classes=(2, 20), blocks=1, evals_per_block=256, min_items=16),
                          es=ESConfig(population=8, parents=3, elites=1, generations=4), heldout_every=2, checkpoint_every=2)
    cfg = A.AblationConfig(base=base, arms=("chaotic", "cmaes"), sigmas=(0.1,), cmaes_sigmas=(0.1,), seeds=(0,), levels=(0.6,),
                           train_levels=(0.7,), smooth_window=2, heldout_smooth=2)
    local = A.ablate(cfg, tmp_path / "local", jobs=0, progress=False)
    on_ray = A.ablate(cfg, tmp_path / "ray", threads=1, progress=False, ray=cluster)
    assert on_ray["status"]["complete"] and on_ray["invocation"]["ray"] == cluster
    for arm in ("chaotic", "cmaes"):
        runs = [tmp_path / where / arm / "sigma0.1" / "seed0" for where in ("local", "ray")]
        summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
        assert summaries[0]["heldout"] == summaries[1]["heldout"]
        rows = [[{k: v for k, v in row.items() if k != "seconds"} for row in A.read_jsonl(r / "metrics.jsonl")] for r in runs]
        assert rows[0] == rows[1]
    assert [g["final"] for g in local["groups"]] == [g["final"] for g in on_ray["groups"]]


@pytest.mark.parametrize("gradient_weight", [0.0, 0.5])
def test_population_evaluation_on_actors_is_bit_identical(cluster: str, gradient_weight: float) -> None:
    torch.set_num_threads(1)  # the actors' thread count too
    net = LossNetConfig()
    objective = ObjectiveConfig(classes=(2, 200), blocks=2, evals_per_block=512, gradient_weight=gradient_weight)
    population = 2 * POPULATION_CHUNK + 88  # three chunks, the last one short
    theta = torch.randn(population, net.num_params, generator=torch.Generator().manual_seed(3)) * init_scale(net)
    batches = sample_batches(objective, torch.Generator().manual_seed(4))
    local = evaluate_population(theta, net, batches, objective)
    with D.RayEvaluator(actors=2, address=cluster, threads=1) as evaluator:
        remote = evaluator(theta, net, batches, objective)
    assert set(remote) == set(local)
    for name in local:
        assert remote[name].shape == (population,) and torch.equal(remote[name], local[name]), name


def test_pretrain_cli_with_ray_actors_reproduces_the_local_run(cluster: str, tiny_pretrain_config: PretrainConfig,
                                                               tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = replace(tiny_pretrain_config, es=replace(tiny_pretrain_config.es, population=POPULATION_CHUNK + 44, generations=3))
    pretrain(cfg, tmp_path / "local", progress=False)
    (tmp_path / "config.json").write_text(json.dumps(to_dict(cfg)))
    assert cli_main(["pretrain", "--config", str(tmp_path / "config.json"), "--out", str(tmp_path / "ray"), "--ray", cluster,
                     "--ray-actors", "2", "--threads", "1", "--quiet"]) == 0
    rows = [[{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("local", "ray")]
    assert len(rows[0]) == 3 and rows[0] == rows[1]
    nets = [EDLLoss.from_file(tmp_path / d / "loss").net.state_dict() for d in ("local", "ray")]
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])
