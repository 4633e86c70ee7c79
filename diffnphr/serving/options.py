"""How a server treats its users, in one typed object: how many requests may wait, how long files are kept, how many
run together."""

from __future__ import annotations

from dataclasses import dataclass

from diffnphr.serving.batching import BatchingOptions


@dataclass(frozen=True)
class ServerOptions:
    """How many requests may wait, how long results and uploads are kept and how many reconstructions run together
    (`app.py`'s flags set them)."""

    queue_size: int = 16  # requests waiting beyond the one running; the next is told the server is busy
    keep_results_s: float = 60.0  # an API caller's results and uploads, after the answer (pages keep theirs)
    max_age_s: float = 3600.0  # anything older goes, even while its page is open
    max_batch_size: int | None = None  # reconstructions run together (None: 8 on a GPU, 1 on the CPU)
    batch_window_s: float = 0.05  # how long a batch waits after its first request for others to join it

    def batching(self, device_type: str) -> BatchingOptions:
        """How this server gathers reconstructions on `device_type` ("cuda" or "cpu"): `max_batch_size` together
        (by default 8 on a GPU, one at a time on the CPU), joining within `batch_window_s` of the first."""
        return BatchingOptions.for_device(device_type, self.max_batch_size, self.batch_window_s)
