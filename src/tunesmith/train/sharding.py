"""Sharded data parallel (`train.sharding: fsdp`): PyTorch FSDP2 across the processes of a launch.

Each decoder layer is one FSDP unit and the whole model is the root unit (embeddings, final norm, output
head, and the tied embedding/head weight together). Every process keeps 1/world of each parameter, of its
gradient and of its optimizer state; a unit's parameters are all-gathered just before its forward (and its
backward) and freed after. The data side is unchanged (`batching.accumulate_step` with `shard`): every
process computes its share of each micro-batch, the loss is divided by the units of the whole step, and the
gradients are reduce-scattered with a plain SUM (not FSDP's default mean), which gives the one-process
gradient exactly.

Checkpoints and the final save are the one-process format: the full state is gathered onto the first
process, which writes it, so a run resumes sharded or not, on any number of processes.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any, cast

from tunesmith.train.batching import SHARDED_LOSS_LOGITS, decoder_head_logits

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tunesmith.train.checkpoint import Checkpoint


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: modules of a class transformers never splits across devices
    (`_no_split_modules`, e.g. LlamaDecoderLayer); else the longest ModuleList."""
    from torch import nn

    lm: Any = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    names = set(getattr(lm, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if layers:
        return layers
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=lambda m: len(cast(Any, m)))) if lists else []


def shard_model(model: nn.Module, world: int, device: torch.device) -> nn.Module:
    """Shard `model` in place across the `world` processes of the default process group; return it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (world,))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            # Our loss is already divided by the whole step's units: the processes' gradients add up.
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)

    # The fast loss path calls the decoder and then the head, not model.forward; as a registered forward
    # method of the root unit it gathers the root's parameters (embeddings, norm, head) first.
    def loss_logits(self: nn.Module, inputs: dict[str, Any], keep: torch.Tensor) -> torch.Tensor:
        return decoder_head_logits(self, inputs, keep)

    object.__setattr__(model, SHARDED_LOSS_LOGITS, types.MethodType(loss_logits, model))
    register_fsdp_forward_method(model, SHARDED_LOSS_LOGITS)
    return model


def local_share(model: nn.Module) -> tuple[int, int]:
    """(parameter elements this process holds, elements of the whole model)."""
    local = total = 0
    for p in model.parameters():
        total += p.numel()
        local += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
    return local, total


def report_share(model: nn.Module, rank: int, world: int) -> None:
    """One line per process on stderr: how much of the model it holds."""
    local, total = local_share(model)
    print(
        f"fsdp: rank {rank}/{world} holds {local:,} of {total:,} parameter elements ({local / total:.1%})",
        file=sys.stderr,
        flush=True,
    )


def _options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(model: nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """The model's state dict (`trainable_only`: its trainable parameters), whole, on the CPU of the first
    process (other processes: empty). Collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state: dict[str, Any] = get_model_state_dict(
        model, options=_options(cpu_offload=True, ignore_frozen_params=trainable_only)
    )
    # A tied weight (embeddings = output head) comes back once per name, as separate copies; one process's
    # save writes it once, under the first name, and so does this.
    first = {n for n, _ in model.named_parameters()}
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - first
    return {k: v for k, v in state.items() if k not in tied}


def load_checkpoint_weights(ckpt: Checkpoint, model: nn.Module) -> None:
    """Put a checkpoint's trainable weights into the sharded model: every process reads the file and keeps
    its shard. Collective: every process calls it."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        # peft's file names (adapter name dropped) -> the model's: peft renames without copying, so the
        # parameter objects tell which is which.
        name_of = {id(p): n for n, p in trainable.items()}
        saved = get_peft_model_state_dict(model, state_dict=dict(trainable))
        file_to_model = {k: name_of[id(v)] for k, v in saved.items() if id(v) in name_of}
        weights = {
            file_to_model.get(k, k): v for k, v in load_file(ckpt.path / "adapter_model.safetensors").items()
        }
    else:
        weights = load_file(ckpt.path / "trainable.safetensors")
    if set(weights) != set(trainable):
        raise ValueError(
            f"{ckpt.path} does not match the model: missing {sorted(set(trainable) - set(weights))[:3]}, "
            f"unexpected {sorted(set(weights) - set(trainable))[:3]}; was it saved with another method or model?"
        )
    set_model_state_dict(model, cast(Any, weights), options=_options(strict=False))


def _optimizer_names(model: nn.Module, optimizer: Any) -> list[str]:
    """The name of each optimizer parameter, in the order a torch.optim state dict numbers them."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]


def full_optimizer_state(model: nn.Module, optimizer: Any) -> dict[str, Any]:
    """The optimizer state as one process's torch.optim would have it (parameters numbered, tensors whole),
    on the first process (other processes: empty). Collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    osd: Any = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    if not osd:
        return {}
    index = {n: i for i, n in enumerate(_optimizer_names(model, optimizer))}
    return {
        "state": {index[n]: s for n, s in osd["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]],
    }


def load_optimizer_state(model: nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
    """Load a one-process optimizer state dict (every process passes the whole of it) into the sharded one."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = _optimizer_names(model, optimizer)
    osd = {
        "state": {names[int(i)]: s for i, s in state["state"].items()},
        "param_groups": [
            {**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, cast(Any, osd), options=_options())


def clip_grad_norm(params: list[Any], max_norm: float) -> float:
    """Clip by the global gradient norm over all processes' shards; return that norm."""
    import torch

    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if hasattr(norm, "full_tensor"):  # a DTensor: each process's partial norm, reduced
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return float(norm)


__all__ = [
    "clip_grad_norm",
    "decoder_layers",
    "full_model_state",
    "full_optimizer_state",
    "load_checkpoint_weights",
    "load_optimizer_state",
    "local_share",
    "report_share",
    "shard_model",
]
