"""The op around cuDNN's attention (portaft/speed_ups/_cudnn_op.py): layouts, shapes and gradients.

cuDNN runs only on a GPU (tests/gpu/test_gpu.py runs it, eager and compiled); here float32
math attention stands in for its two kernels, so what is tested on the CPU is portaft's
part: the dense view of same-length samples, the op's registered shapes (what the
compiler plans with), and its backward wiring, eager and inside torch.compile.
"""

import pytest
import torch

from portaft.speed_ups import _cudnn_op, varlen_attention


def math_forward(query, key, value, scale):
    """The kernel's contract on [samples, heads, length, dim]: (out, logsumexp [samples, heads, length, 1])."""
    scores = query @ key.transpose(-1, -2) * (scale or query.shape[-1] ** -0.5)
    scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, -1) @ value, torch.logsumexp(scores, -1, keepdim=True)


def math_backward(grad_out, query, key, value, out, logsumexp, scale):
    """Attention's gradients from the saved logsumexp, as the kernel computes them."""
    scale = scale or query.shape[-1] ** -0.5
    scores = query @ key.transpose(-1, -2) * scale
    probs = torch.exp(scores - logsumexp).tril()
    grad_probs = grad_out @ value.transpose(-1, -2)
    grad_scores = probs * (grad_probs - (grad_out * out).sum(-1, keepdim=True))
    return grad_scores @ key * scale, grad_scores.transpose(-1, -2) @ query * scale, probs.transpose(-1, -2) @ grad_out


@pytest.fixture
def math_kernels(monkeypatch):
    monkeypatch.setattr(_cudnn_op, "cudnn_forward", math_forward)
    monkeypatch.setattr(_cudnn_op, "cudnn_backward", math_backward)


@pytest.mark.parametrize("compiled", [False, True])
def test_same_length_samples_get_causal_attention_and_its_gradients(math_kernels, compiled):
    """3 samples of 12 tokens: each attends causally to itself only, out and gradients
    equal to sdpa on each sample, through the op's registered shapes when compiled."""
    torch.manual_seed(0)
    leaves = [torch.randn(36, 4, 8, requires_grad=True) for _ in range(3)]  # [tokens, heads, dim]
    function = varlen_attention.cudnn_dense
    if compiled:
        function = torch.compile(function, dynamic=True, backend="aot_eager")
    out = function(*leaves, 3, None)
    (out * torch.arange(out.numel()).reshape(out.shape).cos()).sum().backward()

    reference = [t.detach().view(3, 12, 4, 8).transpose(1, 2).requires_grad_() for t in leaves]
    expected = torch.nn.functional.scaled_dot_product_attention(*reference, is_causal=True).transpose(1, 2)
    (expected.reshape(out.shape) * torch.arange(out.numel()).reshape(out.shape).cos()).sum().backward()
    assert out.shape == (36, 4, 8)
    torch.testing.assert_close(out, expected.reshape(36, 4, 8))
    for leaf, ref in zip(leaves, reference):
        torch.testing.assert_close(leaf.grad, ref.grad.transpose(1, 2).reshape(36, 4, 8))


def test_the_registered_shapes_are_the_kernels(math_kernels):
    """The compiler plans with the op's fake outputs: they must have the real outputs' shapes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    leaves = [torch.randn(36, 4, 8) for _ in range(3)]
    real = torch.ops.portaft.cudnn_causal_attention(*leaves, 3, None)
    grads = torch.ops.portaft.cudnn_causal_attention_backward(leaves[0], *leaves, *real, 3, None)
    with FakeTensorMode() as mode:
        fakes = [mode.from_tensor(t) for t in leaves]
        fake = torch.ops.portaft.cudnn_causal_attention(*fakes, 3, None)
        fake_grads = torch.ops.portaft.cudnn_causal_attention_backward(fakes[0], *fakes, *fake, 3, None)
    for got, want in zip([*real, *grads], [*fake, *fake_grads]):
        assert (got.shape, got.dtype, got.stride()) == (want.shape, want.dtype, want.stride())
