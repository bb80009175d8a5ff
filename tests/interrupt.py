"""A Hydra callback for the tests: Ctrl-C (a real SIGINT) when job ``job`` of a sweep starts."""

import os
import signal

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback


class InterruptAtJob(Callback):
    def __init__(self, job: int) -> None:
        self.job = job

    def on_job_start(self, config, **kwargs) -> None:
        if HydraConfig.get().job.num == self.job:
            os.kill(os.getpid(), signal.SIGINT)
