"""Named Keras bodies: IncliNET's model4/5/6 and skyserve's compact, lean and tiny.

An architecture is a body written as a short layer string (IncliNET's own notation:
``C16`` a 3×3 'valid' ReLU convolution with 16 filters, ``S16`` the same with stride
2, ``MP2`` 2×2 max-pooling, ``AP2`` 2×2 average pooling,
``BN`` batch normalisation, ``D256`` a ReLU dense layer, ``GAP`` global average
pooling). The head of the task's kind goes on top in
:func:`services.trainer.model.heads.build_member_models`.

The compact default adds a shape branch (:class:`SkyNormalise`,
:class:`IsophoteMoments`): inclination lives in the ellipticity of the outer
isophotes, and second moments measure it at any position angle, where a plain CNN
must learn rotation invariance from many examples — more training than two shared
CPU cores give. The branch is plain tensor algebra, so it exports to ONNX with the
rest of the graph and the worker needs nothing extra.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import layers, ops

__all__ = [
    "Architecture",
    "ARCHITECTURES",
    "SkyNormalise",
    "IsophoteMoments",
    "build_body",
    "get_architecture",
    "flops_per_image",
]


@dataclass(frozen=True)
class Architecture:
    """A named body: layer tokens, native input size and dropout rate."""

    name: str
    layers: str
    input_size: int
    dropout: float = 0.25
    # Where dropout goes: after every pooling and hidden dense layer (IncliNET), or
    # only after the dense layers (cheaper to train in a short budget).
    dropout_after_pool: bool = True
    # Shape branch: undo inversion, subtract the sky, and pool the second moments of
    # isophotes at this many brightness levels (0: a plain CNN). See IsophoteMoments.
    moment_masks: int = 0
    description: str = ""


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "model4",
            "C16-C16-MP2-C32-C32-BN-MP4-D256-D32-D8",
            128,
            description="IncliNET model4 (1.63 M parameters with the regression head).",
        ),
        Architecture(
            "model5",
            "C128-C128-MP2-C256-C256-BN-MP4-C256-C256-BN-MP4-D256-D128-D64-D8",
            128,
            description="IncliNET model5 (2.52 M parameters with the regression head).",
        ),
        Architecture(
            "model6",
            "C32-C32-MP2-C64-C64-BN-MP4-D128-D64-D8",
            128,
            description="IncliNET model6 (1.68 M parameters with the regression head).",
        ),
        Architecture(
            "compact",
            "AP2-S16-BN-C32-MP2-C48-BN-MP2-D128-D32",
            64,
            dropout=0.1,
            dropout_after_pool=False,
            moment_masks=12,
            description="skyserve default at 64 px: second moments of 12 isophotes (shape "
            "at any position angle, 144 features) + a small CNN at 32 px for context "
            "(noise, stars, bulge); ~5 MFLOP.",
        ),
        Architecture(
            "lean",
            "S16-BN-C32-MP2-C48-BN-MP2-C64-BN-MP2-D128-D32",
            64,
            dropout=0.1,
            dropout_after_pool=False,
            moment_masks=12,
            description="rejection/morphology/object-type default at 64 px: isophote "
            "moments + a small strided CNN with three blocks (the object-type backbone).",
        ),
        Architecture(
            "tiny",
            "C8-MP2-C16-BN-MP2-D16",
            32,
            dropout=0.0,
            moment_masks=4,
            description="A few thousand parameters: for tests of the pipeline, not for serving.",
        ),
    )
}


def get_architecture(name: str) -> Architecture:
    """Look up an architecture by name.

    Raises
    ------
    ValueError
        If the name is unknown (the message lists the known ones).
    """
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(
            f"Unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}."
        ) from None


@keras.saving.register_keras_serializable(package="skyserve")
class SkyNormalise(layers.Layer):
    """Undo black-on-white inversion and subtract the sky, judged from border and centre.

    The sky is the mean of a ``border``-pixel frame. An image whose centre (where
    the galaxy is) is darker than its sky is taken as inverted and flipped; a steep
    sigmoid keeps the switch smooth. Output: sky-subtracted intensities, galaxy
    positive, sky around zero.
    """

    def __init__(self, border: int = 3, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.border = border

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        height, width = int(input_shape[1]), int(input_shape[2])  # type: ignore[arg-type]
        ys, xs = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
        centre = (np.hypot(xs, ys) <= 0.25).astype("float32")
        self.centre = (centre / centre.sum()).reshape(1, height, width, 1)

    def call(self, x: keras.KerasTensor) -> keras.KerasTensor:
        b = self.border
        frame = [x[:, :b], x[:, -b:], x[:, b:-b, :b], x[:, b:-b, -b:]]
        total = sum(ops.sum(f, axis=(1, 2), keepdims=True) for f in frame)
        count = sum(int(f.shape[1]) * int(f.shape[2]) for f in frame)
        sky = total / float(count)  # (B, 1, 1, C)
        lum = ops.mean(x, axis=-1, keepdims=True)
        centre = ops.sum(lum * self.centre, axis=(1, 2), keepdims=True)  # (B, 1, 1, 1)
        inverted = ops.sigmoid(40.0 * (ops.mean(sky, axis=-1, keepdims=True) - centre))
        x = x + inverted * (1.0 - 2.0 * x)
        sky = sky + inverted * (1.0 - 2.0 * sky)
        return x - sky

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "border": self.border}


@keras.saving.register_keras_serializable(package="skyserve")
class IsophoteMoments(layers.Layer):
    """Rotation-invariant shapes of isophotes, by weighted second moments.

    The luminance is smoothed (3x3 and 7x7 box: noise) and divided by its peak, so
    levels ``t_k`` (fractions of the peak, from the faint outer disk to the core) are
    isophotes whatever stretch made the image. Each level gives two weight maps: the
    light above it, ``relu(L - t_k)``, and the area inside it, a soft step
    ``sigmoid((L - t_k) / (0.1 t_k))`` that is not dominated by a bright bulge. For
    each map, about its own centroid, ``Qxx, Qyy, Qxy`` give the ellipticity
    ``|e| = sqrt((Qxx-Qyy)^2 + 4 Qxy^2) / (Qxx+Qyy)`` (``(1-q^2)/(1+q^2)`` for an
    ellipse of axis ratio q), plus ``log`` size and ``log`` flux: 12 features per
    level. Inclination lives in the ellipticity; this hands it to the head directly,
    at any position angle. The levels are fixed, so training never back-propagates
    through this full-resolution branch (a large saving on CPUs); all raw moments
    come from one matrix product with a fixed basis.
    """

    SMOOTHING = (3, 7)

    def __init__(self, masks: int = 8, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.masks = masks

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        height, width = int(input_shape[1]), int(input_shape[2])  # type: ignore[arg-type]
        self.levels = np.geomspace(0.03, 0.7, self.masks).astype("float32")[:, None]
        ys, xs = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
        ys, xs = ys.ravel(), xs.ravel()
        # (H*W, 6): 1, x, y, x^2, y^2, xy
        radius = np.hypot(xs, ys)
        # A round window, flat to 0.7 of the half-side and zero from 1.0: foreground
        # stars near the edges and corners stop pulling the moments; still any angle.
        window = np.clip((1.0 - radius) / 0.3, 0.0, 1.0)
        # (H*W, 6): 1, x, y, x^2, y^2, xy — windowed
        self.basis = np.stack([np.ones_like(xs), xs, ys, xs * xs, ys * ys, xs * ys], axis=1)
        self.basis = (self.basis * window[:, None]).astype("float32")
        # The peak that sets the isophote levels is looked for near the centre only,
        # where the galaxy is, not on a bright star elsewhere.
        self.centre = (radius <= 0.5).astype("float32").reshape(1, height, width, 1)

    def call(self, x: keras.KerasTensor) -> keras.KerasTensor:
        lum = ops.mean(x, axis=-1, keepdims=True)
        maps = []
        for k in self.SMOOTHING:
            smooth = ops.average_pool(lum, k, strides=1, padding="same")
            peak = ops.max(smooth * self.centre, axis=(1, 2, 3), keepdims=True)
            smooth = smooth / (peak + 1e-3)
            smooth = ops.reshape(smooth, (-1, 1, self.basis.shape[0]))  # (B, 1, H*W)
            maps.append(ops.relu(smooth - self.levels))  # (B, K, H*W)
            maps.append(ops.sigmoid((smooth - self.levels) / (0.1 * self.levels)))
        s = ops.matmul(ops.concatenate(maps, axis=1), ops.convert_to_tensor(self.basis))
        eps = 1e-6
        flux = s[..., 0] + eps  # (B, 4K)
        mx, my = s[..., 1] / flux, s[..., 2] / flux
        qxx = s[..., 3] / flux - mx * mx
        qyy = s[..., 4] / flux - my * my
        qxy = s[..., 5] / flux - mx * my
        size = ops.relu(qxx + qyy) + eps
        e = ops.sqrt(ops.square(qxx - qyy) + 4.0 * ops.square(qxy) + eps * eps) / size
        return ops.concatenate([e, ops.log(size), ops.log(flux)], axis=-1)

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "masks": self.masks}


def build_body(
    x: keras.KerasTensor, arch: Architecture, *, final_dropout: bool = True
) -> keras.KerasTensor:
    """The architecture's body: image tensor → flat features (what a head reads).

    ``final_dropout=False`` leaves out the dropout after the last dense layer (for
    heads that apply their own, e.g. MC dropout).
    """
    extra = None
    if arch.moment_masks:
        x = SkyNormalise(name="sky_normalise")(x)
        extra = IsophoteMoments(arch.moment_masks, name="moments")(x)
    flat = False
    tokens = arch.layers.split("-")
    for i, token in enumerate(tokens):
        kind, number = token.rstrip("0123456789"), token[len(token.rstrip("0123456789")) :]
        if kind in ("C", "S"):
            # S: the same 3x3 'valid' convolution with stride 2, a learned downsampling.
            x = layers.Conv2D(int(number), 3, strides=2 if kind == "S" else 1, padding="valid",
                              activation="relu", name=f"conv{i}")(x)
        elif kind == "AP":
            x = layers.AveragePooling2D(int(number), name=f"avgpool{i}")(x)
        elif kind == "MP":
            x = layers.MaxPooling2D(int(number), name=f"pool{i}")(x)
            if arch.dropout_after_pool and arch.dropout > 0:
                x = layers.Dropout(arch.dropout, name=f"drop{i}")(x)
        elif kind == "BN":
            x = layers.BatchNormalization(name=f"bn{i}")(x)
        elif kind == "GAP":
            x = layers.GlobalAveragePooling2D(name=f"gap{i}")(x)
            flat = True
        elif kind == "D":
            if not flat:
                x = _flatten(x, extra)
                flat = True
            x = layers.Dense(int(number), activation="relu", name=f"dense{i}")(x)
            if arch.dropout > 0 and (final_dropout or i < len(tokens) - 1):
                x = layers.Dropout(arch.dropout, name=f"drop{i}")(x)
        else:
            raise ValueError(f"Unknown layer token {token!r} in architecture {arch.name!r}.")
    if not flat:
        x = _flatten(x, extra)
    return x


def _flatten(x: keras.KerasTensor, extra: keras.KerasTensor | None) -> keras.KerasTensor:
    x = layers.Flatten(name="flatten")(x)
    if extra is not None:
        # Moments span orders of magnitude (log flux vs ellipticity): normalise first.
        extra = layers.BatchNormalization(name="bn_moments")(extra)
        x = layers.Concatenate(name="with_moments")([x, extra])
    return x


def flops_per_image(model: keras.Model) -> int:
    """Floating-point operations one image costs (a multiply-add counts 2).

    Counts what dominates: convolutions, dense layers and the isophote branch's
    moment product. Pooling, batch norm and activations are left out (a few % at most),
    so the figure compares architectures fairly rather than timing any one of them.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, height, width, filters = layer.output.shape
            k_h, k_w = layer.kernel_size
            total += 2 * int(height) * int(width) * int(filters) * k_h * k_w * int(
                layer.input.shape[-1])
        elif isinstance(layer, layers.Dense):
            total += 2 * int(layer.input.shape[-1]) * int(layer.units)
        elif isinstance(layer, IsophoteMoments):
            # Two smoothings x two weight maps x `masks` levels, each (H*W) x 6 moments.
            pixels = int(layer.input.shape[1]) * int(layer.input.shape[2])
            total += 2 * len(layer.SMOOTHING) * 2 * layer.masks * pixels * 6
    return total
