"""Quantized Linear weights: swapping them in (torchao's tensor subclasses, bitsandbytes modules), putting the
originals back after a failure, and counting the bytes they really hold.

The quantization knob (``quantization.py``) decides what to quantize and reports on it; this module does the
swapping. torchao's ``quantize_`` replaces each Linear's weight in place with a quantized tensor subclass;
bitsandbytes has no such call for loaded weights, so its ``Linear8bitLt`` / ``Linear4bit`` modules replace the
``nn.Linear`` modules (quantized when their CPU weights move to the layer's device).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["BNB_4BIT_BLOCK", "BNB_THRESHOLD", "bnb_linear", "candidate", "is_quantized", "quantize_linears",
           "quantized_linear", "restore_linears", "tensor_bytes", "torchao_config", "weight_bytes"]

BNB_THRESHOLD = 6.0  # LLM.int8() outlier threshold
BNB_4BIT_BLOCK = 64


# ------------------------------------------------------------------------------------------ sizes
def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor really holds: the inner tensors of a tensor subclass (torchao's ``Int8Tensor`` reports
    the dtype it stands in for, so ``numel * element_size`` would count fp32), and the scales bitsandbytes
    keeps beside its int8 / packed 4-bit data."""
    import torch

    if hasattr(t, "__tensor_flatten__"):
        names, _ctx = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names if isinstance(getattr(t, n), torch.Tensor))
    n = t.numel() * t.element_size()
    scb = getattr(t, "SCB", None)  # bnb Int8Params: per-row absmax
    if isinstance(scb, torch.Tensor):
        n += scb.numel() * scb.element_size()
    state = getattr(t, "quant_state", None)  # bnb Params4bit: per-block absmax (nested: its own state)
    while state is not None:
        for name in ("absmax", "offset"):
            x = getattr(state, name, None)
            if isinstance(x, torch.Tensor):
                n += x.numel() * x.element_size()
        state = getattr(state, "state2", None)
    return n


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (each tensor once)."""
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += tensor_bytes(t)
    return total


# ------------------------------------------------------------------------------------------ which layers
def is_quantized(w) -> bool:
    import torch

    return w is not None and type(w) not in (torch.Tensor, torch.nn.Parameter)


def quantized_linear(m: torch.nn.Module) -> bool:
    """A Linear that is quantized already: a torchao weight, or a bitsandbytes module."""
    import torch

    return isinstance(m, torch.nn.Linear) and (type(m).__module__.startswith("bitsandbytes")
                                               or is_quantized(m.weight))


def candidate(m: torch.nn.Module, scheme: str) -> bool:
    """A Linear the scheme may quantize (bitsandbytes replaces modules, so only plain ``nn.Linear``)."""
    import torch

    if not isinstance(m, torch.nn.Linear) or quantized_linear(m):
        return False
    return type(m) is torch.nn.Linear if scheme.startswith("bnb_") else True


# ------------------------------------------------------------------------------------------ quantizing
def torchao_config(scheme: str, group_size: int):
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Float8WeightOnlyConfig,
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
    )

    if scheme == "int8_weight_only":
        return Int8WeightOnlyConfig()
    if scheme == "int8_dynamic":
        return Int8DynamicActivationInt8WeightConfig()
    if scheme == "fp8_weight_only":
        return Float8WeightOnlyConfig()
    if scheme == "fp8_dynamic":
        return Float8DynamicActivationFloat8WeightConfig()
    if scheme == "int4_weight_only":
        from torchao.quantization.quantize_.workflows import Int4PackingFormat

        # tile-packed = the tinygemm kernel in torch itself; the default "plain" format needs the mslk package
        return Int4WeightOnlyConfig(group_size=group_size, int4_packing_format=Int4PackingFormat.TILE_PACKED_TO_4D)
    raise ValueError(f"not a torchao scheme: {scheme}")


def bnb_linear(layer: torch.nn.Linear, scheme: str) -> torch.nn.Module:
    """A bitsandbytes Linear holding ``layer``'s weights, quantized on the layer's device."""
    import bitsandbytes as bnb
    import torch

    device, dtype = layer.weight.device, layer.weight.dtype
    w = layer.weight.detach().to("cpu")  # bitsandbytes quantizes when a CPU weight moves to its device
    bias = layer.bias is not None
    if scheme == "bnb_8bit":
        new = bnb.nn.Linear8bitLt(layer.in_features, layer.out_features, bias=bias, has_fp16_weights=False,
                                  threshold=BNB_THRESHOLD, device="meta")
        new.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
    else:
        new = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=bias, compute_dtype=dtype,
                                quant_type="nf4", device="meta")
        new.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", blocksize=BNB_4BIT_BLOCK,
                                       compress_statistics=False, module=new)
    if bias:
        new.bias = torch.nn.Parameter(layer.bias.detach().to("cpu"), requires_grad=False)
    new = new.to(device)
    if bias:
        new.bias.data = new.bias.data.to(dtype)
    return new


def quantize_linears(root: torch.nn.Module, scheme: str, want, group_size: int) -> None:
    """Quantize the Linear layers of ``root`` for which ``want(layer)`` is true, in place."""
    if scheme.startswith("bnb_"):
        targets = [(parent, name, child) for parent in root.modules()
                   for name, child in parent.named_children()
                   if candidate(child, scheme) and want(child)]
        for parent, name, child in targets:
            setattr(parent, name, bnb_linear(child, scheme))
        return
    from torchao.quantization import quantize_

    quantize_(root, torchao_config(scheme, group_size),
              filter_fn=lambda m, fqn: candidate(m, scheme) and want(m))


def restore_linears(linears: dict, parents: list) -> None:
    """Put back the original weights (torchao) or modules (bitsandbytes) after a failed quantization."""
    for layer, (weight, bias) in linears.items():
        layer.weight, layer.bias = weight, bias
    for parent, name, child in parents:
        setattr(parent, name, child)
