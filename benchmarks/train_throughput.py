"""Stage-2 training throughput: this project's loop against a loop written the seed's way.

    python benchmarks/train_throughput.py --device cpu        # about a minute on 2 cores
    python benchmarks/train_throughput.py --device cuda --width 1.0 --blocks 152600 --epochs 2
    python benchmarks/train_throughput.py --device cpu --concurrent 2   # two trainings at once

The seed's way (the original research scripts): a per-sample ``Dataset`` that
applies random flips/rotations to each block in Python, a ``DataLoader`` with
worker processes, a ``WeightedRandomSampler``, and the plain model. This
project's way: blocks resident on the device, sampled and augmented by index
batches, the frozen prefix computed once per dihedral variant, and exact
1x1-output fast paths for the convolutions. Same model, same batch size, same
optimiser; synthetic 10-bit blocks and labels (throughput does not depend on
them). Each loop runs ``--repeats`` times, the two loops taking turns, and the
figures are medians (with the range): one run of each swings by 20-30% with the
host's load. The last line is ``speedup_vs_seed_loop=<ratio of the medians>``.

``--concurrent N`` measures instead what N trainings at once get, each in a process
of its own with the thread budget the commands use (the cores divided by N, or
``--threads``), against one training alone with all of them: this project's loop
only, started together. The last line is then ``concurrent_fraction_of_alone=<r>``,
the slowest of the N against the one alone (1/N would be a fair share of a machine
that was already fully used; the collapse without a budget was about 0.01).
"""
from __future__ import annotations

import argparse
import multiprocessing
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from av1_ablation.losses import build_loss  # noqa: E402
from av1_ablation.models import ADAPTER_GROUP, HEAD_GROUP, Backbone, Stage2Model, set_fast_paths  # noqa: E402
from av1_ablation.training.prefix import prefix_features  # noqa: E402
from av1_ablation.training.tensors import N_DIHEDRAL, DeviceBlocks, epoch_generator, epoch_order  # noqa: E402
from av1_ablation.training.threads import apply_thread_budget, default_threads  # noqa: E402


class SeedStyleDataset(torch.utils.data.Dataset):
    """One block at a time, augmented with Python's random module, as the original did."""

    def __init__(self, blocks, labels):
        self.blocks, self.labels = blocks, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = torch.from_numpy(self.blocks[i].astype(np.float32) / 1023.0)[None]
        if random.random() < 0.5:
            x = torch.flip(x, dims=[2])
        if random.random() < 0.5:
            x = torch.flip(x, dims=[1])
        if random.random() < 0.5:
            x = torch.rot90(x, random.randint(0, 3), dims=[1, 2])
        return x, int(self.labels[i])


def make_model(width, device, fast):
    model = Stage2Model(Backbone(width), width=width).to(device)
    return set_fast_paths(model, fast)


def optimiser(model):
    groups = model.parameter_groups()
    return torch.optim.AdamW([{"params": groups[ADAPTER_GROUP], "lr": 1e-3},
                              {"params": groups[HEAD_GROUP], "lr": 1e-4}], weight_decay=0.01)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def seed_loop(blocks, labels, args, device):
    model = make_model(args.width, device, fast=False)
    model.train()
    criterion = build_loss("baseline", np.bincount(labels, minlength=3)).to(device)
    opt = optimiser(model)
    weights = 1.0 / np.bincount(labels)[labels]
    sampler = torch.utils.data.WeightedRandomSampler(weights, len(labels), replacement=True)
    loader = torch.utils.data.DataLoader(SeedStyleDataset(blocks, labels), batch_size=args.batch_size,
                                         sampler=sampler, num_workers=args.workers,
                                         pin_memory=device.type == "cuda",
                                         persistent_workers=args.workers > 0)
    seen, start = 0, None
    for epoch in range(args.epochs):
        for step, (x, y) in enumerate(loader):
            if start is None and step == args.warmup:
                sync(device)
                start, seen = time.perf_counter(), 0
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = criterion(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
    sync(device)
    return seen / (time.perf_counter() - start)


def project_loop(blocks, labels, args, device):
    model = make_model(args.width, device, fast=True)
    criterion = build_loss("baseline", np.bincount(labels, minlength=3)).to(device)
    opt = optimiser(model)
    data = DeviceBlocks(blocks, labels, device)
    t0 = time.perf_counter()
    cache = prefix_features(model, data, True, 8192)
    sync(device)
    cache_seconds = time.perf_counter() - t0
    model.train()
    seen, start = 0, None
    for epoch in range(1, args.epochs + 1):
        gen = epoch_generator(0, epoch)
        order = epoch_order(data.targets, "balanced", gen)
        variants = torch.randint(0, N_DIHEDRAL, (len(order),), generator=gen).to(device)
        for step, i in enumerate(range(0, len(order), args.batch_size)):
            if start is None and step == args.warmup:
                sync(device)
                start, seen = time.perf_counter(), 0
            idx = order[i:i + args.batch_size]
            loss = criterion(model.forward_from_prefix(cache[variants[i:i + args.batch_size], idx]),
                             data.targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
    sync(device)
    return seen / (time.perf_counter() - start), cache_seconds


def synthetic_data(n_blocks: int):
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 1024, size=(n_blocks, 16, 16), dtype=np.uint16)
    labels = rng.choice(3, size=n_blocks, p=[0.157, 0.468, 0.375])
    return blocks, labels


def _concurrent_worker(args, threads, start, results):
    """One training of a concurrent measurement, in a process of its own."""
    apply_thread_budget(threads)  # before any tensor work, as the commands do
    torch.manual_seed(0)
    blocks, labels = synthetic_data(args.blocks)
    start.wait()  # every training starts its loop together
    results.put(project_loop(blocks, labels, args, torch.device(args.device))[0])


def measure_at_once(args, n: int, threads: int) -> list[float]:
    """blocks/s of each of ``n`` trainings run at once, each with ``threads`` threads."""
    ctx = multiprocessing.get_context("spawn")  # a fresh torch per process, as separate runs have
    start, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_concurrent_worker, args=(args, threads, start, results))
             for _ in range(n)]
    for proc in procs:
        proc.start()
    rates = [results.get() for _ in procs]
    for proc in procs:
        proc.join()
    return sorted(rates)


def concurrent_main(args) -> None:
    alone_threads = args.threads or default_threads(1)
    shared_threads = args.threads or default_threads(args.concurrent)
    print(f"device {args.device}, torch {torch.__version__}, width {args.width}, {args.blocks} blocks "
          f"x {args.epochs} epoch(s), batch {args.batch_size}; this project's loop only")
    (alone,) = measure_at_once(args, 1, alone_threads)
    print(f"one training alone ({alone_threads} threads): {alone:10.0f} blocks/s")
    rates = measure_at_once(args, args.concurrent, shared_threads)
    print(f"{args.concurrent} trainings at once ({shared_threads} threads each): "
          + ", ".join(f"{r:.0f}" for r in rates) + " blocks/s")
    print(f"concurrent_fraction_of_alone={rates[0] / alone:.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--blocks", type=int, default=20000, help="training blocks per epoch")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the seed-style loop")
    p.add_argument("--warmup", type=int, default=3, help="batches excluded from the timing")
    p.add_argument("--repeats", type=int, default=5, help="runs of each loop, taking turns (default 5)")
    p.add_argument("--concurrent", type=int, default=1, metavar="N",
                   help="measure N trainings at once against one alone (default 1: the seed comparison)")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="threads per training with --concurrent (default: the cores divided by the "
                        "trainings at once; the number of cores reproduces the unbudgeted case)")
    args = p.parse_args()
    if args.concurrent < 1 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        p.error("--concurrent, --repeats and --threads must be >= 1")
    if args.concurrent > 1:
        concurrent_main(args)
        return
    device = torch.device(args.device)
    torch.manual_seed(0)
    random.seed(0)
    blocks, labels = synthetic_data(args.blocks)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, width {args.width}, "
          f"{args.blocks} blocks x {args.epochs} epoch(s), batch {args.batch_size}")
    seeds, ours_all, caches = [], [], []
    for _ in range(args.repeats):  # taking turns, so that a drift of the host's load hits both
        seeds.append(seed_loop(blocks, labels, args, device))
        rate, cache_seconds = project_loop(blocks, labels, args, device)
        ours_all.append(rate)
        caches.append(cache_seconds)
    seed, ours, cache_seconds = (float(np.median(v)) for v in (seeds, ours_all, caches))
    print(f"seed-style loop:   {seed:10.0f} blocks/s (median of {args.repeats}; {min(seeds):.0f}-{max(seeds):.0f})")
    print(f"project loop:      {ours:10.0f} blocks/s (median of {args.repeats}; {min(ours_all):.0f}-"
          f"{max(ours_all):.0f}; prefix cache built in {cache_seconds:.2f} s)")
    print(f"epoch time at {args.blocks} blocks: seed {args.blocks / seed:.2f} s, project "
          f"{args.blocks / ours:.2f} s")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"speedup_vs_seed_loop={ours / seed:.2f}")


if __name__ == "__main__":
    main()
