"""Building blocks whose formulation is chosen for speed under `jax.vmap` over per-client parameters.

Federated cohorts are trained by vmapping one client update over a leading client axis of the
parameters. On CPU, XLA turns a vmapped `lax.conv_general_dilated` with per-client kernels into a
grouped convolution that runs very slowly; an im2col followed by a matmul vmaps into a batched matmul
instead. The gradient of `nn.max_pool` (select_and_scatter) is likewise slow on CPU.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

CONV_IMPLS = ("xla", "patches", "slices")
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def resolve_conv_impl(impl: str, backend: str | None = None) -> str:
    """Turn "auto" into the convolution formulation measured fastest on `backend` (default: the
    current one; another, to build a model that is lowered for it)."""
    if impl == "auto":
        return "slices" if (backend or jax.default_backend()) == "cpu" else "xla"
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv impl {impl!r}; choose one of 'auto', {', '.join(map(repr, CONV_IMPLS))}")
    return impl


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _explicit_padding(
    padding: str | int | Sequence, spatial: Sequence[int], window: Sequence[int], strides: Sequence[int]
) -> list[tuple[int, int]]:
    """nn.Conv's padding conventions (a string, one int for every side, or per-dimension pairs) as
    (low, high) pairs."""
    if isinstance(padding, str):
        return list(lax.padtype_to_pads(spatial, window, strides, padding))
    if isinstance(padding, int):
        return [(padding, padding)] * 2
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def _window_slices(x: jax.Array, window: tuple[int, int], strides: tuple[int, int]) -> list[jax.Array]:
    """For each offset in the window (row-major), the strided view of (..., H, W, C) that it sees."""
    (wh, ww), (sh, sw) = window, strides
    h, w = x.shape[-3:-1]
    out_h, out_w = (h - wh) // sh + 1, (w - ww) // sw + 1
    lead = x.ndim - 3
    return [
        lax.slice(
            x,
            (0,) * lead + (i, j, 0),
            x.shape[:lead] + (i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1, x.shape[-1]),
            (1,) * lead + (sh, sw, 1),
        )
        for i in range(wh)
        for j in range(ww)
    ]


class Conv(nn.Module):
    """2-D NHWC convolution with exactly `nn.Conv`'s parameters, so checkpoints and masks are shared
    between implementations; `impl` only changes how the same function is computed:
    "xla" is `lax.conv_general_dilated`; "patches" is `lax.conv_general_dilated_patches` x matmul;
    "slices" is im2col from strided slices x matmul. On CPU "patches" measured several times slower
    than "slices" forward and backward, because its extraction is a depthwise convolution with an
    identity kernel (and its transpose), while the slices' gradient is pads and adds."""

    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: str | int | Sequence = "SAME"
    use_bias: bool = True
    impl: str = "xla"
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        window = _pair(self.kernel_size)
        kernel = self.param("kernel", self.kernel_init, (*window, x.shape[-1], self.features), jnp.float32)
        y = conv2d(x, kernel, self.strides, self.padding, resolve_conv_impl(self.impl))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32)
        return y


def conv2d(x: jax.Array, kernel: jax.Array, strides, padding, impl: str) -> jax.Array:
    """NHWC x HWIO convolution in the formulation `impl` (Conv's docstring); `strides` and `padding`
    as nn.Conv takes them."""
    window, strides, features = kernel.shape[:2], _pair(strides), kernel.shape[-1]
    padding = _explicit_padding(padding, x.shape[-3:-1], window, strides)
    if impl == "xla":
        return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DIMENSION_NUMBERS)
    if impl == "patches":
        patches = lax.conv_general_dilated_patches(x, window, strides, padding, dimension_numbers=_DIMENSION_NUMBERS)
        # The patch features are ordered (C, kh, kw), so bring the HWIO kernel's I axis first.
        return patches @ kernel.transpose(2, 0, 1, 3).reshape(-1, features)
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + padding + [(0, 0)])
    # Concatenating the row-major window offsets orders features (kh, kw, C), as HWIO does.
    patches = jnp.concatenate(_window_slices(x, window, strides), axis=-1)
    return patches @ kernel.reshape(-1, features)


def _is_plain_2d_conv(module: nn.Module, x) -> bool:
    """An nn.Conv that conv2d computes exactly: 2-D, float32, no dilation, groups, mask or
    special padding."""
    plain = (None, 1, (1, 1), [1, 1])
    return (type(module) is nn.Conv and len(_pair(module.kernel_size)) == 2 and jnp.ndim(x) >= 4
            and module.feature_group_count == 1 and module.input_dilation in plain
            and module.kernel_dilation in plain and module.mask is None and module.dtype in (None, jnp.float32)
            and module.param_dtype == jnp.float32 and jnp.result_type(x) == jnp.float32
            and not (isinstance(module.padding, str) and module.padding not in ("SAME", "VALID"))
            and module.has_variable("params", "kernel"))


def _fast_flax_conv(impl: str):
    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not args or not _is_plain_2d_conv(module, args[0]):
            return next_fun(*args, **kwargs)
        y = conv2d(args[0], module.get_variable("params", "kernel"), module.strides, module.padding, impl)
        return y + module.get_variable("params", "bias") if module.use_bias else y
    return interceptor


@dataclasses.dataclass(frozen=True)
class FastFlaxConvs:
    """A model's `apply` that computes every plain 2-D `flax.linen.Conv` in the formulation `impl`
    (its parameters unchanged): a model written with flax's own Conv then trains vmapped over
    clients as fast as one written with the project's Conv. Compared by value, so equal models
    share compilations."""

    apply_fn: Callable
    impl: str

    def __call__(self, *args, **kwargs):
        with nn.intercept_methods(_fast_flax_conv(self.impl)):
            return self.apply_fn(*args, **kwargs)


def with_fast_flax_convs(apply_fn: Callable, impl: str) -> Callable:
    """`apply_fn` with FastFlaxConvs for `impl`; "xla" (flax's own formulation) leaves it as it is."""
    return apply_fn if impl == "xla" else FastFlaxConvs(apply_fn, impl)


def max_pool(
    x: jax.Array, window: int | Sequence[int], stride: int | Sequence[int], padding: str = "VALID"
) -> jax.Array:
    """`nn.max_pool` on (..., H, W, C) with a cheap gradient.

    The forward pass is `nn.max_pool`'s reduce_window: a max over shifted slices gets fused by XLA
    into every slice of the next convolution's im2col and recomputed there (25x for a 5x5 kernel),
    and XLA's CPU pipeline drops optimization barriers. The backward pass avoids select_and_scatter
    (slow on CPU): an elementwise compare-and-pad over the window offsets, done separably (rows, then
    columns). At exact ties the gradient goes to one of the tied inputs, not necessarily the one
    `nn.max_pool` picks; both are valid subgradients.
    """
    window, stride = _pair(window), _pair(stride)
    if padding not in ("VALID", "SAME"):
        raise ValueError(f"max_pool padding must be 'VALID' or 'SAME', got {padding!r}")
    pads = lax.padtype_to_pads(x.shape[-3:-1], window, stride, padding)
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + list(pads) + [(0, 0)], constant_values=-jnp.inf)
    return _valid_max_pool(x, window, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _valid_max_pool(x: jax.Array, window: tuple[int, int], stride: tuple[int, int]) -> jax.Array:
    lead = (1,) * (x.ndim - 3)
    return lax.reduce_window(
        x, jnp.array(-jnp.inf, x.dtype), lax.max, lead + (*window, 1), lead + (*stride, 1), "VALID"
    )


def _valid_max_pool_fwd(x, window, stride):
    y = _valid_max_pool(x, window, stride)
    return y, (x, y)


def _valid_max_pool_bwd(window, stride, residuals, g):
    x, y = residuals
    row_window, row_stride = (window[0], 1), (stride[0], 1)
    rows = functools.reduce(jnp.maximum, _window_slices(x, row_window, row_stride))
    g_rows = _first_max_gradient(rows, y, g, (1, window[1]), (1, stride[1]))
    return (_first_max_gradient(x, rows, g_rows, row_window, row_stride),)


_valid_max_pool.defvjp(_valid_max_pool_fwd, _valid_max_pool_bwd)


def _first_max_gradient(x, y, g, window, stride):
    """Cotangent of x for y = max over window slices of x, routed to the first slice attaining y."""
    (wh, ww), (sh, sw) = window, stride
    h, w = x.shape[-3:-1]
    out_h, out_w = y.shape[-3:-1]
    no_padding = [(0, 0, 0)] * (x.ndim - 3)
    taken = jnp.zeros(y.shape, bool)
    gx = jnp.zeros_like(x)
    offsets = [(i, j) for i in range(wh) for j in range(ww)]
    for (i, j), window_slice in zip(offsets, _window_slices(x, window, stride)):
        hit = (window_slice == y) & ~taken
        taken = taken | hit
        # Scatter back to the slice's positions: the transpose of the strided slice.
        placement = [
            (i, h - i - sh * (out_h - 1) - 1, sh - 1),
            (j, w - j - sw * (out_w - 1) - 1, sw - 1),
            (0, 0, 0),
        ]
        gx = gx + lax.pad(jnp.where(hit, g, 0), jnp.zeros((), x.dtype), no_padding + placement)
    return gx


def batch_norm(train: bool, name: str, scale: float = 1.0) -> nn.BatchNorm:
    """PyTorch's BatchNorm2d defaults (running-average momentum 0.1 is flax's 0.9; epsilon 1e-5), with
    the initial scale `scale` (the authors' VGG starts at 0.5). Unlike PyTorch the running variance is
    the biased batch variance."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        scale_init=nn.initializers.constant(scale), name=name)


def batch_stats_mask(example_mask: jax.Array | None, ndim: int) -> jax.Array | None:
    """Per-example mask for `nn.BatchNorm(mask=...)` so padded examples do not enter batch statistics.

    A batch with no valid example (a padded step) falls back to all examples: the caller discards
    that step anyway, and an empty mean would put NaNs into the forward and backward pass.
    """
    if example_mask is None:
        return None
    mask = jnp.logical_or(example_mask, ~jnp.any(example_mask))
    return mask.reshape(mask.shape + (1,) * (ndim - 1))
