"""`tunesmith export RUN --format ...`: build the export in a temp folder, verify it against base + adapter
on the run's test prompts, and only then rename it into runs/<id>/export/<format>/ with its export.json.
A verification failure leaves no export behind, only export/<format>.failed.json with the numbers."""

from __future__ import annotations

import gc
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from tunesmith.io import atomic_dir, atomic_write_json, atomic_write_text
from tunesmith.progress import make_console

FORMATS = ("merged", "adapter", "gguf", "ollama", "vllm")
# vLLM's --max-lora-rank accepts these values (vllm/config/lora.py).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class ExportError(Exception):
    """An export that cannot be made (format vs method, missing weights), with the reason."""


class ExportVerificationError(ExportError):
    """The exported model is not the trained one: numbers outside tolerance, or changed training outputs."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


def _load_reference(cfg: Any, manifest: dict[str, Any], run_dir: Path) -> Any:
    """The trained model as training left it: base + adapter (unmerged), or the full fine-tune's weights."""
    from tunesmith.method_traits import PEFT_METHODS
    from tunesmith.models import load_model
    from tunesmith.train.methods import load_adapter, output_dir_name

    saved = run_dir / output_dir_name(cfg.method)
    if cfg.method.name in PEFT_METHODS:
        if not (saved / "adapter_config.json").is_file():
            raise ExportError(f"{saved} has no adapter; train the run first")
        return load_adapter(load_model(manifest["model_path"]), saved)
    if not (saved / "config.json").is_file():
        raise ExportError(f"{saved} has no model; train the run first")
    return load_model(str(saved))


def merge(cfg: Any, manifest: dict[str, Any], run_dir: Path) -> Any:
    """A standalone model with the adapter folded in: a fresh base load, the saved adapter, merge_and_unload."""
    from tunesmith.method_traits import MERGEABLE_METHODS, PEFT_METHODS
    from tunesmith.models import load_model
    from tunesmith.train.methods import load_adapter, output_dir_name

    saved = run_dir / output_dir_name(cfg.method)
    if cfg.method.name not in PEFT_METHODS:
        return load_model(str(saved))
    if cfg.method.name not in MERGEABLE_METHODS:
        raise ExportError(
            f"method {cfg.method.name!r} cannot be merged into the base weights "
            "(prefix/prompt change the input, qlora's base is 4-bit); export it with --format adapter"
        )
    return load_adapter(load_model(manifest["model_path"]), saved).merge_and_unload()


def _integrity(manifest: dict[str, Any], run_dir: Path, saved_name: str) -> dict[str, Any]:
    """Training's outputs now vs the hashes recorded when training finished."""
    from tunesmith.registry import hash_tree

    recorded = (manifest.get("artifacts") or {}).get(saved_name, {}).get("sha256")
    if recorded is None:
        return {
            "checked": False,
            "reason": "no hashes recorded at training time (run made by an older version)",
        }
    now = hash_tree(run_dir / saved_name)
    changed = sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))
    return {"checked": True, "changed": changed, "passed": not changed}


def _eval_agreement(exported: Any, tok: Any, cfg: Any, run_dir: Path, n: int) -> dict[str, Any] | None:
    """The exported model's greedy answers vs the tuned answers the eval stage recorded in-process."""
    from tunesmith.data.pipeline import read_prepared_examples
    from tunesmith.data.tokenize import encode_prompt, stop_token_ids
    from tunesmith.eval.constrain import run_decoder
    from tunesmith.eval.generate import generate

    preds_path = run_dir / "eval" / "predictions.jsonl"
    if not preds_path.is_file():
        return None
    preds = [json.loads(line) for line in preds_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    test = read_prepared_examples(run_dir / "data" / "test.jsonl")[: min(n, len(preds))]
    prompts = [encode_prompt(tok, ex.messages) for ex in test]
    stops = stop_token_ids(tok, getattr(exported, "generation_config", None))
    # Decoded as the eval stage decoded (inside the answers' closed set when it was constrained).
    decoder = run_decoder(run_dir, cfg.eval.constrain, tok, stops)
    gens = generate(exported, tok, prompts, cfg.eval.max_new_tokens, 1, stops, decoder=decoder)
    same = [g.text == p["tuned"] for g, p in zip(gens, preds, strict=False)]
    return {"prompts": len(same), "agreement": sum(same) / max(len(same), 1)}


def _vllm_rank(r: int) -> int:
    return next((x for x in VLLM_LORA_RANKS if x >= r), r)


def _write_vllm(tmp: Path, cfg: Any, manifest: dict[str, Any], run_dir: Path, tok: Any, name: str) -> str:
    """vLLM serves LoRA adapters natively (`--enable-lora`); every other method is served merged."""
    template = tmp / "chat_template.jinja"
    atomic_write_text(template, tok.chat_template)
    final = run_dir / "export" / "vllm"
    if cfg.method.name == "lora":
        shutil.copytree(run_dir / "adapter", tmp / "adapter")
        base = manifest["model_path"]
        cmd = (
            f"vllm serve {base} --enable-lora --lora-modules {name}={final / 'adapter'} "
            f"--max-lora-rank {_vllm_rank(cfg.method.r)} --chat-template {final / 'chat_template.jinja'}"
        )
    else:
        merge(cfg, manifest, run_dir).save_pretrained(tmp / "model")
        tok.save_pretrained(tmp / "model")
        cmd = f"vllm serve {final / 'model'} --served-model-name {name} --chat-template {final / 'chat_template.jinja'}"
    atomic_write_text(
        tmp / "serve.sh",
        "#!/bin/sh\n# Serve this run with vLLM (OpenAI-compatible API on port 8000); request model="
        f'{name!r}.\nexec {cmd} "$@"\n',
    )
    (tmp / "serve.sh").chmod(0o755)
    return cmd


def _ollama_wrapping(tok: Any) -> Any:
    from tunesmith.export.ollama import TemplateNotPortable, read_wrapping

    try:
        return read_wrapping(tok)
    except TemplateNotPortable as e:
        raise ExportError(
            f"the run's chat template cannot be written as an Ollama TEMPLATE ({e}); export --format gguf and "
            "write the Modelfile's TEMPLATE by hand, then check it with `ollama run`"
        ) from e


def _write_modelfile(
    tmp: Path, fname: str, wrapping: Any, tok: Any, cfg: Any, test: list[Any], stops: list[int], name: str
) -> dict[str, Any]:
    """The Modelfile beside the GGUF, and the check of its TEMPLATE on the run's test conversations."""
    from tunesmith.export.ollama import check_template, modelfile

    stop_texts = list(dict.fromkeys(tok.convert_ids_to_tokens(stops)))
    text = modelfile(fname, wrapping.go_template(), stop_texts, cfg.data.system_prompt)
    atomic_write_text(tmp / "Modelfile", text)
    conversations = [
        [{"role": m["role"], "content": m["content"]} for m in ex.messages[:-1]] for ex in test if ex.messages
    ]
    report = check_template(tok, wrapping, conversations)
    report["stops"] = stop_texts
    report["command"] = f"ollama create {name} -f Modelfile && ollama run {name}"
    return report


def _chat_parity(
    gguf: Path,
    reference: Any,
    tok: Any,
    test: Any,
    n_prompts: int,
    max_tokens: int,
    stops: list[int],
    console: Console,
) -> dict[str, Any]:
    """The test conversations as chat requests to llama.cpp's server on the file (export.llamacpp): the
    template, tokens and stops must agree; the answers' agreement is reported (a rounded file may flip a
    near tie, and the weights are held to the logits check)."""
    from tunesmith.export.llamacpp import chat_parity, conversations, find_llama_server, not_checked

    binary = find_llama_server()
    if binary is None:
        skipped = not_checked()
        console.print(
            f"[yellow]export: chat path through llama.cpp not checked: {skipped['reason']}[/yellow]"
        )
        return skipped
    convs = conversations(tok, test, n_prompts)
    if not convs:
        return {"checked": False, "reason": "no chat test conversations"}
    console.print(f"export: {len(convs)} test conversations as chat requests to llama-server --jinja")
    return chat_parity(binary, gguf, reference, tok, convs, max_tokens, stops)


def export_run(
    run_dir: Path,
    fmt: str,
    quant: str = "q8_0",
    n_prompts: int = 8,
    console: Console | None = None,
    merge_fn: Callable[[Any, dict[str, Any], Path], Any] | None = None,
) -> dict[str, Any]:
    """Export and verify; returns the report written to export/<name>/export.json. `merge_fn` replaces the
    merge (tests use it to check that a wrong merge is caught)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.config import load_run_config
    from tunesmith.data.pipeline import read_prepared_examples
    from tunesmith.data.tokenize import stop_token_ids
    from tunesmith.export.gguf import stop_ids_in_gguf, write_gguf
    from tunesmith.export.verify import TOLERANCES, compare_models, probes
    from tunesmith.method_traits import PEFT_METHODS
    from tunesmith.models import load_model, load_tokenizer
    from tunesmith.registry import hash_tree, mark_stage, read_manifest
    from tunesmith.train.methods import load_adapter, output_dir_name

    console = console or make_console()
    merge_fn = merge_fn or merge
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir).resolve()
    cfg = load_run_config(run_dir)
    manifest = read_manifest(run_dir)
    method = cfg.method.name
    saved_name = output_dir_name(cfg.method)
    if fmt == "adapter" and method not in PEFT_METHODS:
        raise ExportError("a full fine-tune has no adapter; export it with --format merged or gguf")
    name = f"gguf-{quant}" if fmt == "gguf" else fmt
    served_name = manifest["id"]
    tok = load_tokenizer(str(run_dir / saved_name))
    wrapping = _ollama_wrapping(tok) if fmt == "ollama" else None  # refused before any weights load
    report: dict[str, Any] = {
        "run": manifest["id"],
        "format": fmt,
        "method": method,
        "base_model": manifest["model"],
    }
    report["integrity"] = _integrity(manifest, run_dir, saved_name)

    test = read_prepared_examples(run_dir / "data" / "test.jsonl")
    items = probes(tok, test, n_prompts, cfg.train.max_length)
    stops = stop_token_ids(tok)
    greedy_tokens = min(cfg.eval.max_new_tokens, 32)
    console.print(f"export {name}: reference = base + {saved_name}/ on {len(items)} test prompts")
    reference = _load_reference(cfg, manifest, run_dir)

    with atomic_dir(run_dir / "export" / name) as tmp:
        tokenizer_check: dict[str, Any] | None = None
        exported: Any
        if fmt == "merged":
            merge_fn(cfg, manifest, run_dir).save_pretrained(tmp)
            tok.save_pretrained(tmp)
            exported = load_model(str(tmp))
            tolerance = TOLERANCES["fp32"]
        elif fmt == "adapter":
            shutil.copytree(run_dir / saved_name, tmp, dirs_exist_ok=True)
            exported = load_adapter(load_model(manifest["model_path"]), tmp)
            tolerance = TOLERANCES["fp32"]
        elif fmt == "vllm":
            report["command"] = _write_vllm(tmp, cfg, manifest, run_dir, tok, served_name)
            if (tmp / "adapter").is_dir():
                exported = load_adapter(load_model(manifest["model_path"]), tmp / "adapter")
            else:
                exported = load_model(str(tmp / "model"))
            tolerance = TOLERANCES["fp32"]
        else:
            merged = merge_fn(cfg, manifest, run_dir)
            fname = f"{served_name}-{quant}.gguf"
            write_gguf(merged, tok, run_dir / saved_name, tmp / fname, quant, served_name)
            del merged
            gc.collect()
            report["file"] = fname
            if wrapping is not None:
                report["template"] = _write_modelfile(
                    tmp, fname, wrapping, tok, cfg, test, stops, served_name
                )
            # Read back through transformers' own GGUF loader: another implementation than the writer.
            exported = AutoModelForCausalLM.from_pretrained(str(tmp), gguf_file=fname, dtype=torch.float32)
            gguf_tok = AutoTokenizer.from_pretrained(str(tmp), gguf_file=fname)
            texts = [tok.decode(p.ids) for p in items]
            same_ids = [
                gguf_tok(t, add_special_tokens=False)["input_ids"]
                == tok(t, add_special_tokens=False)["input_ids"]
                for t in texts
            ]
            tokenizer_check = {
                "prompts_tokenized_identically": sum(same_ids) / max(len(same_ids), 1),
                "chat_template_identical": gguf_tok.chat_template == tok.chat_template,
                "stop_tokens_recorded": set(stops) <= stop_ids_in_gguf(tmp / fname),
            }
            report["tokenizer"] = tokenizer_check
            tolerance = TOLERANCES[quant]
            # Whole answers (the run's own eval limit), so the check sees where each one stops.
            answer_tokens = min(cfg.eval.max_new_tokens, 256)
            report["chat_parity"] = _chat_parity(
                tmp / fname, reference, tok, test, n_prompts, answer_tokens, stops, console
            )
        console.print(f"export {name}: comparing logits and greedy outputs")
        report["verification"] = compare_models(reference, exported, items, greedy_tokens, stops, tolerance)
        agreement = _eval_agreement(exported, tok, cfg, run_dir, n_prompts)
        report["eval_predictions"] = agreement
        problems = list(report["verification"]["problems"])
        integrity = report["integrity"]
        if integrity["checked"] and not integrity["passed"]:
            problems.insert(0, f"{saved_name}/ changed since training: {', '.join(integrity['changed'])}")
        template = report.get("template")
        if template and template["python_identical"] < template["conversations"]:
            problems.append(f"the Modelfile TEMPLATE renders test conversations differently: {template}")
        if (
            template
            and template["go_identical"] is not None
            and template["go_identical"] < template["conversations"]
        ):
            problems.append(f"Go's text/template renders the TEMPLATE differently from training: {template}")
        parity = report.get("chat_parity")
        if parity and parity["checked"]:
            problems += [f"chat path through llama-server: {p}" for p in parity["problems"]]
        if tokenizer_check and not (
            tokenizer_check["prompts_tokenized_identically"] == 1.0
            and tokenizer_check["chat_template_identical"]
            and tokenizer_check["stop_tokens_recorded"]
        ):
            problems.append(f"the GGUF tokenizer differs from the trained one: {tokenizer_check}")
        # fp32 exports must reproduce what the eval stage generated; GGUF is rounded, so this is reported only.
        if agreement is not None and fmt not in ("gguf", "ollama") and agreement["agreement"] < 0.75:
            problems.append(
                f"greedy answers match the eval stage's tuned answers on {agreement['agreement']:.0%} of prompts"
            )
        report["passed"] = not problems
        report["problems"] = problems
        del reference, exported
        gc.collect()
        if problems:
            atomic_write_json(run_dir / "export" / f"{name}.failed.json", report)
            raise ExportVerificationError(
                f"export {name} failed verification: " + "; ".join(problems), report
            )
        report["files"] = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        atomic_write_json(tmp / "export.json", report)
    (run_dir / "export" / f"{name}.failed.json").unlink(missing_ok=True)
    entry = {
        "path": f"export/{name}",
        "max_abs_diff": report["verification"]["max_abs_diff"],
        "max_rel_diff": report["verification"]["max_rel_diff"],
        "top1_agreement": report["verification"]["top1_agreement"],
        "greedy_agreement": report["verification"]["greedy_agreement"],
    }
    hashes = {"path": f"export/{name}", "sha256": hash_tree(run_dir / "export" / name)}
    mark_stage(
        run_dir, "export", "done", merge={"exports": {name: entry}, "artifacts": {f"export/{name}": hashes}}
    )
    return report
