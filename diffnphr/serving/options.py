"""How a server treats its users, in one typed object: how many requests may wait, how long files are kept."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerOptions:
    """How many requests may wait and how long results and uploads are kept (`app.py`'s flags set them)."""

    queue_size: int = 16  # requests waiting beyond the one running; the next is told the server is busy
    keep_results_s: float = 60.0  # an API caller's results and uploads, after the answer (pages keep theirs)
    max_age_s: float = 3600.0  # anything older goes, even while its page is open
