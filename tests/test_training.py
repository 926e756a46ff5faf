"""The training loops' data-wait clock and device label."""

import time

import torch
from torch.utils.data import DataLoader, Dataset

from histo_wsss.training import LoaderClock, device_label


class _SlowImages(Dataset):
    """Each image takes 10 ms to load."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        time.sleep(0.01)
        return torch.zeros(3, 8, 8), torch.tensor(float(i % 2))


def test_the_clock_counts_images_and_the_share_spent_waiting_for_them():
    clock = LoaderClock(DataLoader(_SlowImages(), batch_size=4))
    assert len(clock) == 3
    for x, _ in clock:
        assert x.shape == (4, 3, 8, 8)
        time.sleep(0.04)  # "compute": as long as loading a batch of 4
    assert clock.images == 12
    assert 0.2 < clock.wait / clock.total < 0.8  # half of it, give or take the machine's load
    assert clock.total >= 12 * 0.01 + 3 * 0.04
    rate, share = clock.summary().removeprefix("train ").split(" images/s, ")
    assert abs(float(rate) - 12 / clock.total) < 0.1
    assert share.endswith(" % waiting for data")


def test_a_loop_left_early_still_stops_the_clock():
    clock = LoaderClock([(torch.zeros(2, 1),)] * 5)
    for i, _ in enumerate(clock):
        if i == 1:
            break
    assert clock.images == 4 and clock.total > 0


def test_the_cpu_is_logged_with_torchs_thread_count():
    before = torch.get_num_threads()
    try:
        for n, text in ((1, "cpu (1 thread)"), (2, "cpu (2 threads)")):
            torch.set_num_threads(n)
            assert device_label(torch.device("cpu")) == text
    finally:
        torch.set_num_threads(before)
    assert device_label(torch.device("cuda", 1)) == "cuda:1"
