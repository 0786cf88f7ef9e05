"""Which part of a dataset this process runs: launchers, partition, device.

`detect_shard` reads the rank and world size the usual launchers export:
torchrun (RANK, WORLD_SIZE, LOCAL_RANK), Open MPI (OMPI_COMM_WORLD_RANK,
_SIZE, _LOCAL_RANK), MPICH/Intel MPI (PMI_RANK, PMI_SIZE, MPI_LOCALRANKID)
and SLURM (SLURM_PROCID, SLURM_STEP_NUM_TASKS - the tasks of this srun
step - or SLURM_NTASKS, SLURM_LOCALID), in that order; an explicit shard
(``(i, n)`` or ``"i/n"``, i counted from 0) wins over all of them.  A rank
variable without its world size (RANK but no WORLD_SIZE) is refused with a
ShardError rather than silently run as one process.

`partition` splits rows into n parts deterministically: rows that show the
same picture form a group (MMBench rotations, MME pairs), groups are taken
in order of first appearance and cut into n contiguous blocks of about
equal row counts, so a picture is encoded on one device only.

`resolve_device` maps "cuda" to ``cuda:<local rank>`` under a launcher,
or to cuda:0 when CUDA_VISIBLE_DEVICES leaves the process one GPU.
"""

import itertools
import os
from collections import namedtuple

from .errors import ShardError

ShardInfo = namedtuple("ShardInfo", "rank world local_rank source")

_LAUNCHERS = [
    ("torchrun", "RANK", ("WORLD_SIZE",), "LOCAL_RANK"),
    ("openmpi", "OMPI_COMM_WORLD_RANK", ("OMPI_COMM_WORLD_SIZE",), "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("mpich", "PMI_RANK", ("PMI_SIZE",), "MPI_LOCALRANKID"),
    ("slurm", "SLURM_PROCID", ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"), "SLURM_LOCALID"),
]


def _int_env(environ, name):
    v = environ.get(name)
    if v is None or v.strip() == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ShardError(f"environment variable {name}={v!r} is not an integer") from None


def parse_shard(shard):
    """(i, n) from "i/n" or a pair; i counts from 0."""
    if isinstance(shard, str):
        parts = shard.split("/")
        if len(parts) != 2:
            raise ShardError(f"shard {shard!r}: expected i/n, e.g. 0/4")
        try:
            i, n = int(parts[0]), int(parts[1])
        except ValueError:
            raise ShardError(f"shard {shard!r}: expected two integers i/n") from None
    else:
        try:
            i, n = (int(x) for x in shard)
        except (TypeError, ValueError):
            raise ShardError(f"shard {shard!r}: expected (i, n) or 'i/n'") from None
    if n < 1 or not 0 <= i < n:
        raise ShardError(f"shard {i}/{n}: need n >= 1 and 0 <= i < n (i counts from 0)")
    return i, n


def local_rank_from_env(environ=None):
    environ = os.environ if environ is None else environ
    return next((v for v in (_int_env(environ, local) for *_, local in _LAUNCHERS) if v is not None), None)


def detect_shard(shard=None, environ=None):
    """ShardInfo(rank, world, local_rank, source) for this process."""
    environ = os.environ if environ is None else environ
    if shard is not None:
        i, n = parse_shard(shard)
        return ShardInfo(i, n, local_rank_from_env(environ), "explicit")
    for source, rank_var, world_vars, local_var in _LAUNCHERS:
        rank = _int_env(environ, rank_var)
        if rank is None:
            continue
        world = next((w for w in (_int_env(environ, v) for v in world_vars) if w is not None), None)
        if world is None:
            # a rank without a world size: running everything as one process would silently
            # duplicate the work of every other rank, so refuse
            raise ShardError(
                f"{source}: {rank_var}={rank} is set but {' / '.join(world_vars)} is not; set it, "
                f"unset {rank_var}, or pass an explicit shard (--shard i/n)")
        if world < 1 or not 0 <= rank < world:
            raise ShardError(f"{source}: rank {rank} of world size {world} is out of range")
        local = _int_env(environ, local_var)
        return ShardInfo(rank, world, local, source)
    return ShardInfo(0, 1, None, "single")


def partition(keys, n):
    """Shard number (0..n-1) for each row, given each row's image key (None: alone)."""
    first, group_of, sizes = {}, [], []
    for key in keys:
        g = len(sizes) if key is None else first.setdefault(key, len(sizes))
        if g == len(sizes):  # a new group
            sizes.append(0)
        sizes[g] += 1
        group_of.append(g)
    starts = [0, *itertools.accumulate(sizes)][:-1]  # the rows before each group
    shard_of_group = [min(n - 1, (start * n) // len(keys)) for start in starts]
    return [shard_of_group[g] for g in group_of]


def resolve_device(device, local_rank, environ=None):
    """'cuda' -> 'cuda:<local_rank>' for launched processes; other devices unchanged."""
    environ = os.environ if environ is None else environ
    if device != "cuda" or local_rank is None:
        return device
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and len([v for v in visible.split(",") if v.strip()]) == 1:
        return "cuda:0"
    return f"cuda:{local_rank}"
