#!/usr/bin/env python3
"""PyTorch reference for crates/kernels/benches/train_throughput.rs.

Same models (MLP 784-256-128-10 ReLU; CNN conv3x3(32,pad 1)-relu-maxpool2-conv3x3(64,pad 1)-
relu-maxpool2-dense128-relu-dense10), batch 64, Adam(lr=1e-3, eps=1e-8), 2 threads, 50 warm-up
steps then the same number of measured steps, shuffled batches gathered from an in-memory
tensor (MNIST 10k subset if present, else random pixels). Prints the same table format.

    python3 benches/pytorch_reference.py [mlp] [cnn]
"""
import gzip
import os
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 64
WARMUP = 50
THREADS = int(os.environ.get("RAYON_NUM_THREADS", "2"))


def load_mnist():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "mnist10k")
    try:
        with gzip.open(os.path.join(root, "images-idx3-ubyte.gz")) as f:
            _, n, h, w = struct.unpack(">IIII", f.read(16))
            x = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).float().div(255).view(n, 1, h, w)
        with gzip.open(os.path.join(root, "labels-idx1-ubyte.gz")) as f:
            f.read(8)
            y = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()
        return x, y
    except FileNotFoundError:
        g = torch.Generator().manual_seed(1)
        return torch.rand(10_000, 1, 28, 28, generator=g), torch.arange(10_000) % 10


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(784, 256), nn.Linear(256, 128), nn.Linear(128, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.l3(F.relu(self.l2(F.relu(self.l1(x)))))


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1)
        self.d1 = nn.Linear(64 * 7 * 7, 128)
        self.d2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.d2(F.relu(self.d1(x.flatten(1))))


def bench(model, steps, x, y):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8)
    n = x.shape[0]
    perm = torch.randperm(n)
    pos = 0
    start = None
    for step in range(WARMUP + steps):
        if step == WARMUP:
            start = time.perf_counter()
        if pos + BATCH > n:
            perm, pos = torch.randperm(n), 0
        idx = perm[pos:pos + BATCH]
        pos += BATCH
        xb, yb = x[idx], y[idx]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        loss.item()  # the Rust loop reads the loss every step as well (log_every_steps = 1)
    return steps * BATCH / (time.perf_counter() - start)


def main():
    torch.set_num_threads(THREADS)
    x, y = load_mnist()
    wanted = [a for a in sys.argv[1:] if not a.startswith("-")]
    print(f"{'model':<6} {'batch':>6} {'threads':>8} {'steps':>7} {'samples/s':>12}")
    for name, ctor, steps in [("mlp", Mlp, 500), ("cnn", Cnn, 150)]:
        if wanted and not any(w in name for w in wanted):
            continue
        sps = bench(ctor(), steps, x, y)
        print(f"{name:<6} {BATCH:>6} {THREADS:>8} {steps:>7} {sps:>12.0f}   (torch {torch.__version__})")


if __name__ == "__main__":
    main()
