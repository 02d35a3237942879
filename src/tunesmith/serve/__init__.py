"""Serving: an OpenAI-compatible API over one base model and the adapters of registered runs, with a
feedback endpoint whose ratings and corrections become training data again."""
