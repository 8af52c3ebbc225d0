"""Convolution and pooling over NCHW images: conv2d, conv_transpose2d, max/avg pooling, global pooling.

Kernels are vectorized over batch, channels and pixels; Python loops run only over kernel
offsets (kh x kw). conv2d is im2col (``sliding_window_view``, one copy) and one batched GEMM
per group; its input gradient is col2im: one strided add per kernel offset.

Padding: ``padding`` is 2 ints (top/bottom = p[0], left/right = p[1], as PyTorch) or 4 ints
(top, left, bottom, right: ONNX ``pads`` order). Attributes cannot be strings (the op table's
attribute kinds are int/ints/float/bool/axes), so ONNX's ``auto_pad`` is an int enum:
0 NOTSET (use ``padding``), 1 SAME_UPPER (the extra pad row/column at the end, as ONNX and
PyTorch's ``padding="same"``), 2 SAME_LOWER (extra at the start), 3 VALID (no padding).
With SAME, the output is ceil(input / stride).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import batching
from .registry import (
    Attr,
    Op,
    Sample,
    ShapeError,
    fmt_shape,
    register,
    require_float,
    require_same_dtype,
)
from ..spec import TensorSpec, num_elements

AUTO_PAD = {0: "NOTSET", 1: "SAME_UPPER", 2: "SAME_LOWER", 3: "VALID"}

CONV_ATTRS = {
    "stride": Attr("ints", (1, 1)),
    "padding": Attr("ints", (0, 0)),
    "dilation": Attr("ints", (1, 1)),
    "groups": Attr("int", 1),
    "auto_pad": Attr("int", 0),
}


# ------------------------------------------------------------------ geometry


def _pair(name, value) -> tuple[int, int]:
    v = tuple(value)
    if len(v) == 1:
        v = v * 2
    if len(v) != 2:
        raise ShapeError(f"{name} must hold 1 or 2 ints, got {list(v)}")
    return v


def _check_geometry(stride, padding, dilation, auto_pad):
    s, d = _pair("stride", stride), _pair("dilation", dilation)
    if min(s) < 1 or min(d) < 1:
        raise ShapeError(f"stride {list(s)} and dilation {list(d)} must be positive")
    p = tuple(padding)
    if len(p) not in (2, 4) or min(p) < 0:
        raise ShapeError(f"padding must be 2 or 4 non-negative ints, got {list(p)}")
    if auto_pad not in AUTO_PAD:
        raise ShapeError(f"auto_pad must be one of {AUTO_PAD}, got {auto_pad}")
    return s, d


def _pads(size: tuple[int, int], kernel, stride, padding, dilation, auto_pad) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) for input spatial ``size``."""
    if auto_pad == 3:
        return (0, 0, 0, 0)
    if auto_pad in (1, 2):
        pads = []
        for n, k, s, d in zip(size, kernel, stride, dilation):
            out = -(-n // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
            small = total // 2
            pads.append((small, total - small) if auto_pad == 1 else (total - small, small))
        return (pads[0][0], pads[1][0], pads[0][1], pads[1][1])
    p = tuple(padding)
    return (p[0], p[1], p[0], p[1]) if len(p) == 2 else p


def _out_size(n, k, s, d, before, after):
    return (n + before + after - d * (k - 1) - 1) // s + 1


def _spatial_out(size, kernel, stride, padding, dilation, auto_pad):
    """Output (H, W) from a possibly unknown input size; a known size too small raises."""
    out = []
    for i, (n, k, s, d) in enumerate(zip(size, kernel, stride, dilation)):
        if n is None or k is None:
            out.append(None)
            continue
        if auto_pad in (1, 2):
            out.append(-(-n // s))
            continue
        pads = _pads((n, n), (k, k), (s, s), padding, (d, d), auto_pad)
        before, after = (pads[0], pads[2]) if i == 0 else (pads[1], pads[3])
        o = _out_size(n, k, s, d, before, after)
        if o < 1:
            raise ShapeError(f"a kernel of {k} (dilation {d}) does not fit an input of {n} padded by {before}+{after}")
        out.append(o)
    return tuple(out)


def _pad(x, pads, value=0.0):
    t, left, b, r = pads
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (0, 0), (t, b), (left, r)), constant_values=value)


def _offsets(kernel, stride, dilation, out):
    """(i, j, rows slice, cols slice) of the padded input read by each kernel offset."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out
    for i in range(kh):
        for j in range(kw):
            yield i, j, slice(i * dh, i * dh + sh * (ho - 1) + 1, sh), slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)


# ------------------------------------------------------------------ conv kernels (resolved geometry)


def _channel_cols(x, kernel, stride, dilation, pads, groups):
    """im2col, channel-major: (N, groups, C/groups*kh*kw, Ho*Wo), one copy of the windows whose
    innermost run (a row of output pixels) is read along x's rows (3x faster to gather than
    pixel-major columns) and which, times W, is already NCHW."""
    n, c = x.shape[:2]
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    win = sliding_window_view(_pad(x, pads), ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, Ho, Wo, kh, kw)
    ho, wo = win.shape[2:4]
    return win.transpose(0, 1, 4, 5, 2, 3).reshape(n, groups, (c // groups) * kh * kw, ho * wo), (ho, wo)


def _conv(x, w, stride, dilation, pads, groups):
    co, _, kh, kw = w.shape
    cols, (ho, wo) = _channel_cols(x, (kh, kw), stride, dilation, pads, groups)
    y = np.matmul(w.reshape(1, groups, co // groups, -1), cols)  # (N, groups, Cout/groups, Ho*Wo)
    return y.reshape(x.shape[0], co, ho, wo)


def _conv_dw(x, g, w_shape, stride, dilation, pads, groups):
    """g times x's columns, summed over examples and pixels: per-example products summed when
    they are no larger than the columns (Cout/groups <= Ho*Wo), else one GEMM over
    examples x pixels (the columns regathered pixel-major, small when the image is)."""
    co, _, kh, kw = w_shape
    cols, (ho, wo) = _channel_cols(x, (kh, kw), stride, dilation, pads, groups)  # (N, groups, K, Ho*Wo)
    n, cog = x.shape[0], co // groups
    gm = g.reshape(n, groups, cog, ho * wo)
    if cog <= ho * wo:
        dw = np.matmul(gm, cols.transpose(0, 1, 3, 2)).sum(axis=0)  # (groups, Cout/groups, K)
    else:
        dw = np.matmul(gm.transpose(1, 2, 0, 3).reshape(groups, cog, -1),
                       cols.transpose(1, 0, 3, 2).reshape(groups, n * ho * wo, -1))
    return dw.reshape(w_shape)


def _conv_dx(g, w, x_shape, stride, dilation, pads, groups):
    """col2im of W^T g: the adjoint of ``_conv`` in x (conv_transpose2d's forward). The columns
    are channel-major, so each kernel offset adds a block whose rows are contiguous."""
    n, c, h, wd = x_shape
    co, cg, kh, kw = w.shape
    ho, wo = g.shape[2:]
    wt = w.reshape(1, groups, co // groups, cg * kh * kw).transpose(0, 1, 3, 2)
    dcols = np.matmul(wt, g.reshape(n, groups, co // groups, ho * wo))  # (N, groups, cg*kh*kw, Ho*Wo)
    dcols = dcols.reshape(n, groups * cg, kh, kw, ho, wo)
    t, left, b, r = pads
    if not any(pads) and (kh, kw) == (1, 1) and tuple(stride) == (1, 1):
        return dcols[:, :, 0, 0]
    dxp = np.zeros((n, c, h + t + b, wd + left + r), dtype=g.dtype)
    for i, j, rs, cs in _offsets((kh, kw), stride, dilation, (ho, wo)):
        dxp[:, :, rs, cs] += dcols[:, :, i, j]
    return dxp[:, :, t:t + h, left:left + wd]


# ------------------------------------------------------------------ conv2d


def _bias_add(y, b):
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def _conv_geometry(x_shape, w_shape, stride, padding, dilation, auto_pad):
    s, d = _pair("stride", stride), _pair("dilation", dilation)
    return s, d, _pads(x_shape[2:], w_shape[2:], s, padding, d, auto_pad)


def conv2d(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, auto_pad=0):
    s, d, pads = _conv_geometry(x.shape, w.shape, stride, padding, dilation, auto_pad)
    return _bias_add(_conv(x, w, s, d, pads, groups), b)


def _conv2d_dx(g, y, x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, auto_pad=0):
    s, d, pads = _conv_geometry(x.shape, w.shape, stride, padding, dilation, auto_pad)
    return np.ascontiguousarray(_conv_dx(g, w, x.shape, s, d, pads, groups))  # not a view of the padded buffer


def _conv2d_dw(g, y, x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, auto_pad=0):
    s, d, pads = _conv_geometry(x.shape, w.shape, stride, padding, dilation, auto_pad)
    return _conv_dw(x, g, w.shape, s, d, pads, groups)


def _bias_grad(g, *_, **__):
    return g.sum(axis=(0, 2, 3))


# one rule per input: a first layer's dx (its input is data) is never computed
_CONV2D_VJP = (_conv2d_dx, _conv2d_dw, _bias_grad)


def _dim_eq(a, b):
    return a is None or b is None or a == b


def _infer_conv_inputs(specs, op):
    if len(specs) not in (2, 3):
        raise ShapeError(f"{op} takes (x, w) or (x, w, b), got {len(specs)} inputs")
    require_float(*specs)
    require_same_dtype(*specs)
    x, w = specs[:2]
    if x.ndim != 4 or w.ndim != 4:
        raise ShapeError(f"{op} needs x (N, C, H, W) and w of rank 4, got {fmt_shape(x.shape)} and {fmt_shape(w.shape)}")
    if len(specs) == 3 and specs[2].ndim != 1:
        raise ShapeError(f"{op}'s bias must be rank 1, got {fmt_shape(specs[2].shape)}")
    return x, w


def _infer_conv2d(*specs, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, auto_pad=0):
    x, w = _infer_conv_inputs(specs, "conv2d")
    s, d = _check_geometry(stride, padding, dilation, auto_pad)
    if groups < 1:
        raise ShapeError(f"groups must be positive, got {groups}")
    c, co, cg = x.shape[1], w.shape[0], w.shape[1]
    if co is not None and co % groups:
        raise ShapeError(f"{co} output channels do not split into {groups} groups")
    if c is not None and cg is not None and c != cg * groups:
        raise ShapeError(f"x has {c} channels but w {fmt_shape(w.shape)} expects {cg} per group x {groups} groups")
    if len(specs) == 3 and not _dim_eq(specs[2].shape[0], co):
        raise ShapeError(f"bias {fmt_shape(specs[2].shape)} does not match {co} output channels")
    return TensorSpec((x.shape[0], co) + _spatial_out(x.shape[2:], w.shape[2:], s, padding, d, auto_pad), x.dtype)


def _linear_image_batch(ins, specs, out, **_):
    """conv2d / conv_transpose2d: per example along the batch axis of x with batch-free
    weights; linear in x, so a mean over the batch stays a mean (a bias adds once per
    mean, but would be added once per shard to a sum)."""
    x, rest = ins[0], ins[1:]
    if any(b.kind != "free" for b in rest):
        return batching.coupled("convolves with batch-dependent weights or bias")
    if x.kind == "rows":
        return x if x.axis == 0 else batching.coupled("mixes channels and pixels along the batch axis")
    if x.kind == "mean" or len(ins) == 2:
        return x
    return batching.coupled("adds a batch-free bias to a sum over the batch (each shard would count it once)")


def _conv_flops(out, x, w, *rest, groups=1, **_):
    n, co, ho, wo = out.shape
    cg, kh, kw = w.shape[1:]
    return 2 * num_elements((n, co, ho, wo, cg, kh, kw))


def _known(shape) -> tuple[int, ...]:
    return tuple(1 if d is None else d for d in shape)


def _padded_elements(x_shape, pads) -> int:
    n, c, h, w = x_shape
    t, left, b, r = pads
    return n * c * (h + t + b) * (w + left + r)


def _conv2d_workspace(phase, out, x, w, *rest, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                      auto_pad=0):
    """Bytes (see the registry). Forward: x padded (a copy, if padded) and its channel-major
    columns, N*Ho*Wo*C*kh*kw elements (kh*kw times x for stride 1); then the GEMM's output.
    Backward, one rule at a time: dx = col2im(W^T g) holds the columns of dx and the zeroed padded
    dx (cropped by a copy); then dw, beside dx, regathers x's columns and multiplies: per-example
    products (N*Cout*K) summed, or for images smaller than Cout/groups pixels, g and the columns
    regathered pixel-major."""
    xs, ws, ys = _known(x.shape), _known(w.shape), num_elements(out.shape)
    pads = _conv_geometry(xs, ws, stride, padding, dilation, auto_pad)[2]
    xn, wn, xpad = num_elements(xs), num_elements(ws), _padded_elements(xs, pads)
    copy = xpad if any(pads) else 0
    cols = num_elements(out.shape[:1] + out.shape[2:] + (xs[1],) + ws[2:])
    if phase == "forward":
        elements = cols + max(copy, ys)
    else:
        pixels, per_group = num_elements(out.shape[2:]), ws[0] // groups
        products = ys // pixels * num_elements(ws[1:]) if per_group <= pixels else ys + cols
        dx = max(cols + xpad, xpad + xn)
        elements = max(dx, xn + max(copy + cols, cols + products + wn)) + ws[0]
    return elements * x.dtype.itemsize


def _conv2d_samples(rng):
    cases = [
        ((2, 3, 5, 5), (4, 3, 3, 3), True, {}),
        ((1, 2, 6, 5), (2, 2, 2, 3), False, {"stride": [2, 1], "padding": [1, 0, 0, 2]}),
        ((2, 4, 5, 6), (4, 2, 2, 2), True, {"groups": 2, "dilation": [2, 1], "padding": [1, 1]}),
        ((1, 2, 5, 4), (3, 2, 3, 2), True, {"auto_pad": 1, "stride": [2, 2]}),
        ((1, 2, 4, 4), (2, 1, 3, 3), False, {"auto_pad": 2, "groups": 2}),
        ((2, 3, 3, 3), (8, 3, 3, 3), True, {}),  # more output channels than pixels: dw by one GEMM
    ]
    out = []
    for xs, ws, bias, attrs in cases:
        inputs = (rng.normal(size=xs), rng.normal(size=ws)) + ((rng.normal(size=ws[0]),) if bias else ())
        out.append(Sample(inputs, attrs))
    return out


register(Op(
    "conv2d", conv2d, _infer_conv2d, _CONV2D_VJP, _conv2d_samples, arity=None, attrs=CONV_ATTRS,
    saves=(0, 1), batch=_linear_image_batch, flops=_conv_flops, workspace=_conv2d_workspace,
    doc="conv2d(x, w[, b]): 2-D convolution (cross-correlation) of x (N, C, H, W) with w (Cout, C/groups, kh, kw); "
        "stride, padding (2 or 4 ints), dilation, groups, auto_pad (0 NOTSET, 1 SAME_UPPER, 2 SAME_LOWER, 3 VALID)",
))


# ------------------------------------------------------------------ conv_transpose2d

TRANSPOSE_ATTRS = {
    "stride": Attr("ints", (1, 1)),
    "padding": Attr("ints", (0, 0)),
    "output_padding": Attr("ints", (0, 0)),
    "dilation": Attr("ints", (1, 1)),
    "groups": Attr("int", 1),
}


def _transpose_geometry(x_shape, w_shape, stride, padding, output_padding, dilation, groups):
    s, d = _pair("stride", stride), _pair("dilation", dilation)
    op = _pair("output_padding", output_padding)
    p = tuple(padding)
    pads = (p[0], p[1], p[0], p[1]) if len(p) == 2 else p
    size = tuple((n - 1) * si - pads[a] - pads[a + 2] + di * (k - 1) + o + 1
                 for a, (n, k, si, di, o) in enumerate(zip(x_shape[2:], w_shape[2:], s, d, op)))
    out_shape = (x_shape[0], w_shape[1] * groups) + size
    return s, d, pads, out_shape


def conv_transpose2d(x, w, b=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0), dilation=(1, 1), groups=1):
    s, d, pads, out_shape = _transpose_geometry(x.shape, w.shape, stride, padding, output_padding, dilation, groups)
    y = np.ascontiguousarray(_conv_dx(x, w, out_shape, s, d, pads, groups))
    return _bias_add(y, b)


def _conv_transpose2d_vjp(g, y, x, w, b=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
                          dilation=(1, 1), groups=1):
    s, d, pads, _ = _transpose_geometry(x.shape, w.shape, stride, padding, output_padding, dilation, groups)
    return (_conv(g, w, s, d, pads, groups),
            _conv_dw(g, x, w.shape, s, d, pads, groups),
            None if b is None else g.sum(axis=(0, 2, 3)))


def _infer_conv_transpose2d(*specs, stride=(1, 1), padding=(0, 0), output_padding=(0, 0), dilation=(1, 1), groups=1):
    x, w = _infer_conv_inputs(specs, "conv_transpose2d")
    s, d = _check_geometry(stride, padding, dilation, 0)
    op = _pair("output_padding", output_padding)
    if any(o < 0 or o >= si for o, si in zip(op, s)):
        raise ShapeError(f"output_padding {list(op)} must be non-negative and smaller than the stride {list(s)}")
    if groups < 1:
        raise ShapeError(f"groups must be positive, got {groups}")
    c, ci, cg = x.shape[1], w.shape[0], w.shape[1]
    if ci is not None and ci % groups:
        raise ShapeError(f"{ci} input channels do not split into {groups} groups")
    if not _dim_eq(c, ci):
        raise ShapeError(f"x has {c} channels but w {fmt_shape(w.shape)} expects {ci}")
    co = None if cg is None else cg * groups
    if len(specs) == 3 and not _dim_eq(specs[2].shape[0], co):
        raise ShapeError(f"bias {fmt_shape(specs[2].shape)} does not match {co} output channels")
    p = tuple(padding)
    pads = (p[0], p[1], p[0], p[1]) if len(p) == 2 else p
    size = []
    for a, (n, k, si, di, o) in enumerate(zip(x.shape[2:], w.shape[2:], s, d, op)):
        if n is None or k is None:
            size.append(None)
            continue
        m = (n - 1) * si - pads[a] - pads[a + 2] + di * (k - 1) + o + 1
        if m < 1:
            raise ShapeError(f"padding {list(p)} leaves no output for an input of {n}")
        size.append(m)
    return TensorSpec((x.shape[0], co) + tuple(size), x.dtype)


def _transpose_flops(out, x, w, *rest, **_):
    return 2 * num_elements((x.shape[0], x.shape[1], x.shape[2], x.shape[3]) + w.shape[1:])


def _conv_transpose2d_workspace(phase, out, x, w, *rest, stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
                                dilation=(1, 1), groups=1):
    """Bytes (see the registry); the adjoint's columns, N*H*W*Cout*kh*kw elements, are
    kh*kw/(sh*sw) times the output. Forward (col2im of x @ W): x's matrix and the columns, then
    the columns and the zeroed padded output (cropped by a copy, if padded). Backward: dx = conv2d
    of g (g padded, its columns, the GEMM's result and dx), then dw holds dx and g's columns again
    beside the products with x (per example, N*Cin*K, or x and the columns regathered)."""
    xs, ws, ys = _known(x.shape), _known(w.shape), _known(out.shape)
    pads = _transpose_geometry(xs, ws, stride, padding, output_padding, dilation, groups)[2]
    xn, wn, ypad = num_elements(xs), num_elements(ws), _padded_elements(ys, pads)
    copy = ypad if any(pads) else 0
    cols = num_elements(xs[:1] + xs[2:] + (ys[1],) + ws[2:])
    if phase == "forward":
        elements = cols + max(xn, copy)
    else:
        pixels, per_group = num_elements(xs[2:]), xs[1] // groups
        products = xs[0] * xs[1] * num_elements(ws[1:]) if per_group <= pixels else xn + cols
        elements = xn + cols + max(copy, xn + wn, products + wn) + ys[1]
    return elements * x.dtype.itemsize


def _conv_transpose2d_samples(rng):
    cases = [
        ((2, 3, 3, 3), (3, 2, 3, 3), True, {}),
        ((1, 2, 3, 4), (2, 3, 2, 3), False, {"stride": [2, 3], "padding": [1, 0, 0, 1], "output_padding": [1, 2]}),
        ((2, 4, 3, 3), (4, 1, 2, 2), True, {"groups": 2, "dilation": [2, 1], "stride": [2, 2], "padding": [1, 1]}),
    ]
    out = []
    for xs, ws, bias, attrs in cases:
        inputs = (rng.normal(size=xs), rng.normal(size=ws))
        if bias:
            inputs += (rng.normal(size=ws[1] * attrs.get("groups", 1)),)
        out.append(Sample(inputs, attrs))
    return out


register(Op(
    "conv_transpose2d", conv_transpose2d, _infer_conv_transpose2d, _conv_transpose2d_vjp, _conv_transpose2d_samples,
    arity=None, attrs=TRANSPOSE_ATTRS, saves=(0, 1), batch=_linear_image_batch, flops=_transpose_flops,
    workspace=_conv_transpose2d_workspace,
    doc="conv_transpose2d(x, w[, b]): the adjoint of conv2d in its input; x (N, Cin, H, W), w (Cin, Cout/groups, kh, kw); "
        "stride, padding (2 or 4 ints), output_padding (< stride, added at the bottom/right), dilation, groups",
))


# ------------------------------------------------------------------ pooling

POOL_ATTRS = {
    "kernel": Attr("ints"),
    "stride": Attr("ints", None),  # None: the kernel size (PyTorch's default)
    "padding": Attr("ints", (0, 0)),
    "dilation": Attr("ints", (1, 1)),
    "auto_pad": Attr("int", 0),
}


def _pool_geometry(x_shape, kernel, stride, padding, dilation, auto_pad):
    k = _pair("kernel", kernel)
    s = k if stride is None else _pair("stride", stride)
    d = _pair("dilation", dilation)
    pads = _pads(x_shape[2:], k, s, padding, d, auto_pad)
    out = tuple(_out_size(n, ki, si, di, pads[a], pads[a + 2])
                for a, (n, ki, si, di) in enumerate(zip(x_shape[2:], k, s, d)))
    return k, s, d, pads, out


def _infer_pool(x, kernel, stride=None, padding=(0, 0), dilation=(1, 1), auto_pad=0, **_):
    require_float(x)
    if x.ndim != 4:
        raise ShapeError(f"pooling needs x (N, C, H, W), got {fmt_shape(x.shape)}")
    k = _pair("kernel", kernel)
    if min(k) < 1:
        raise ShapeError(f"kernel {list(k)} must be positive")
    s = k if stride is None else stride
    s, d = _check_geometry(s, padding, dilation, auto_pad)
    pads = _pads((1, 1), k, s, padding, d, 0) if auto_pad == 0 else None
    if pads is not None and any(p > (ki - 1) * di for p, ki, di in zip(pads, k * 2, d * 2)):
        raise ShapeError(f"padding {list(padding)} must be at most (kernel - 1) * dilation (below the kernel, as "
                         f"ONNX, without dilation) for kernel {list(k)}: a window would hold padding only")
    return TensorSpec(x.shape[:2] + _spatial_out(x.shape[2:], k, s, padding, d, auto_pad), x.dtype)


def max_pool2d(x, kernel, stride=None, padding=(0, 0), dilation=(1, 1), auto_pad=0):
    k, s, d, pads, out = _pool_geometry(x.shape, kernel, stride, padding, dilation, auto_pad)
    xp = _pad(x, pads, -np.inf)
    y = None
    for _, _, rs, cs in _offsets(k, s, d, out):
        if y is None:
            y = xp[:, :, rs, cs].copy()
        else:
            np.maximum(y, xp[:, :, rs, cs], out=y)
    return y


def _max_pool2d_vjp(g, y, x, kernel, stride=None, padding=(0, 0), dilation=(1, 1), auto_pad=0):
    """Each window's gradient goes to its first element (in kernel order) equal to the max,
    as PyTorch; a window whose max is NaN passes none."""
    k, s, d, pads, out = _pool_geometry(x.shape, kernel, stride, padding, dilation, auto_pad)
    xp = _pad(x, pads, -np.inf)
    t, left, b, r = pads
    n, c, h, w = x.shape
    dxp = np.zeros(xp.shape, dtype=g.dtype)
    free = np.ones(y.shape, bool)  # windows whose maximum is not yet found
    hit, share = np.empty(y.shape, bool), np.empty(g.shape, g.dtype)
    tiled = all(si >= (ki - 1) * di + 1 for ki, si, di in zip(k, s, d))  # windows do not overlap
    for _, _, rs, cs in _offsets(k, s, d, out):
        np.equal(xp[:, :, rs, cs], y, out=hit)
        hit &= free
        free ^= hit  # hit lies within free
        if tiled:  # each pixel in one window: write in place, no temporary
            np.multiply(g, hit, out=dxp[:, :, rs, cs])
        else:
            dxp[:, :, rs, cs] += np.multiply(g, hit, out=share)
    return np.ascontiguousarray(dxp[:, :, t:t + h, left:left + w])  # not a view of the padded buffer


def _pool_count(shape, k, s, d, pads, out, include_pad, dtype):
    """Elements per window: k*k with count_include_pad, else the window's unpadded ones."""
    if include_pad or not any(pads):
        return dtype.type(k[0] * k[1])
    h, w = shape[2:]
    ones = _pad(np.ones((1, 1, h, w), dtype), pads)
    count = np.zeros((1, 1) + out, dtype)
    for _, _, rs, cs in _offsets(k, s, d, out):
        count += ones[:, :, rs, cs]
    return np.maximum(count, 1)  # a dilated window can miss a tiny input: its mean is 0


def avg_pool2d(x, kernel, stride=None, padding=(0, 0), dilation=(1, 1), auto_pad=0, count_include_pad=False):
    k, s, d, pads, out = _pool_geometry(x.shape, kernel, stride, padding, dilation, auto_pad)
    xp = _pad(x, pads)
    total = np.zeros(x.shape[:2] + out, x.dtype)
    for _, _, rs, cs in _offsets(k, s, d, out):
        total += xp[:, :, rs, cs]
    total /= _pool_count(x.shape, k, s, d, pads, out, count_include_pad, x.dtype)
    return total


def _avg_pool2d_vjp(g, y, x, kernel, stride=None, padding=(0, 0), dilation=(1, 1), auto_pad=0,
                    count_include_pad=False):
    k, s, d, pads, out = _pool_geometry(x.shape, kernel, stride, padding, dilation, auto_pad)
    share = g / _pool_count(x.shape, k, s, d, pads, out, count_include_pad, g.dtype)
    t, left, b, r = pads
    n, c, h, w = x.shape
    dxp = np.zeros((n, c, h + t + b, w + left + r), dtype=g.dtype)
    for _, _, rs, cs in _offsets(k, s, d, out):
        dxp[:, :, rs, cs] += share
    return np.ascontiguousarray(dxp[:, :, t:t + h, left:left + w])  # not a view of the padded buffer


def _pool_batch(linear: bool):
    """Pooling works per example and per channel: rows on axis 0 or 1 stay rows; a mean or
    sum over the batch survives average pooling (linear), not max pooling."""
    def rule(ins, specs, out, **_):
        (b,) = ins
        if b.reduced:
            return b if linear else batching.coupled("takes a max of a mean or sum over the batch")
        if b.axis in (0, 1):
            return b
        return batching.coupled("pools over the batch axis")
    return rule


def _pool_flops(out, x, kernel, **_):
    return num_elements(out.shape) * int(np.prod(_pair("kernel", kernel)))


def _pool_sizes(out, x, kernel, stride, padding, dilation, auto_pad):
    """Elements of (x, x padded, the output) and of the spatial planes (x's, padded, output's)."""
    xs = _known(x.shape)
    pads = _pool_geometry(xs, kernel, stride, padding, dilation, auto_pad)[3]
    xpad = _padded_elements(xs, pads)
    n, c = xs[:2]
    return num_elements(xs), xpad, xpad if any(pads) else 0, num_elements(out.shape), xpad // (n * c or 1)


def _max_pool2d_workspace(phase, out, x, kernel, stride=None, padding=(0, 0), dilation=(1, 1), auto_pad=0):
    """Bytes (see the registry). Forward: x padded with -inf (a copy, if padded). Backward: that
    copy, the zeroed padded dx (cropped by a copy), g * hit and three output-sized bool masks."""
    xn, xpad, copy, yn, _ = _pool_sizes(out, x, kernel, stride, padding, dilation, auto_pad)
    if phase == "forward":
        return copy * x.dtype.itemsize
    return (copy + xpad + yn + (xn if copy else 0)) * x.dtype.itemsize + 3 * yn


def _avg_pool2d_workspace(phase, out, x, kernel, stride=None, padding=(0, 0), dilation=(1, 1), auto_pad=0,
                          count_include_pad=False):
    """Bytes (see the registry). Forward: x padded (a copy, if padded) and the window counts (a
    padded plane of ones and two output planes). Backward: g / counts, the zeroed padded dx
    (cropped by a copy) and the counts."""
    xn, xpad, copy, yn, plane = _pool_sizes(out, x, kernel, stride, padding, dilation, auto_pad)
    counts = 2 * plane + 2 * num_elements(out.shape[2:])
    if phase == "forward":
        return (copy + counts) * x.dtype.itemsize
    return (yn + xpad + (xn if copy else 0) + counts) * x.dtype.itemsize


def _pool_samples(extra):
    def samples(rng):
        # a coarse grid of distinct values: finite differences never cross a tie
        def x(shape):
            return rng.permutation(np.prod(shape)).reshape(shape) * 0.1 + rng.uniform(-0.01, 0.01, shape)
        return [
            Sample((x((2, 3, 5, 5)),), {"kernel": [2, 2]}),
            Sample((x((1, 2, 6, 5)),), {"kernel": [3, 2], "stride": [2, 1], "padding": [1, 1], **extra}),
            Sample((x((1, 2, 7, 6)),), {"kernel": [2, 2], "stride": [1, 2], "dilation": [2, 1],
                                          "padding": [1, 0, 0, 1], **extra}),
            Sample((x((1, 1, 5, 4)),), {"kernel": [3, 3], "stride": [2, 2], "auto_pad": 1}),
        ]
    return samples


register(Op(
    "max_pool2d", max_pool2d, _infer_pool, (_max_pool2d_vjp,), _pool_samples({}), attrs=POOL_ATTRS,
    saves=(0, "y"), batch=_pool_batch(False), flops=_pool_flops, workspace=_max_pool2d_workspace,
    doc="max over kh x kw windows of x (N, C, H, W), padded with -inf; the gradient goes to the first "
        "maximal element of each window (as PyTorch); stride defaults to the kernel",
))
register(Op(
    "avg_pool2d", avg_pool2d, _infer_pool, (_avg_pool2d_vjp,), _pool_samples({"count_include_pad": True}),
    attrs={**POOL_ATTRS, "count_include_pad": Attr("bool", False)},
    saves=(), batch=_pool_batch(True), flops=_pool_flops, workspace=_avg_pool2d_workspace,
    doc="mean over kh x kw windows of x (N, C, H, W); padding counts only with count_include_pad "
        "(default false, as ONNX); stride defaults to the kernel",
))


# ------------------------------------------------------------------ global pooling


def _infer_global(x):
    require_float(x)
    if x.ndim < 3:
        raise ShapeError(f"global pooling needs x (N, C, spatial...), got {fmt_shape(x.shape)}")
    return TensorSpec(x.shape[:2] + (1,) * (x.ndim - 2), x.dtype)


def _spatial(x):
    return tuple(range(2, x.ndim))


def _global_max_vjp(g, y, x):
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    first = np.argmax(flat, axis=2)  # the first maximal element, as max_pool2d
    dx = np.zeros(flat.shape, g.dtype)
    np.put_along_axis(dx, first[..., None], g.reshape(n, c, 1), axis=2)
    return dx.reshape(x.shape)


def _global_samples(rng):
    return [Sample((rng.permutation(2 * 3 * 4 * 5).reshape(2, 3, 4, 5) * 0.1,)),
            Sample((rng.normal(size=(3, 2, 6)),))]


register(Op(
    "global_avg_pool2d", lambda x: x.mean(axis=_spatial(x), keepdims=True), _infer_global,
    (lambda g, y, x: np.broadcast_to(g / int(np.prod(x.shape[2:])), x.shape),), _global_samples,
    saves=(), batch=_pool_batch(True),
    doc="mean over the spatial axes of x (N, C, ...), kept as size 1 (ONNX GlobalAveragePool)",
))
register(Op(
    "global_max_pool2d", lambda x: x.max(axis=_spatial(x), keepdims=True), _infer_global,
    (_global_max_vjp,), _global_samples, saves=(0,), batch=_pool_batch(False),
    doc="max over the spatial axes of x (N, C, ...), kept as size 1 (ONNX GlobalMaxPool); the gradient "
        "goes to the first maximal element",
))
