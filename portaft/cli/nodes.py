"""`portaft run --nnodes N --node-rank R --master-addr HOST --master-port P`: one node of a
run over several machines, handed to torchrun's static rendezvous (the same arguments).

Each node runs the same command with its own --node-rank; --nproc is the processes on
each node. Node 0's first process writes the outputs (the run's RANK 0).
"""

from __future__ import annotations

from typing import Any

from portaft.errors import UserError

DEFAULT_PORT = 29500


def add_arguments(parser: Any) -> None:
    parser.add_argument("--nnodes", type=int, default=1, metavar="N",
                        help="machines training together; run the same command on each (torchrun --nnodes)")
    parser.add_argument("--node-rank", type=int, default=0, metavar="R", help="this machine's number, 0 to N-1")
    parser.add_argument("--master-addr", metavar="HOST", help="address of node 0, reachable from every node")
    parser.add_argument("--master-port", type=int, default=DEFAULT_PORT, metavar="P",
                        help=f"a free port on node 0 (default {DEFAULT_PORT})")


def several(args: Any) -> bool:
    """Whether this command starts processes through torchrun (several here, or several nodes)."""
    return args.nproc > 1 or args.nnodes > 1


def torchrun_arguments(args: Any) -> list[str]:
    """torchrun's arguments for this node; a user error where they cannot make one run."""
    if args.nnodes < 1:
        raise UserError(f"--nnodes {args.nnodes}: give a number of machines, 1 or more.")
    if args.nnodes == 1:
        return ["--standalone", f"--nproc-per-node={args.nproc}"]
    if not 0 <= args.node_rank < args.nnodes:
        raise UserError(f"--node-rank {args.node_rank}: with --nnodes {args.nnodes} give 0 to {args.nnodes - 1}, "
                        "a different one on each machine.")
    if not args.master_addr:
        raise UserError(f"--nnodes {args.nnodes}: give --master-addr, the address of node 0 (--node-rank 0) that "
                        "every machine can reach.")
    if not 0 < args.master_port < 65536:
        raise UserError(f"--master-port {args.master_port}: give a port number from 1 to 65535.")
    return [f"--nnodes={args.nnodes}", f"--node-rank={args.node_rank}", f"--master-addr={args.master_addr}",
            f"--master-port={args.master_port}", f"--nproc-per-node={args.nproc}"]


def describe(args: Any) -> str:
    if args.nnodes == 1:
        return f"{args.nproc} processes"
    return (f"{args.nproc} process{'es' if args.nproc > 1 else ''} on node {args.node_rank} of {args.nnodes} "
            f"(node 0 at {args.master_addr}:{args.master_port})")
