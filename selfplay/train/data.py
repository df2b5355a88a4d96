"""Training order over preference pairs: a seeded permutation per epoch, cut into global
batches, each split evenly across ranks and then into micro-batches.

A pairs file may fix an easy-to-hard order with an integer `order` column (Curry-DPO's `sorted`
curriculum): each epoch then visits lower `order` first, pairs of equal `order` in the epoch's
seeded permutation. Without the column the order is the permutation alone.

The last global batch of an epoch is filled by repeating the epoch's first examples (as
torch's DistributedSampler pads), so every optimizer step sees a full global batch and every
rank runs the same number of micro-steps.
"""

import math

import numpy as np


def epoch_batches(num_examples: int, epoch: int, seed: int, global_batch_size: int,
                  order_keys: list[int] | None = None) -> list[list[int]]:
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    if order_keys is not None:  # a stable sort keeps the permutation within equal keys
        order = order[np.argsort(np.asarray(order_keys)[order], kind="stable")]
    order = order.tolist()
    steps = math.ceil(num_examples / global_batch_size)
    padded = (order * math.ceil(steps * global_batch_size / num_examples))[: steps * global_batch_size]
    return [padded[s * global_batch_size:(s + 1) * global_batch_size] for s in range(steps)]


def rank_micro_batches(global_batch: list[int], rank: int, world_size: int, micro_batch_size: int) -> list[list[int]]:
    per_rank = len(global_batch) // world_size
    mine = global_batch[rank * per_rank:(rank + 1) * per_rank]
    return [mine[i:i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    return math.ceil(num_examples / global_batch_size)
