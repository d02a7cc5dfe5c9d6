"""Hugging Face Spaces entry point: build the app from lora_demo.ui and serve it.

On a ZeroGPU Space (`SPACES_ZERO_GPU` set) `spaces` is imported before anything that could touch CUDA, and the
compute jobs are wrapped in `spaces.GPU` before the app starts, so the platform knows them (see the README).
"""

import os

if os.environ.get("SPACES_ZERO_GPU"):
    import spaces  # noqa: F401  (first: it patches torch before any CUDA use)

from lora_demo.compute.runner import runner
from lora_demo.ui import LAUNCH_OPTIONS, build_demo

runner()  # where jobs run: this process, or ZeroGPU workers (decorated now, as `spaces` expects)
demo = build_demo()

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        **LAUNCH_OPTIONS,
    )
