r"""Train the packaged ``tiny_lm`` on the bundled Shakespeare; write ``minquant/data/tiny_lm.npz``.

The recipe (about nanoGPT's CPU "baby GPT", with Llama's blocks): random windows of 128
characters from ``load_text("train")``, batches of 8, Adam (betas 0.9, 0.99), the learning
rate warmed up linearly for 100 steps then decayed along a cosine to ``MIN_LR``, gradients
clipped to a global norm of 1. Every ``EVAL_EVERY`` steps the loss on the first 8,192
validation characters is printed; at the end the loss on the whole validation play.

The table shows wall time and the process's CPU time: on a shared machine the wall time
grows with the other load, the CPU time (one thread) is what the training costs.

Reproducible bit for bit on one machine: fixed seeds and one BLAS thread (OpenBLAS splits a
matrix product differently across threads, which changes float32 sums). Another CPU may pick
another BLAS kernel and give other bits (the loss agrees to about 1e-3).

Usage: ``python benchmarks/make_pretrained_lm.py [--out PATH] [--steps N]``.
"""

import os

# NOTE: set before NumPy loads OpenBLAS; one thread is what makes the run bit-reproducible.
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"

import argparse
import dataclasses
import math
import pathlib
import time

import numpy as np

from minquant import nn
from minquant.data import encode, load_text
from minquant.llm import next_token_loss
from minquant.models import tiny_lm
from minquant.train import save

SEED = 0
STEPS = 2400
BATCH_SIZE = 8  # windows per step (of config.max_seq_len + 1 characters)
LR = 2e-3  # peak learning rate
MIN_LR = 1e-4  # the cosine ends here
WARMUP_STEPS = 100
BETAS = (0.9, 0.99)  # beta2 0.99 as nanoGPT for small batches
CLIP_NORM = 1.0
EVAL_EVERY = 200
EVAL_TOKENS = 8193  # the first 8,192 predictions of the validation play, for the table
DEFAULT_OUT = pathlib.Path(__file__).parents[1] / "minquant" / "data" / "tiny_lm.npz"


def learning_rate(step: int, steps: int) -> float:
    r"""Linear warmup to ``LR``, then cosine decay to ``MIN_LR`` at ``steps`` (step from 0).

    $$\eta_s = \eta_{min} + \tfrac{1}{2}(\eta - \eta_{min})(1 + \cos(\pi\,
    \tfrac{s - s_w}{S - s_w}))$$
    """
    if step < WARMUP_STEPS:
        return LR * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
    return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * progress))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()

    train = encode(load_text("train"))  # (922683,)
    val = encode(load_text("val"))  # (95857,)
    model = tiny_lm(rng=np.random.default_rng(SEED))
    config = model.config
    context = config.max_seq_len
    optimizer = nn.Adam(model.parameters(), lr=LR, betas=BETAS)
    batch_rng = np.random.default_rng(SEED + 1)
    offsets = np.arange(context + 1)  # (T + 1,)
    print(f"tiny_lm {config}")
    print(f"{sum(p.data.size for p in model.parameters())} parameters, {args.steps} steps")
    print(f"{'step':>6} {'lr':>9} {'train loss':>10} {'val loss':>9} {'wall s':>8} {'cpu s':>8}")
    start, cpu_start = time.perf_counter(), time.process_time()
    running = []
    for step in range(args.steps):
        starts = batch_rng.integers(0, len(train) - context, size=BATCH_SIZE)  # (B,)
        windows = train[starts[:, None] + offsets]  # (B, T + 1)
        optimizer.lr = learning_rate(step, args.steps)
        model.train()
        logits = model(windows[:, :-1])  # (B, T, vocab)
        loss, dlogits = nn.cross_entropy(
            logits.reshape(-1, config.vocab_size), windows[:, 1:].reshape(-1)
        )
        optimizer.zero_grad()
        model.backward(dlogits.reshape(logits.shape))
        nn.clip_grad_norm(model.parameters(), CLIP_NORM)
        optimizer.step()
        running.append(loss)
        if (step + 1) % EVAL_EVERY == 0 or step + 1 == args.steps:
            model.eval()
            val_loss = next_token_loss(model, val[:EVAL_TOKENS])
            seconds = time.perf_counter() - start
            cpu_seconds = time.process_time() - cpu_start
            train_loss = float(np.mean(running))
            print(
                f"{step + 1:>6} {optimizer.lr:>9.2e} {train_loss:>10.4f} {val_loss:>9.4f} "
                f"{seconds:>8.1f} {cpu_seconds:>8.1f}",
                flush=True,
            )
            running = []
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    model.eval()
    val_loss = next_token_loss(model, val)
    eval_seconds = time.perf_counter() - start - seconds
    metadata = {f"config.{k}": v for k, v in dataclasses.asdict(config).items()}
    save(
        model,
        args.out,
        val_loss=val_loss,
        seed=SEED,
        steps=args.steps,
        batch_size=BATCH_SIZE,
        lr=LR,
        min_lr=MIN_LR,
        warmup_steps=WARMUP_STEPS,
        clip_norm=CLIP_NORM,
        train_seconds=seconds,
        train_cpu_seconds=cpu_seconds,
        **metadata,
    )
    print(f"final validation loss {val_loss:.4f} nats/char (perplexity {math.exp(val_loss):.3f})")
    print(f"on all {len(val) - 1} validation predictions, evaluated in {eval_seconds:.1f} s")
    print(f"training wall time {seconds:.1f} s, CPU time {cpu_seconds:.1f} s (one thread)")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
