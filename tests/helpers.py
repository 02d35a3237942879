"""Helpers shared by tests (importable because pytest puts tests/ on the path)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

QUEUES = ["billing", "access", "payroll", "mobile"]


FILLER = (
    "please help today urgent thanks team since monday again still cannot our office staff customer account "
    "invoice april march report screen button error message browser laptop morning evening weekend manager "
    "client order export import settings profile company branch"
).split()


def random_words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(FILLER) for _ in range(n))


def make_label_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """A learnable toy task: a keyword in the ticket decides the label; random filler keeps rows distinct."""
    rng = random.Random(seed)
    words = {"billing": "refund", "access": "password", "payroll": "payslip", "mobile": "iphone"}
    rows = []
    for i in range(n):
        q = QUEUES[i % len(QUEUES)]
        rows.append(
            {
                "instruction": f"{random_words(rng, 4)} my {words[q]} is broken {random_words(rng, 5)}",
                "output": q,
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def data_config(tmp_path: Path, model: Path, **data: Any) -> Path:
    """A config in `tmp_path` on `train.jsonl` there (label rows routed by a system prompt); `data` overrides."""
    import yaml

    cfg = {
        "name": "t",
        "model": str(model),
        "runs_dir": str(tmp_path / "runs"),
        "data": {"train": "train.jsonl", "system_prompt": "Route.", **data},
        "train": {"max_length": 96},
        "eval": {"metrics": ["accuracy"]},
    }
    p = tmp_path / "tunesmith.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`tunesmith serve ...` (or `command`, which is given `--port`) in a subprocess on a free loopback port;
    waits for /health."""

    def __init__(self, args: list[str], log: Path, timeout: float = 240.0, command: list[str] | None = None):
        import subprocess
        import sys
        import time

        import httpx

        self.name = Path(command[0]).name if command else "tunesmith serve"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            [*(command or [sys.executable, "-m", "tunesmith.cli", "serve"]), *args, "--port", str(self.port)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} did not come up in {timeout:.0f}s:\n{log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def cli_here(*args: str) -> Any:
    """`tunesmith ARGS` in this process (its imports are warm: a new process spends ~10 s importing
    transformers): a CompletedProcess with the exit code, stdout and stderr the command would give. For
    set-up steps and commands whose process boundary is not what a test checks."""
    import subprocess

    from typer.testing import CliRunner

    from tunesmith.cli import app

    res = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(list(args), res.exit_code, res.stdout, res.stderr)


def run_dirs(runs: Path) -> list[Path]:
    """The run directories in a runs folder (it also holds the registry index, registry.sqlite)."""
    return sorted(p for p in runs.iterdir() if (p / "manifest.json").is_file())


def toy_task_config(
    root: Path, model_dir: Path, train: dict[str, Any], eval: dict[str, Any]
) -> dict[str, Any]:
    """The toy routing task (root/data.jsonl) on a model, LoRA r8; runs land in root/runs."""
    return {
        "name": "toy",
        "model": str(model_dir),
        "runs_dir": str(root / "runs"),
        "data": {
            "train": "data.jsonl",
            "system_prompt": "Route the ticket.",
            "split": {"val": 0.1, "test": 0.2},
        },
        "method": {"name": "lora", "r": 8, "alpha": 16},
        "train": train,
        "eval": eval,
    }


# Two local processes under torchrun (gloo on CPU): the distributed tests' launcher.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]


def write_toy_config(root: Path, model_dir: Path) -> Path:
    """A complete config on the toy task with the tiny model in `root`; a few steps run in seconds."""
    import yaml

    write_jsonl(root / "data.jsonl", make_label_rows(80))
    cfg = toy_task_config(
        root,
        model_dir,
        train={
            "lr": 5e-3,
            "max_steps": 6,
            "batch_size": 4,
            "grad_accum": 2,
            "max_length": 128,
            "eval_every": 3,
        },
        eval={
            "metrics": ["accuracy", "exact_match", "token_f1", "rouge_l"],
            "max_new_tokens": 4,
            "batch_size": 8,
        },
    )
    path = root / "tunesmith.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path
