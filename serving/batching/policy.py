"""How a batcher batches: the one place each batching default is written.

``ServerConfig`` takes its defaults from here, and the data plane builds one ``BatchPolicy``
from the config for every served version. Values are checked on construction, so a bad
setting fails at start-up, naming itself.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BatchPolicy"]


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 32
    max_queue_delay_s: float = 0.002  # waited for company only while another batch runs
    max_queue_size: int = 256  # queued jobs past this are refused (RESOURCE_EXHAUSTED)
    workers: int = 1  # the server runs one per core (ServerConfig.workers): invoke frees the GIL
    wait_when_idle: bool = False  # True: always wait out the delay (Triton's, TF Serving's way)

    def __post_init__(self) -> None:
        for key, least in (("max_batch_size", 1), ("max_queue_delay_s", 0),
                           ("max_queue_size", 1), ("workers", 1)):
            value = getattr(self, key)
            if value < least:
                raise ValueError(f"{key} must be >= {least}, got {value!r}")

    @property
    def warmup_batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes a worker's interpreter is warmed at: the first call at a size
        allocates its tensors, and 1 and the largest are the sizes most batches take."""
        return tuple(sorted({1, self.max_batch_size}))
