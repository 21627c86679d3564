"""What `fleet profile` measures on a batching class."""

from __future__ import annotations

from fleet.config import FleetConfig
from fleet.measurement.profiling import batch_levels, steps_needed


def test_batch_levels_double_up_to_the_slots() -> None:
    assert batch_levels(8) == [2, 4, 8]
    assert batch_levels(12) == [2, 4, 8, 12]
    assert batch_levels(1) == [] and batch_levels(2) == [2]


def test_progress_counts_the_batch_rounds(cfg: FleetConfig) -> None:
    pairs = [("test.sleep", "gpu"), ("test.sleep", "io")]
    plain = steps_needed(pairs, 2)
    assert plain == 2 * (1 + 2 * 2)  # a warm-up and 2 reps of 2 samples, per pair
    # gpu batches 8 sequences: 2 reps of one at a time and of 2, 4 and 8 at once
    assert steps_needed(pairs, 2, {"gpu": 8}) == plain + 2 * 4
