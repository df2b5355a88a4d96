from selfplay.train.data import epoch_batches, rank_micro_batches
from selfplay.train.schedule import lr_multiplier


def test_epoch_covers_every_example_and_pads_the_last_batch():
    batches = epoch_batches(10, epoch=0, seed=1, global_batch_size=4)
    assert [len(b) for b in batches] == [4, 4, 4]
    flat = [i for b in batches for i in b]
    assert sorted(set(flat)) == list(range(10)) and sorted(flat[:10]) == list(range(10))
    assert flat[10:] == flat[:2]                          # padding repeats the epoch's first examples
    assert epoch_batches(10, 1, 1, 4) != batches          # a new order each epoch
    assert epoch_batches(10, 0, 1, 4) == batches          # reproducible


def test_ranks_split_a_global_batch_without_overlap():
    batch = list(range(8))
    parts = [rank_micro_batches(batch, r, 2, 2) for r in range(2)]
    assert parts == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]


def test_lr_schedules():
    assert lr_multiplier(0, 10, 2, "linear") == 0.5 and lr_multiplier(1, 10, 2, "linear") == 1.0
    assert lr_multiplier(2, 10, 2, "linear") == 1.0 and lr_multiplier(6, 10, 2, "linear") == 0.5
    assert abs(lr_multiplier(6, 10, 2, "cosine") - 0.5) < 1e-12
    assert lr_multiplier(9, 10, 0, "constant") == 1.0


def test_an_order_column_trains_lower_order_first_in_the_seeded_order_within_it():
    order_keys = [1, 0, 2, 0, 1, 2, 0, 1]
    shuffled = [i for b in epoch_batches(8, epoch=0, seed=3, global_batch_size=4) for i in b]
    ordered = [i for b in epoch_batches(8, epoch=0, seed=3, global_batch_size=4, order_keys=order_keys) for i in b]
    assert [order_keys[i] for i in ordered] == [0, 0, 0, 1, 1, 1, 2, 2]        # easy to hard
    for key in (0, 1, 2):   # within one key, the same relative order as the plain seeded permutation
        assert [i for i in ordered if order_keys[i] == key] == [i for i in shuffled if order_keys[i] == key]
    later = [i for b in epoch_batches(8, epoch=1, seed=3, global_batch_size=4, order_keys=order_keys) for i in b]
    assert [order_keys[i] for i in later] == [0, 0, 0, 1, 1, 1, 2, 2] and later != ordered   # every epoch
