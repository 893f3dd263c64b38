#!/usr/bin/env python3
"""The Optuna + PyTorch side of benches/sweep_vs_optuna.sh: the search space of examples/mnist-sweep.toml.

24 trials, TPESampler(seed=1, n_startup_trials=8) + SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
at most 8 epochs, maximising the test-split accuracy after each epoch, 2 trials at once (n_jobs=2) with one torch
thread each (as aidos runs 2 one-core trials). Data as aidos splits it: the first 8,000 digits of data/mnist10k to
train, the last 2,000 to test, standardised with the training split's scalar mean and standard deviation.
Prints one JSON line: best accuracy, its params, wall seconds, epochs run and the full budget.

    python3 benches/optuna_mnist.py
"""
import json
import os
import sys
import threading
import time

import optuna
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_reference import load_mnist  # noqa: E402  (the same digits, read the same way)

TRIALS, EPOCHS, CONCURRENT = 24, 8, 2
torch.set_num_threads(1)
optuna.logging.set_verbosity(optuna.logging.WARNING)


def load():
    x, y = load_mnist()
    xt, yt, xv, yv = x[:8000], y[:8000], x[8000:], y[8000:]
    mean, std = xt.mean(), xt.std()
    return (xt - mean) / std, yt, (xv - mean) / std, yv


XT, YT, XV, YV = load()
EPOCHS_RUN = [0]
LOCK = threading.Lock()


class Mlp(nn.Module):
    def __init__(self, width, dropout):
        super().__init__()
        self.l1, self.l2, self.p = nn.Linear(784, width), nn.Linear(width, 10), dropout

    def forward(self, x):
        return self.l2(F.dropout(F.relu(self.l1(x.flatten(1))), self.p, self.training))


class Cnn(nn.Module):
    def __init__(self, ch, dropout):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, ch, 3, padding=1), nn.Conv2d(ch, ch, 3, padding=1)
        self.d1, self.d2, self.p = nn.Linear(ch * 7 * 7, 128), nn.Linear(128, 10), dropout

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.d2(F.dropout(F.relu(self.d1(x.flatten(1))), self.p, self.training))


def objective(trial):
    lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    batch = trial.suggest_categorical("batch_size", [32, 64, 128])
    dropout = trial.suggest_float("dropout", 0.0, 0.5)
    family = trial.suggest_categorical("model", ["mlp", "cnn"])
    if family == "mlp":
        model = Mlp(trial.suggest_int("width", 64, 512, step=64), dropout)
    else:
        model = Cnn(trial.suggest_categorical("channels", [16, 32, 64]), dropout)
    torch.manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-8)
    acc = 0.0
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(XT.shape[0])
        for i in range(0, XT.shape[0], batch):
            idx = perm[i:i + batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(XT[idx]), YT[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(XV).argmax(1) == YV).float().mean().item()
        with LOCK:
            EPOCHS_RUN[0] += 1
        trial.report(acc, epoch + 1)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return acc


start = time.perf_counter()
study = optuna.create_study(
    direction="maximize",
    sampler=optuna.samplers.TPESampler(seed=1, n_startup_trials=8),
    pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
)
study.optimize(objective, n_trials=TRIALS, n_jobs=CONCURRENT)
wall = time.perf_counter() - start
pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
print(json.dumps({
    "side": "optuna", "optuna": optuna.__version__, "torch": torch.__version__, "best": study.best_value,
    "params": study.best_params, "wall_s": round(wall, 1), "pruned": pruned,
    "epochs_run": EPOCHS_RUN[0], "epochs_full": TRIALS * EPOCHS,
}))
