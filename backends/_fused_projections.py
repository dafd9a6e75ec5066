"""Frozen linear layers that read the same input, computed as one matmul (policy switch
`fused_projections`, off by default: not timed yet, docs/performance.md).

A decoder layer multiplies one input by q_proj, k_proj and v_proj, and another by
gate_proj and up_proj. With LoRA their base weights are frozen, so each group's weights can
live in one [sum of outputs, in] matrix: each layer's weight becomes a view of its rows (no
memory added), the first layer of a group called with an input computes the whole group's
output in one matmul, and each layer returns its columns. The backward pass then also
takes one larger matmul for the input's gradient, the group's output gradients side by
side, instead of one per layer and their sum: in the graphs a compiled layer hands to
Inductor, 3 fewer matmuls forward and 3 fewer backward for each llama-like layer
(tests/test_speed_ups.py). peft's LoRA update is added by each layer as before. Only in
compiled layers: uncompiled, autograd would make a zero-padded gradient of the group's
whole output for each layer and add them up.

The fusion is made at the model's first forward, when the Trainer has moved it to its
device, and holds from then on: moving the model again afterwards is not supported (the
group's matrix stays where it was, and the matmul fails on the mixed devices).
"""

from __future__ import annotations

from typing import Any

import torch  # imported by the cuda backend's speed-ups only, where torch is loaded anyway

# the layers of a decoder layer that read one input, by the names transformers' models give them
GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def fusable_groups(model: Any) -> list[list[Any]]:
    """`model`'s groups of frozen plain linear layers (or base layers of peft's LoRA layers)
    that read one input: each a list of torch.nn.Linear."""
    groups = []
    for module in model.modules():
        for names in GROUPS:
            bases = [getattr(layer, "base_layer", layer) for layer in (getattr(module, n, None) for n in names)]
            if not all(type(base) is torch.nn.Linear and not base.weight.requires_grad for base in bases):
                continue  # missing, trainable, quantized or another kind of layer: left as it is
            if len({(b.in_features, b.weight.dtype, b.weight.device, b.bias is None) for b in bases}) == 1:
                groups.append(bases)
    return groups


def fuse_at_first_forward(groups: list[list[Any]], *models: Any) -> None:
    """Fuse `groups` when any of `models` is first called: the Trainer calls the peft model,
    generation the transformers model inside it (peft calls that one's forward directly)."""
    handles: list[Any] = []

    def fuse_now(*_: Any) -> None:
        for handle in handles:
            handle.remove()
        for bases in groups:
            _share(bases)

    handles += [model.register_forward_pre_hook(fuse_now) for model in models]


def _share(bases: list[Any]) -> None:
    shared = _SharedInput([base.weight for base in bases], [base.bias for base in bases])
    for index, base in enumerate(bases):
        start, end = shared.columns[index]
        with torch.no_grad():
            base.weight.data = shared.weight[start:end]  # the same Parameter, its rows of the group's matrix
            if base.bias is not None:
                base.bias.data = shared.bias[start:end]
        # a class of its own, not a forward per layer: compiled layers guard on what a layer's
        # forward is, and one object per layer would compile each layer again
        base.__class__ = _FusedLinear
        base.fused_index = index
        object.__setattr__(base, "fused_group", shared)  # not a submodule: no second path to its weights


class _SharedInput:
    """One group's weights and the output of its last input, until every layer took its part."""

    def __init__(self, weights: list[Any], biases: list[Any]):
        self.weight = torch.cat([w.detach() for w in weights])
        self.bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
        ends = torch.tensor([w.shape[0] for w in weights]).cumsum(0).tolist()
        self.columns = list(zip([0] + ends[:-1], ends))
        self.input = self.output = None
        self.left = 0

    def part(self, index: int, x: Any) -> Any:
        if self.input is not x:  # a new input (or one layer called twice): the whole group's matmul
            self.input, self.output, self.left = x, torch.nn.functional.linear(x, self.weight, self.bias), len(
                self.columns)
        start, end = self.columns[index]
        out = self.output[..., start:end]
        self.left -= 1
        if self.left == 0:  # every layer has its part: hold no activations between forwards
            self.input = self.output = None
        return out


class _FusedLinear(torch.nn.Linear):
    """A frozen linear layer of a fused group: its columns of the group's output."""

    def forward(self, x: Any) -> Any:
        return self.fused_group.part(self.fused_index, x)
