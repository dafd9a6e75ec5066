"""A simulated torch_npu that checks semantics, not just calls: each operator portaft uses,
computed in plain torch on the CPU as Ascend's torch_npu API documentation says.

The documented contract is checked where the real operator would refuse or compute
something else: a layout the tensors do not have, non-cumulative sample lengths, sparse_mode
2/3 without the compressed 2048 x 2048 mask, a gamma of another dtype. Everything else is
computed, so a wrong but accepted call (the halves of SwiGLU swapped, interleaved rotary
mode, no causal mask) gives other numbers, and a run's losses show it.

`install(monkeypatch)` makes `import torch_npu` find this module (through a finder on
sys.meta_path, so importing it is an event: the module records the environment it was
imported under, and torch.npu.set_compile_mode records its calls), and undoes it all after
the test. Nothing here has been compared with a real NPU.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types

import torch

LAYOUTS = ("BSH", "SBH", "BSND", "BNSD", "TND")  # documented; BSH and SBH are not simulated
COMPRESSED = 2048


def npu_fusion_attention(query, key, value, head_num, input_layout, pse=None, padding_mask=None, atten_mask=None,
                         scale=1.0, keep_prob=1.0, pre_tockens=2147483647, next_tockens=2147483647, inner_precise=0,
                         prefix=None, actual_seq_qlen=None, actual_seq_kvlen=None, sparse_mode=0,
                         gen_mask_parallel=True, sync=False):
    """torch_npu.npu_fusion_attention: softmax(scale * Q K^T masked) V, per the page
    https://www.hiascend.com/document/detail/zh/Pytorch/600/apiref/apilist/ptaoplist_000850.html
    (Ascend Extension for PyTorch 6.0.0, torch_npu 2.1-2.4; the same signature in 6.0.RC3,
    ptaoplist_000445).

    - input_layout: BSH, SBH (not simulated), BSND, BNSD, or TND ([tokens, heads, dim], which needs
      actual_seq_qlen/actual_seq_kvlen: cumulative ends, "lengths 2 2 2 2 2 are passed as
      2 4 6 8 10"); N2 (kv heads) divides N1 (head_num).
    - atten_mask: True masks a position. sparse_mode 0: the mask as given (or none);
      2 (leftUpCausal) / 3 (rightDownCausal): atten_mask must be the compressed 2048 x 2048
      lower-triangular mask (True above the diagonal); 3 aligns the diagonal to the
      bottom-right when Sq != Skv. Other sparse modes are not simulated (they raise).
    - returns 7 values: (attention_out, softmax_max, softmax_sum, softmax_out, seed, offset,
      numels); softmax_max/sum per query row, repeated 8 wide as the operator stores them
      ([B, N, Sq, 8], or [T, N, 8] for TND); softmax_out is reserved (empty).
    Dropout (keep_prob < 1) is not simulated: it raises.
    """
    if input_layout not in LAYOUTS:
        raise ValueError(f"npu_fusion_attention: input_layout {input_layout!r} is not one of {LAYOUTS}")
    if keep_prob != 1.0 or pse is not None or padding_mask is not None or prefix is not None:
        raise NotImplementedError("the double simulates keep_prob=1 without pse, padding_mask or prefix")
    if sparse_mode not in (0, 2, 3):
        raise NotImplementedError(f"the double simulates sparse_mode 0, 2 and 3, not {sparse_mode}")
    if sparse_mode in (2, 3):
        _check_compressed(atten_mask, sparse_mode)
    if input_layout == "TND":
        return _tnd(query, key, value, head_num, atten_mask, scale, actual_seq_qlen, actual_seq_kvlen, sparse_mode)
    q, k, v = (_to_bnsd(t, input_layout, head_num if t is query else None) for t in (query, key, value))
    if q.shape[1] != head_num:
        raise ValueError(f"npu_fusion_attention: head_num {head_num} but the query has {q.shape[1]} heads in layout "
                         f"{input_layout}")
    out, row_max, row_sum = _attend(q, k, v, scale, _mask_bnss(atten_mask, sparse_mode, q.shape[2], k.shape[2]))
    return (_from_bnsd(out, input_layout), _wide(row_max), _wide(row_sum), torch.empty(0), 0, 0, 0)


def _tnd(query, key, value, head_num, atten_mask, scale, qlen, kvlen, sparse_mode):
    if query.dim() != 3 or key.dim() != 3:
        raise ValueError(f"npu_fusion_attention: layout TND takes [tokens, heads, dim], got {tuple(query.shape)}")
    if qlen is None or kvlen is None:
        raise ValueError("npu_fusion_attention: layout TND needs actual_seq_qlen and actual_seq_kvlen")
    if query.shape[1] != head_num:
        raise ValueError(f"npu_fusion_attention: head_num {head_num} but the query has {query.shape[1]} heads")
    q_ends, kv_ends = _cumulative(qlen, query.shape[0], "actual_seq_qlen"), _cumulative(kvlen, key.shape[0],
                                                                                       "actual_seq_kvlen")
    if len(q_ends) != len(kv_ends):
        raise ValueError("npu_fusion_attention: actual_seq_qlen and actual_seq_kvlen name different sample counts")
    if sparse_mode == 0 and atten_mask is not None:
        raise NotImplementedError("the double simulates TND with sparse_mode 2/3 or without a mask")
    outs, maxes, sums = [], [], []
    for (q0, q1), (k0, k1) in zip(zip([0, *q_ends], q_ends), zip([0, *kv_ends], kv_ends)):
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (query[q0:q1], key[k0:k1], value[k0:k1]))
        out, row_max, row_sum = _attend(q, k, v, scale, _mask_bnss(atten_mask, sparse_mode, q1 - q0, k1 - k0))
        outs.append(out[0].transpose(0, 1))
        maxes.append(row_max[0].transpose(0, 1))
        sums.append(row_sum[0].transpose(0, 1))
    return (torch.cat(outs), _wide(torch.cat(maxes)), _wide(torch.cat(sums)), torch.empty(0), 0, 0, 0)


def _cumulative(ends, total, name):
    ends = [int(e) for e in ends]
    if any(b <= a for a, b in zip([0, *ends], ends)) or not ends or ends[-1] != total:
        raise ValueError(f"npu_fusion_attention: {name} must be the cumulative ends of the samples (increasing, the "
                         f"last equal to the {total} tokens), got {ends[:8]}")
    return ends


def _check_compressed(atten_mask, sparse_mode):
    if atten_mask is None:
        raise ValueError(f"npu_fusion_attention: sparse_mode {sparse_mode} needs atten_mask, the compressed "
                         f"{COMPRESSED}x{COMPRESSED} causal mask")
    expected = torch.triu(torch.ones(COMPRESSED, COMPRESSED, dtype=torch.bool), diagonal=1)
    if tuple(atten_mask.shape) != (COMPRESSED, COMPRESSED) or not torch.equal(atten_mask.bool().cpu(), expected):
        raise ValueError(f"npu_fusion_attention: sparse_mode {sparse_mode} takes the compressed {COMPRESSED}x"
                         f"{COMPRESSED} mask (True above the diagonal), got shape {tuple(atten_mask.shape)}")


def _mask_bnss(atten_mask, sparse_mode, sq, skv):
    """The [.., Sq, Skv] boolean mask (True: masked) that the mode means, or None."""
    if sparse_mode == 2:
        return torch.ones(sq, skv, dtype=torch.bool).triu(1)
    if sparse_mode == 3:
        return torch.ones(sq, skv, dtype=torch.bool).triu(1 + skv - sq)
    return None if atten_mask is None else atten_mask.bool()


def _attend(q, k, v, scale, mask):
    """q [B, N1, Sq, D], k/v [B, N2, Skv, D]; N2 divides N1 (kv head h // (N1 / N2) serves head h)."""
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"npu_fusion_attention: {k.shape[1]} kv heads do not divide {q.shape[1]} query heads")
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    dtype = q.dtype
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(mask.to(scores.device), float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    row_sum = torch.exp(scores - row_max).sum(dim=-1, keepdim=True)
    return (torch.softmax(scores, dim=-1) @ v.float()).to(dtype), row_max, row_sum


def _to_bnsd(t, layout, heads):
    if layout in ("BSH", "SBH"):
        raise NotImplementedError(f"the double simulates BNSD, BSND and TND, not {layout}")
    t = _dims(t, 4, layout)
    return t if layout == "BNSD" else t.transpose(1, 2)


def _from_bnsd(out, layout):
    return out if layout == "BNSD" else out.transpose(1, 2)


def _dims(t, n, layout):
    if t.dim() != n:
        raise ValueError(f"npu_fusion_attention: layout {layout} takes {n}-D tensors, got {tuple(t.shape)}")
    return t


def _wide(stat):
    return stat.float().expand(*stat.shape[:-1], 8).contiguous()


def npu_rms_norm(self, gamma, epsilon=1e-6):
    """torch_npu.npu_rms_norm(self, gamma, epsilon=1e-06) -> (y, rstd): y = x * rstd * gamma,
    rstd = 1 / sqrt(mean(x^2 over gamma's dims) + eps), kept in float32 for the backward, per
    https://www.hiascend.com/document/detail/zh/Pytorch/700/apiref/apilist/ptaoplist_000860.html
    (Ascend Extension for PyTorch 7.0.0; the same in 6.0.0, ptaoplist_000830; the operator IR
    RmsNorm outputs y and rstd, DT_FLOAT). gamma must have self's dtype."""
    if gamma.dtype != self.dtype:
        raise TypeError(f"npu_rms_norm: gamma is {gamma.dtype} but self is {self.dtype} (they must match)")
    dims = tuple(range(-gamma.dim(), 0))
    x = self.float()
    rstd = torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + epsilon)
    return (x * rstd).to(self.dtype) * gamma, rstd


def npu_rotary_mul(input, r1, r2, rotary_mode="half"):  # noqa: A002 (the documented name)
    """torch_npu.npu_rotary_mul(input, r1, r2, rotary_mode='half'), per
    https://www.hiascend.com/document/detail/zh/Pytorch/700/apiref/apilist/ptaoplist_000141.html
    (Ascend Extension for PyTorch 7.0.0; 6.0.RC2's ptaoplist_000161 has the half mode only):
    half: x1, x2 = chunk(input, 2, -1); output = r1 * input + r2 * cat(-x2, x1);
    interleave: x1, x2 = input[..., ::2], input[..., 1::2], the rotated pairs interleaved.
    4-D tensors only."""
    if input.dim() != 4 or r1.dim() != 4 or r2.dim() != 4:
        raise ValueError(f"npu_rotary_mul: 4-D input, r1 and r2, got {input.dim()}, {r1.dim()}, {r2.dim()}")
    if rotary_mode == "half":
        x1, x2 = torch.chunk(input, 2, dim=-1)
        rotated = torch.cat((-x2, x1), dim=-1)
    elif rotary_mode == "interleave":
        x1, x2 = input[..., ::2], input[..., 1::2]
        rotated = torch.stack((-x2, x1), dim=-1).flatten(-2)
    else:
        raise ValueError(f"npu_rotary_mul: rotary_mode {rotary_mode!r} is not 'half' or 'interleave'")
    return r1 * input + r2 * rotated


def npu_swiglu(input, dim=-1):  # noqa: A002
    """torch_npu.npu_swiglu(input, dim=-1): A, B = the first and second halves of input
    along dim; output = A * sigmoid(A) * B (swish(A) * B), per
    https://hiascend.com/document/detail/zh/Pytorch/600/apiref/apilist/ptaoplist_000834.html
    (Ascend Extension for PyTorch 6.0.0, Atlas A2). dim's size must be even."""
    if input.shape[dim] % 2:
        raise ValueError(f"npu_swiglu: dimension {dim} has odd size {input.shape[dim]}")
    a, b = torch.chunk(input, 2, dim=dim)
    return torch.nn.functional.silu(a) * b


class NpuFusedAdamW(torch.optim.AdamW):
    """torch_npu.optim.NpuFusedAdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=1e-2, amsgrad=False): "core function compatible with torch.optim.AdamW",
    per https://www.hiascend.com/document/detail/zh/Pytorch/600/apiref/apilist/ptaoplist_000631.html
    (Ascend Extension for PyTorch 6.0.0). Here: torch's AdamW, one tensor at a time."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         foreach=False)


OPS = {"npu_fusion_attention": npu_fusion_attention, "npu_rms_norm": npu_rms_norm,
       "npu_rotary_mul": npu_rotary_mul, "npu_swiglu": npu_swiglu}


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, state):
        self.state = state

    def find_spec(self, name, path=None, target=None):
        if name in ("torch_npu", "torch_npu.optim"):
            return importlib.machinery.ModuleSpec(name, self, is_package=name == "torch_npu")
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        if module.__name__ == "torch_npu.optim":
            module.NpuFusedAdamW = NpuFusedAdamW
            return
        self.state["environ_at_import"] = dict(os.environ)
        self.state["imports"] += 1
        if self.state["broken"]:
            raise ImportError("libhccl.so: cannot open shared object file (simulated)")
        for name, fn in self.state["ops"].items():
            setattr(module, name, fn)
        torch.npu = self.state["npu"]  # the real torch_npu adds torch.npu when imported


def install(monkeypatch, *, available=False, bf16=True, ops=tuple(OPS), broken=False, device_name="Ascend910B3"):
    """Make `import torch_npu` load the simulated one (with only the operators in `ops`);
    return its state: environ_at_import, imports, compile_modes (set_compile_mode calls)."""
    calls = []
    state = {"imports": 0, "broken": broken, "compile_modes": calls, "ops": {n: OPS[n] for n in ops}}
    state["npu"] = types.SimpleNamespace(
        is_available=lambda: available, is_bf16_supported=lambda: bf16, device_count=lambda: 1 if available else 0,
        get_device_name=lambda index=0: device_name, set_compile_mode=lambda **kw: calls.append(kw))
    for name in ("torch_npu", "torch_npu.optim"):
        monkeypatch.setitem(sys.modules, name, None)  # recorded as absent, so removed after the test
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(torch, "npu", None, raising=False)
    monkeypatch.delattr(torch, "npu")
    monkeypatch.setattr(sys, "meta_path", [_Finder(state), *sys.meta_path])
    return state
