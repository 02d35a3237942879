"""The GGUF file records every token training ended answers with (llama.cpp stops at EOS and EOT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tunesmith.export import gguf as gguf_export
from tunesmith.models import load_model


def test_an_end_of_turn_token_besides_eos_is_written_as_eot(
    tiny_model_dir: Path, tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SmolLM2 stops at its EOS alone (the Ollama export test checks that file); a chat model whose turns end
    # with another token:
    model = load_model(str(tiny_model_dir))
    monkeypatch.setattr(gguf_export, "stop_token_ids", lambda tok: [tok.eos_token_id, 0])
    path = gguf_export.write_gguf(model, tokenizer, tiny_model_dir, tmp_path / "b.gguf", "f16", "b")
    assert gguf_export.stop_ids_in_gguf(path) == {tokenizer.eos_token_id, 0}

    monkeypatch.setattr(gguf_export, "stop_token_ids", lambda tok: [tok.eos_token_id, 0, 1])
    with pytest.raises(gguf_export.GGUFExportError, match="GGUF records EOS and one EOT"):
        gguf_export.write_gguf(model, tokenizer, tiny_model_dir, tmp_path / "c.gguf", "f16", "c")
