"""What building a model on the meta device does to process-wide torch state, with threads:
``parameters_on_meta`` affects only the thread inside it and always restores
``Module.register_parameter``; ``default_dtype`` blocks run one at a time and each restores the
default it found."""

from __future__ import annotations

import threading

import torch

from flashpack.integrations._common import default_dtype
from flashpack.mixin import parameters_on_meta

TIMEOUT = 30


def test_parameters_on_meta_leaves_other_threads_alone() -> None:
    inside, done = threading.Event(), threading.Event()
    seen: list[bool] = []

    def build() -> None:
        with parameters_on_meta():
            seen.append(torch.nn.Linear(2, 2).weight.is_meta)
            inside.set()
            assert done.wait(TIMEOUT)

    worker = threading.Thread(target=build)
    worker.start()
    try:
        assert inside.wait(TIMEOUT)
        assert not torch.nn.Linear(2, 2).weight.is_meta  # this thread is not inside the block
    finally:
        done.set()
        worker.join(TIMEOUT)
    assert seen == [True]


def test_interleaved_blocks_restore_register_parameter() -> None:
    """A enters, B enters, A leaves, B leaves: B still builds on meta after A left, and
    ``register_parameter`` is the original afterwards (B used to restore A's patch for good)."""
    original = torch.nn.Module.register_parameter
    a_in, b_in, a_out, b_may_leave = (threading.Event() for _ in range(4))
    seen: dict[str, bool] = {}

    def a() -> None:
        with parameters_on_meta():
            a_in.set()
            assert b_in.wait(TIMEOUT)
        a_out.set()

    def b() -> None:
        assert a_in.wait(TIMEOUT)
        with parameters_on_meta():
            b_in.set()
            assert a_out.wait(TIMEOUT)
            seen["b after a left"] = torch.nn.Linear(2, 2).weight.is_meta
            assert b_may_leave.wait(TIMEOUT)

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    assert a_out.wait(TIMEOUT)
    b_may_leave.set()
    for t in threads:
        t.join(TIMEOUT)
    assert seen == {"b after a left": True}
    assert torch.nn.Module.register_parameter is original
    assert not torch.nn.Linear(2, 2).weight.is_meta


def test_nested_blocks_in_one_thread() -> None:
    original = torch.nn.Module.register_parameter
    with parameters_on_meta():
        with parameters_on_meta():
            assert torch.nn.Linear(2, 2).weight.is_meta
        assert torch.nn.Linear(2, 2).weight.is_meta
    assert torch.nn.Module.register_parameter is original


def test_default_dtype_blocks_run_one_at_a_time() -> None:
    """Two threads building in different dtypes: the second waits for the first, each sees its
    own dtype throughout, and the process default is the original afterwards (the first used to
    restore float32 under the second, which then left bfloat16 behind)."""
    before = torch.get_default_dtype()
    a_in, a_may_leave = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def a() -> None:
        with default_dtype(torch.bfloat16):
            a_in.set()
            assert a_may_leave.wait(TIMEOUT)
            seen["a at exit"] = torch.get_default_dtype()

    def b() -> None:
        assert a_in.wait(TIMEOUT)
        with default_dtype(torch.float16):
            seen["b entered after a left"] = "a at exit" in seen
            seen["b"] = torch.get_default_dtype()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    try:
        assert a_in.wait(TIMEOUT)
        threads[1].join(0.5)  # b is waiting for a's block to end
        assert threads[1].is_alive()
    finally:
        a_may_leave.set()
        for t in threads:
            t.join(TIMEOUT)
    assert seen == {"a at exit": torch.bfloat16, "b entered after a left": True, "b": torch.float16}
    assert torch.get_default_dtype() == before
