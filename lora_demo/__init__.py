"""LoRA fine-tuning of small language models on IMDb sentiment, on a CPU: data, baseline, training, metrics."""

import warnings

from transformers.utils import logging as _hf_logging

# the demo reports its own progress; the library's load reports and bars only add noise
_hf_logging.set_verbosity_error()
_hf_logging.disable_progress_bar()
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

__version__ = "0.1.0"
