"""A small real training loop for the job-layer tests, and worker processes around it.

:class:`DigitsSoftmax` trains a dropout + linear softmax classifier on scikit-learn's
digits pixels with shuffled SGD mini-batches: every update draws randomness (shuffle,
dropout), so a resume that lost or repeated any RNG state would not end bit-identical.

Run as ``python tests/_job_workers.py run URL LR DELAY`` to drive one job to the end
(printing ``step N`` as it goes), the way a team member's process does.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from featcache.jobs import EpochEnd, JobSpec, Step, make_job

EPOCHS, BATCH = 3, 64


def digits_job(lr: float = 0.05, *, seed: int = 0, epochs: int = EPOCHS, tag: str = "") -> JobSpec:
    point = {"lr": lr, "epochs": epochs}
    return make_job(
        "toy",
        "softmax",
        "digits",
        {"point": point, "seed": seed, "tag": tag},
        params={"protocol": "toy", "seed": seed},
        point=point,
        label=f"lr={lr:g}",
    )


class DigitsSoftmax:
    """A real (tiny) trainer implementing featcache.jobs.Trainer."""

    def __init__(self, job: JobSpec, *, delay: float = 0.0, crash_after: int | None = None):
        import torch
        from sklearn.datasets import load_digits

        self.torch = torch
        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x / 16.0, dtype=torch.float32)
        y = torch.tensor(y, dtype=torch.int64)
        order = np.random.default_rng(0).permutation(len(y))
        self.train, self.val, self.test = order[:1200], order[1200:1500], order[1500:]
        self.x, self.y = x, y
        self.lr, self.epochs = float(job.point["lr"]), int(job.point["epochs"])
        self.seed = int(job.identity["seed"])
        torch.manual_seed(self.seed)
        self.model = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(64, 10))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=0.9)
        self.epoch, self.batch, self.step = 0, 0, 0
        self.loss_sum = 0.0  # of this epoch so far: part of the state, like the position
        self.delay, self.crash_after = delay, crash_after

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "rng": self.torch.get_rng_state(),
            "position": [self.epoch, self.batch, self.step],
            "loss_sum": self.loss_sum,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.torch.set_rng_state(state["rng"])
        self.epoch, self.batch, self.step = (int(v) for v in state["position"])
        self.loss_sum = float(state["loss_sum"])

    def _accuracy(self, rows: np.ndarray) -> float:
        self.model.eval()
        with self.torch.no_grad():
            pred = self.model(self.x[rows]).argmax(1)
        self.model.train()
        return float((pred == self.y[rows]).float().mean())

    def run(self) -> Iterator[Step | EpochEnd]:
        torch = self.torch
        n_batches = len(self.train) // BATCH
        while self.epoch < self.epochs:
            shuffle = torch.Generator().manual_seed(1000 * self.seed + self.epoch)
            perm = self.train[torch.randperm(len(self.train), generator=shuffle).numpy()]
            while self.batch < n_batches:
                rows = perm[self.batch * BATCH : (self.batch + 1) * BATCH]
                loss = torch.nn.functional.cross_entropy(self.model(self.x[rows]), self.y[rows])
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()
                self.loss_sum += float(loss.detach())
                self.batch += 1
                self.step += 1
                if self.crash_after is not None and self.step > self.crash_after:
                    raise RuntimeError("simulated crash")
                time.sleep(self.delay)
                yield Step(self.step, self.epoch)
            row = {"train_loss": self.loss_sum / n_batches}
            self.batch, self.loss_sum = 0, 0.0
            self.epoch += 1
            row["val_top1"] = self._accuracy(self.val)
            yield EpochEnd(self.epoch - 1, self.step, row)

    def evaluate(self) -> dict[str, float]:
        return {"val_top1": self._accuracy(self.val), "test_top1": self._accuracy(self.test)}

    def weights(self) -> Mapping[str, Any]:
        return self.model.state_dict()


def toy_records(job: JobSpec, metrics: Mapping[str, float]) -> list[Any]:
    from featcache.records import make_record

    return [
        make_record(
            backbone=job.backbone,
            task="classification",
            dataset=job.dataset,
            metric="top1",
            value=metrics["test_top1"],
            params=dict(job.params),
            cache_key=job.run_id,
        )
    ]


if __name__ == "__main__":
    import featcache
    from featcache.jobs import run_job

    cmd, url, lr, delay = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    if cmd != "run":
        raise SystemExit(f"unknown command {cmd}")

    class Loud(DigitsSoftmax):
        def run(self) -> Iterator[Step | EpochEnd]:
            for event in super().run():
                yield event
                print(f"step {self.step}", flush=True)

    out = run_job(
        featcache.open_store(url),
        digits_job(lr),
        lambda job: Loud(job, delay=delay),
        records=toy_records,
        checkpoint_every_steps=4,
        lease_ttl_s=30,
    )
    print(f"{out.status} {out.metrics['test_top1']!r}", flush=True)
