"""LoRA sites: every layer a LoRA can change gets a low-rank branch whose two factors are graph inputs.

``y = layer(x) + up · down(x)``: the runtime feeds the factors of the request's LoRAs (several concatenated along
the rank axis, each pre-scaled by weight × alpha / rank), or a rank-1 zero branch when there are none. So a LoRA
set or weight changes per request with no re-export, no rebuild and nothing to undo (the weights never change),
as ONNX Runtime's multi-LoRA adapters and OpenVINO GenAI's dynamic LoRA do. Why this and not refitting merged
weights: see docs/ARCHITECTURE.md, "LoRA".

Sites, by module path in the diffusers network (``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``):
every Linear and (ungrouped) Conv2d of the U-Net or of SD 3's and Flux's transformer, which covers kohya's LoRA and
LoCon targets, and the Linear layers of a CLIP text encoder's transformer layers. Inputs (the runtime reads a
site's kind from their shapes):

- Linear: ``PATH.lora_down`` [in, rank] (transposed: one MatMul), ``PATH.lora_up`` [rank, out];
- Conv2d: ``PATH.lora_down`` [kh, kw, rank, in] (the kernel tap by tap), ``PATH.lora_up`` [out, rank].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..lora.sites import DOWN, UP
from ..manifest import TensorSpec

RANK = "rank"  # the named axis of every site's factors
TRACE_RANK = 2  # not 1: the tracer would take a size-1 axis for a broadcast


class LoraSite(torch.nn.Module):
    """``layer`` plus the low-rank branch; ``down``/``up`` are set by ``WithLoraInputs`` before each call.

    A convolution's branch is written with MatMuls (its down kernel as one MatMul per tap, the taps' outputs
    shifted and summed): OpenVINO's CPU plugin compiles no convolution whose weights have a dynamic shape, and the
    rank is dynamic."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layer = layer
        self.down = self.up = None

    def forward(self, x):
        y = self.layer(x)
        if self.down is None:  # called outside its graph: the plain layer
            return y
        if isinstance(self.layer, torch.nn.Linear):
            return y + (x @ self.down) @ self.up
        return y + (self.up @ self._conv_down(x)).reshape(y.shape)

    def _conv_down(self, x):
        """``down`` applied as the layer's convolution: [N, in, H, W] → [N, rank, Ho·Wo]."""
        c = self.layer
        (kh, kw), (sh, sw), (ph, pw) = c.kernel_size, c.stride, c.padding
        z = self.down.reshape(-1, c.in_channels) @ x.flatten(2)  # [N, taps·rank, H·W], tap-major
        if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
            return z
        n, _, h, w = x.shape
        z = F.pad(z.reshape(n, kh * kw, -1, h, w), (pw, pw, ph, ph))
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        taps = [z[:, i * kw + j, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
                for i in range(kh) for j in range(kw)]
        return torch.stack(taps).sum(0).flatten(2)

    def factor_specs(self, path: str) -> tuple[TensorSpec, TensorSpec]:
        c = self.layer
        if isinstance(c, torch.nn.Linear):
            return (TensorSpec(path + DOWN, "float32", (c.in_features, RANK)),
                    TensorSpec(path + UP, "float32", (RANK, c.out_features)))
        return (TensorSpec(path + DOWN, "float32", (*c.kernel_size, RANK, c.in_channels)),
                TensorSpec(path + UP, "float32", (c.out_channels, RANK)))

    def sample_factors(self, rank: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random factors of ``rank`` at a LoRA's usual scale (the branch changes the output by a few %)."""
        down_spec, up_spec = self.factor_specs("")
        shape = lambda spec: [rank if d == RANK else d for d in spec.shape]  # noqa: E731
        fan_in = self.layer.weight[0].numel()
        down = torch.randn(*shape(down_spec), generator=g) / fan_in ** 0.5
        up = torch.randn(*shape(up_spec), generator=g) * 0.05 / rank ** 0.5
        return down, up


def _targetable(module: torch.nn.Module) -> bool:
    if isinstance(module, torch.nn.Linear):
        return True
    return (isinstance(module, torch.nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            and module.dilation == (1, 1) and not isinstance(module.padding, str))


def add_sites(network: torch.nn.Module, under: str = "") -> dict[str, LoraSite]:
    """Wrap every targetable layer of ``network`` whose path starts with ``under`` in a ``LoraSite``, in place
    (a network wrapped before keeps its sites); the sites by path (``text_model.`` left out, as transformers 5
    does). Outside its graph a site computes its plain layer."""
    sites = {}
    for path, module in list(network.named_modules()):
        parent_path, _, attr = path.rpartition(".")
        parent = network.get_submodule(parent_path)
        if not path.startswith(under) or isinstance(parent, LoraSite):
            continue
        if isinstance(module, LoraSite) or _targetable(module):
            site = module if isinstance(module, LoraSite) else LoraSite(module)
            setattr(parent, attr, site)
            sites[path.removeprefix("text_model.")] = site
    return sites


class WithLoraInputs(torch.nn.Module):
    """``graph`` taking, after its own inputs, each site's down and up factors."""

    def __init__(self, graph: torch.nn.Module, sites: dict[str, LoraSite], own_inputs: int):
        super().__init__()
        self.graph, self.own_inputs = graph, own_inputs
        self.sites = list(sites.values())

    def forward(self, *inputs):
        own, factors = inputs[:self.own_inputs], inputs[self.own_inputs:]
        for site, down, up in zip(self.sites, factors[0::2], factors[1::2]):
            site.down, site.up = down, up
        try:
            return self.graph(*own)
        finally:
            for site in self.sites:
                site.down = site.up = None


def factor_inputs(sites: dict[str, LoraSite]) -> tuple[TensorSpec, ...]:
    return tuple(spec for path, site in sites.items() for spec in site.factor_specs(path))

