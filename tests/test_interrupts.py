"""SIGINT / SIGTERM become an exception, held back while a finished epoch is saved."""

from __future__ import annotations

import signal

import pytest

from lstmlab import interrupts


@pytest.fixture
def installed():
    saved = {signum: signal.getsignal(signum) for signum in interrupts.SIGNALS}
    interrupts.install()
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_sigterm_raises_interrupted_with_exit_code_143(installed):
    with pytest.raises(interrupts.Interrupted) as caught:
        signal.raise_signal(signal.SIGTERM)
    assert caught.value.exit_code == 143
    assert isinstance(caught.value, KeyboardInterrupt)


def test_a_signal_during_a_deferred_block_is_raised_after_it(installed):
    finished = []
    with pytest.raises(interrupts.Interrupted) as caught:
        with interrupts.deferred():
            signal.raise_signal(signal.SIGINT)
            finished.append(True)
    assert finished == [True]
    assert caught.value.exit_code == 130
