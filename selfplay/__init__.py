"""selfplay: iterative self-play preference optimization with vLLM, DeepSpeed and Ray."""

__version__ = "0.1.0"
