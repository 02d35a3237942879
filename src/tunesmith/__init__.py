"""tunesmith: turn a general pretrained LLM into a domain specialist."""

__version__ = "0.1.0"

__all__ = ["__version__"]
