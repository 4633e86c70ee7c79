"""Serving: what a server accepts and keeps for the people who use it, without the web framework.

- `requests`: limits by device, and untrusted request values read into the pipeline's settings;
- `queue`: a busy server's refusal in words, and the watch that stops work whose client left;
- `files`: result folders and uploads, each removed when the last one who needs it is done;
- `options`: how many requests may wait and how long files are kept (`ServerOptions`);
- `results`: the details and status line beside a result, the example photos, freed memory;
- `batching`: concurrent requests reconstructed together on a GPU, each caller getting its own outcome;
- `heads`: each session's last head, for the expression sliders (`RecentHeads`).

The app (`app.py`) joins these to Gradio; nothing here imports it.
"""

from diffnphr.serving.batching import (
    BatchingOptions,
    ReconstructionRequest,
    RequestBatcher,
    reconstruction_batches,
)
from diffnphr.serving.files import ServedFiles, export_crop, export_downloads
from diffnphr.serving.options import ServerOptions
from diffnphr.serving.queue import ClientWatch, QueueAdmission, RequestCancelled
from diffnphr.serving.requests import (
    CPU_MAX_RESOLUTION,
    GPU_MAX_RESOLUTION,
    REQUEST_PARAMETERS,
    RequestError,
    ServingLimits,
    read_request,
    request_problems,
)
from diffnphr.serving.results import (
    ExamplePhotos,
    done_status,
    named_warnings,
    return_freed_memory,
    run_details,
    write_example_photos,
)

__all__ = [
    "CPU_MAX_RESOLUTION",
    "GPU_MAX_RESOLUTION",
    "REQUEST_PARAMETERS",
    "BatchingOptions",
    "ClientWatch",
    "ExamplePhotos",
    "QueueAdmission",
    "ReconstructionRequest",
    "RequestBatcher",
    "RequestCancelled",
    "RequestError",
    "ServedFiles",
    "ServerOptions",
    "ServingLimits",
    "done_status",
    "export_crop",
    "export_downloads",
    "named_warnings",
    "read_request",
    "reconstruction_batches",
    "request_problems",
    "return_freed_memory",
    "run_details",
    "write_example_photos",
]
