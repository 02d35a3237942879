"""One table of method traits: the config accepts exactly its methods, and every reader agrees with it."""

from __future__ import annotations

from typing import get_args

from tunesmith.config import METHOD_OPTIONS, MethodConfig, RunConfig
from tunesmith.method_traits import METHOD_TRAITS, METHODS, methods_with


def test_the_config_literal_is_the_table() -> None:
    annotation = MethodConfig.model_fields["name"].annotation
    assert set(get_args(annotation)) == set(METHOD_TRAITS) == set(METHODS)
    assert RunConfig.model_fields["method"].annotation is MethodConfig


def test_traits_are_consistent() -> None:
    assert methods_with("peft") == tuple(m for m in METHODS if m != "full")
    assert set(methods_with("mergeable")) <= set(methods_with("peft"))
    assert not set(methods_with("virtual_tokens")) & set(methods_with("low_rank"))
    assert methods_with("quantized_base") == ("qlora",)


def test_method_options_follow_the_table() -> None:
    assert METHOD_OPTIONS["r"] == methods_with("low_rank")
    assert METHOD_OPTIONS["num_virtual_tokens"] == methods_with("virtual_tokens")
