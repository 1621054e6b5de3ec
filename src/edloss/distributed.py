"""Running on a Ray cluster: grids of runs as Ray tasks, population evaluation on Ray actors.

Ray is an optional extra (``pip install 'edloss[ray]'``); this module imports it only inside
its functions, and nothing else in edloss imports this module unless ``--ray`` is given.

* :func:`connect` joins a cluster (``HOST:PORT``, ``ray://HOST:PORT``, ``auto`` or ``local``)
  after checking within seconds that a gRPC server answers there, so a wrong address is an
  error, not a hang. ``auto``: ``$RAY_ADDRESS`` if set, else the cluster ``ray start`` recorded
  on this machine if it answers (Ray then also finds the token of a token-authenticated
  cluster), else a new local cluster. A local cluster started here listens on 127.0.0.1 only
  and has no dashboard; for more machines, start one with ``ray start --head``. An explicit
  address of a token-authenticated cluster (``ray start``'s default since Ray 2.5x) needs
  ``RAY_AUTH_MODE=token`` and the token, as Ray documents.
* :func:`run_tasks` runs ``fn(payload)`` for every payload as a Ray task with its CPUs and GPUs
  declared. ``edloss compare`` and ``edloss ablate`` pass their ordinary one-run functions, so a
  task writes into its run folder exactly as a local run does (the folder must be on a file
  system every node shares), and a grid half done locally finishes on Ray and vice versa. A task
  whose worker dies (killed, out of memory, node lost) is retried, resuming from its run's
  checkpoint; a task that raises is reported, and the rest of the grid goes on.
* :class:`RayEvaluator` scores a population on Ray actors, each taking whole chunks of
  ``objectives.ranking.POPULATION_CHUNK`` individuals on the same synthetic batches; the metrics are
  bit-identical to ``objectives.ranking.evaluate_population`` in one process with the same number of
  torch threads on the same CPU type (thread count and instruction set can change the last bits
  of a float, in Ray or not).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

CONNECT_TIMEOUT_S = 3.0
MAX_RETRIES = 3  # re-runs of a task whose worker died; a task that raised is not retried
GCS_PORT = 6379  # Ray's default head port
CLIENT_PORT = 10001  # Ray Client's default port (ray://)
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a local cluster binds 127.0.0.1 only


# ---------------------------------------------------------------------- connecting
def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``ray://HOST[:PORT]`` or ``HOST`` -> (host, port)."""
    text = address.strip()
    client = text.startswith("ray://")
    if client:
        text = text[len("ray://"):]
    if "://" in text or not text or "/" in text:
        raise ValueError(f"cannot read Ray address {address!r}; give HOST:PORT (the head node's GCS port, "
                         f"{GCS_PORT} by default), ray://HOST:PORT, auto or local")
    if text.startswith("["):  # [::1]:6379
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not port_text:
        return host, CLIENT_PORT if client else GCS_PORT
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"cannot read the port of Ray address {address!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} of Ray address {address!r} is out of range")
    return host, port


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ValueError within ~``timeout`` seconds unless a gRPC server (Ray's GCS) answers at ``address``.

    ``ray.init`` keeps retrying an address that does not answer, or where something else listens
    (a dashboard port, a typo), for minutes; this check makes those an immediate, clear error.
    It opens a TCP connection and, unless the cluster uses TLS (``RAY_USE_TLS``), sends the
    HTTP/2 connection preface: a gRPC server answers with a SETTINGS frame.
    """
    host, port = split_address(address)
    where = address if address == f"{host}:{port}" else f"{address} ({host}:{port})"
    hint = "start one with `ray start --head` or use --ray auto"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        reason = "timed out" if isinstance(err, socket.timeout) else (err.strerror or str(err))
        raise ValueError(f"cannot reach Ray cluster at {where}: {reason}; {hint}") from None
    with sock:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return
        try:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
            frame = sock.recv(9)
        except OSError:
            frame = b""
    if len(frame) < 4 or frame[3] != 4:  # byte 3 of an HTTP/2 frame header: its type; 4 = SETTINGS
        raise ValueError(f"cannot reach Ray cluster at {where}: something listens there but it is not a Ray "
                         f"cluster (no gRPC answer); give the head node's GCS port ({GCS_PORT} by default, not "
                         f"the dashboard's), or {hint}")


def recorded_cluster() -> str | None:
    """The address ``ray start`` recorded on this machine (Ray's ``ray_current_cluster`` file), if any."""
    base = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None) or "/tmp"
    path = Path(base) / "ray" / "ray_current_cluster"
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


def resolve_address(address: str | None) -> str | None:
    """The cluster to join, checked reachable, or None for "start a local one"."""
    if address in (None, "", "local"):
        return None
    if address == "auto":
        env = os.environ.get("RAY_ADDRESS", "").strip()
        if env and env not in ("auto", "local"):
            check_reachable(env)
            return env
        recorded = recorded_cluster()
        if recorded:
            try:
                check_reachable(recorded, timeout=1.0)
                return recorded
            except ValueError:
                pass  # a cluster stopped without `ray stop`: start a fresh local one
        return None
    check_reachable(address)
    return address


def _loopback_only(address: str) -> bool:
    """True for a cluster that listens on 127.0.0.1 only (started with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``).

    Ray rewrites a loopback address to this machine's network address before dialling it, which
    reaches only clusters listening on every interface; for a loopback-only cluster this process
    must run in Ray's loopback mode too.
    """
    host, port = split_address(address)
    try:
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            return False
    except ValueError:
        return False
    try:  # the address Ray would rewrite to: the interface that routes outwards (no packet is sent)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("8.8.8.8", 80))
            node_ip = probe.getsockname()[0]
        with socket.create_connection((node_ip, port), timeout=1.0):
            return False
    except OSError:
        return True


def connect(address: str | None = "auto", num_cpus: int | None = None) -> bool:
    """Join (or start) a Ray cluster; returns True when this call initialised Ray.

    ``num_cpus`` sizes a local cluster started here (default: every core); a running cluster
    keeps its own resources. If this process is already connected, the connection is reused.
    """
    target = resolve_address(address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if target is None or _loopback_only(target):
        os.environ.setdefault(LOOPBACK_ENV, "0")  # read when ray is first imported
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs the Ray extra: pip install 'edloss[ray]'") from None
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    if target is None:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
        return True
    # "auto" lets Ray find the cluster itself: then it also uses the token `ray start` wrote
    # (~/.ray/auth_token), which it never does for an explicit address.
    found = address == "auto" and target == recorded_cluster() and not os.environ.get("RAY_ADDRESS")
    try:
        ray.init(address="auto" if found else target, **quiet)
    except (ConnectionError, RuntimeError) as err:
        cause = err.__cause__ or err
        lines = [line for line in str(cause).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(cause).__name__
        if "auth" in reason.lower():  # Ray >= 2.5x: `ray start` turns token authentication on
            reason = reason.split(". ")[0] + ". The cluster uses token authentication: export RAY_AUTH_MODE=token " \
                "with its token in ~/.ray/auth_token or $RAY_AUTH_TOKEN, or use --ray auto on the head node"
        raise ValueError(f"cannot connect to Ray cluster at {target}: {reason}") from None
    return True


def shutdown(started: bool) -> None:
    """Disconnect if :func:`connect` initialised Ray (a caller's own connection is left alone)."""
    if started:
        import ray

        ray.shutdown()


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def gpus_for(device: str) -> int:
    """GPUs a training task declares: 1 for cuda, 0 for cpu, and for ``auto`` 1 if the cluster has any."""
    if device.startswith("cuda"):
        return 1
    if device == "auto":
        return 1 if cluster_gpus() > 0 else 0
    return 0


# ---------------------------------------------------------------------- tasks
def _call(fn: Callable[[Any], Any], payload: Any, threads: int) -> Any:
    """What a Ray worker runs: ``fn(payload)`` with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    return fn(payload)


def _message(err: BaseException) -> str:
    cause = getattr(err, "cause", None)  # RayTaskError wraps the task's own exception
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


def run_tasks(fn: Callable[[Any], Any], payloads: Sequence[Any], *, address: str | None = "auto",
              num_cpus: float = 1, num_gpus: float = 0, max_retries: int = MAX_RETRIES,
              on_result: Callable[[Any, Any], None] | None = None,
              on_error: Callable[[Any, str], None] | None = None) -> list[tuple[Any, Any, str | None]]:
    """Run ``fn(payload)`` for every payload as a Ray task, in submission order as resources allow.

    ``fn`` must be importable on the workers (a module-level function of an installed package).
    Each task declares ``num_cpus`` (also its torch thread count) and ``num_gpus``. A task whose
    worker process dies is re-run up to ``max_retries`` times; one that raises is not retried:
    ``on_error(payload, message)`` reports it and the other tasks go on. ``on_result(payload,
    result)`` runs on this process as each task finishes. Returns (payload, result, error) per
    payload in completion order.
    """
    if not payloads:
        return []
    started = connect(address)
    import ray

    try:
        remote = ray.remote(_call).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries,
                                           retry_exceptions=False)
        threads = max(1, int(num_cpus))
        pending = {remote.remote(fn, payload, threads): payload for payload in payloads}
        done: list[tuple[Any, Any, str | None]] = []
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                payload = pending.pop(ready[0])
                try:
                    result, error = ray.get(ready[0]), None
                except Exception as err:  # noqa: BLE001 - a RayTaskError or a lost worker: reported, the grid goes on
                    result, error = None, _message(err)
                done.append((payload, result, error))
                if error is None and on_result is not None:
                    on_result(payload, result)
                elif error is not None and on_error is not None:
                    on_error(payload, error)
        except BaseException:
            for ref in pending:  # interrupted: stop what is still queued or running
                ray.cancel(ref, force=True)
            raise
        return done
    finally:
        shutdown(started)


# ---------------------------------------------------------------------- population evaluation
def _scorer_class():
    import ray

    @ray.remote(max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES)
    class Scorer:
        """Holds nothing but code: each call scores one slice of the population."""

        def __init__(self, threads: int) -> None:
            torch.set_num_threads(threads)

        def score(self, theta: torch.Tensor, shared: tuple) -> dict[str, torch.Tensor]:
            from edloss.objectives.ranking import evaluate_population

            batches, net, objective = shared
            return evaluate_population(theta, net, batches, objective)

    return Scorer


class RayEvaluator:
    """``objectives.ranking.evaluate_population`` spread over Ray actors; a drop-in ``pretrain(evaluator=...)``.

    Each generation the synthetic batches go to the object store once; every actor receives a
    contiguous run of whole population chunks and returns its individuals' metrics, which are
    concatenated in order. Every individual is thus computed in the same chunk, with the same
    shapes, as in one process: the result is bit-identical to a local run with ``threads``
    torch threads on the same CPU type. A dead actor is restarted and its call retried.
    """

    def __init__(self, actors: int | None = None, address: str | None = "auto", threads: int = 1) -> None:
        if threads < 1 or (actors is not None and actors < 1):
            raise ValueError(f"need actors >= 1 and threads >= 1, got {actors} and {threads}")
        self._started = connect(address)
        import ray

        if actors is None:
            actors = max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
        self.threads = threads
        scorer = _scorer_class()
        self.actors = [scorer.options(num_cpus=threads).remote(threads) for _ in range(actors)]

    def __call__(self, theta: torch.Tensor, net: Any, batches: list, objective: Any) -> dict[str, torch.Tensor]:
        import ray

        from edloss.objectives.ranking import POPULATION_CHUNK

        chunks = -(-theta.shape[0] // POPULATION_CHUNK)
        used = min(len(self.actors), chunks)
        bounds = [min(theta.shape[0], (chunks * i // used) * POPULATION_CHUNK) for i in range(used + 1)]
        shared = ray.put((batches, net, objective))
        parts = ray.get([actor.score.remote(theta[a:b].contiguous(), shared)
                         for actor, a, b in zip(self.actors, bounds[:-1], bounds[1:])])
        return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        shutdown(self._started)
        self._started = False

    def __enter__(self) -> RayEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

