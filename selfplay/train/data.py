"""Training order over preference pairs: a seeded permutation per epoch, cut into global
batches, each split evenly across ranks and then into micro-batches.

The last global batch of an epoch is filled by repeating the epoch's first examples (as
torch's DistributedSampler pads), so every optimizer step sees a full global batch and every
rank runs the same number of micro-steps.
"""

import math

import numpy as np


def epoch_batches(num_examples: int, epoch: int, seed: int, global_batch_size: int) -> list[list[int]]:
    order = np.random.default_rng([seed, epoch]).permutation(num_examples).tolist()
    steps = math.ceil(num_examples / global_batch_size)
    padded = (order * math.ceil(steps * global_batch_size / num_examples))[: steps * global_batch_size]
    return [padded[s * global_batch_size:(s + 1) * global_batch_size] for s in range(steps)]


def rank_micro_batches(global_batch: list[int], rank: int, world_size: int, micro_batch_size: int) -> list[list[int]]:
    per_rank = len(global_batch) // world_size
    mine = global_batch[rank * per_rank:(rank + 1) * per_rank]
    return [mine[i:i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    return math.ceil(num_examples / global_batch_size)
