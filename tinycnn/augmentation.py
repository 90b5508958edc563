"""Data augmentation as layers, in NumPy: random changes to the training images that leave
their labels alone, made in training only, as Keras's preprocessing layers do. At inference
(training=False) every one of them passes its input through unchanged.

    RandomFlip(mode)                          left-right and/or upside down (Keras's RandomFlip)
    RandomTranslation(height_factor, ...)     shifted by whole pixels (Keras's RandomTranslation)
    RandomErasing(probability, area, ...)     one rectangle blanked (Zhong et al., 2017)

Images are NHWC: x (N, H, W, C) -> y (N, H, W, C). Each layer draws its random numbers for a
whole batch, then applies them (tinycnn.layers._RandomLayer, which Dropout shares):

    drawn = layer.draw(n)         a tuple of arrays, each with leading axis n
    y = layer.apply(x, drawn)     on any rows of the batch, with the draws sliced to those rows

so the fast engine can cut a batch into two halves and still meet the same random numbers.
The layers are exported by tinycnn.layers too (tinycnn.layers.RandomFlip is this RandomFlip).
"""
import numpy as np

from tinycnn.layers import _number_in, _RandomLayer


def _check_image_shape(layer, input_shape):
    """A per-sample image shape (H, W, C), or a ValueError that says how to get one."""
    if len(input_shape) != 3:
        raise ValueError(f"{layer.name}: expected images, a per-sample input of rank 3 (height, width, "
                         f"channels), got shape {tuple(input_shape)} (rank {len(input_shape)}); "
                         f"put {type(layer).__name__} before Flatten, and give grey images a channel "
                         f"axis: x.reshape(N, H, W, 1)")
    return tuple(input_shape)


def _factor_range(factor, what, owner):
    """Keras's factor: a number f in [0, 1] -> (-f, f); a pair (lo, hi), -1 <= lo <= hi <= 1."""
    if isinstance(factor, (tuple, list)) and len(factor) == 2:
        low, high = (_number_in(f, -1, 1, what, "[-1, 1]", owner) for f in factor)
        if low > high:
            raise ValueError(f"{owner}: {what} (lower, upper) needs lower <= upper, got {tuple(factor)!r}")
        return low, high
    if isinstance(factor, (tuple, list)):
        raise ValueError(f"{owner}: {what} must be a number or a pair (lower, upper), got {factor!r}")
    f = _number_in(factor, 0, 1, what, "[0, 1] (a fraction of the image), or a pair (lower, upper)", owner)
    return -f, f


def _positive_range(value, what, owner, high=np.inf, interval="(0, inf)"):
    """A pair (lo, hi) with 0 < lo <= hi <= high, as floats."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{owner}: {what} must be a pair (lower, upper), got {value!r}")
    low, high_value = (_number_in(v, 0, high, what, interval, owner) for v in value)
    if not 0 < low <= high_value:
        raise ValueError(f"{owner}: {what} must be a pair with 0 < lower <= upper, got {tuple(value)!r}")
    return low, high_value


# ---------------------------------------------------------------------------
# RandomFlip
# ---------------------------------------------------------------------------
class RandomFlip(_RandomLayer):
    """Flips each image left-right and/or upside down, each with probability 0.5, in training
    only (Keras's RandomFlip). mode: "horizontal", "vertical" or "horizontal_and_vertical"
    (Keras's default: both, drawn independently).

    x (N, H, W, C) -> y (N, H, W, C):
        flip_h[n] = uniform[0, 1) < 0.5     y[n, i, j] = x[n, i, W-1-j]   (x[n, :, ::-1])
        flip_v[n] = uniform[0, 1) < 0.5     y[n, i, j] = x[n, H-1-i, j]   (x[n, ::-1])
    Backward: a flip moves values without changing them and undoes itself, so dL/dx is dL/dy
    flipped the same way.
    draw(n) -> (flip_h (n,) bool, flip_v (n,) bool); a flip the mode leaves out is all False
    and draws nothing.
    """
    MODES = ("horizontal", "vertical", "horizontal_and_vertical")

    def __init__(self, mode="horizontal_and_vertical", seed=None, input_shape=None, name=None, dtype=None):
        super().__init__(seed, input_shape, name, dtype)
        if mode not in self.MODES:
            raise ValueError(f"{self.name}: mode must be one of {', '.join(map(repr, self.MODES))}, got {mode!r}")
        self.mode = mode

    def compute_output_shape(self, input_shape):
        return _check_image_shape(self, input_shape)

    def draw(self, n):
        """(flip_h (n,) bool, flip_v (n,) bool): which images to flip, horizontal drawn first."""
        no_flip = np.zeros(n, dtype=bool)
        flip_h = self.rng.random(n) < 0.5 if self.mode != "vertical" else no_flip
        flip_v = self.rng.random(n) < 0.5 if self.mode != "horizontal" else no_flip
        return flip_h, flip_v

    def apply(self, x, drawn):
        """x (rows, H, W, C) -> y (rows, H, W, C), each row flipped as drawn."""
        x, (flip_h, flip_v) = self._start_apply(x, drawn)
        return self._flip(x, flip_h, flip_v)

    def _backward_drawn(self, grad_out, drawn):
        return self._flip(grad_out, *drawn)       # flip_h and flip_v commute: flipping again undoes both

    @staticmethod
    def _flip(a, flip_h, flip_v):
        """a (rows, H, W, C) with the rows flip_h marks reversed along W, flip_v's along H (a new array)."""
        a = np.where(flip_h[:, None, None, None], a[:, :, ::-1], a)
        return np.where(flip_v[:, None, None, None], a[:, ::-1], a)

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode)
        return config


# ---------------------------------------------------------------------------
# RandomTranslation
# ---------------------------------------------------------------------------
def _source_index(i, size, fill_mode):
    """Output positions i (ints, any shape) along an axis of `size` pixels -> (the pixel each
    reads, in [0, size); whether i lies inside the image). Outside, as Keras names the modes:
    "reflect" (d c b a | a b c d | d c b a), "wrap" (a b c d | a b c d | a b c d),
    "nearest" (a a a a | a b c d | d d d d); "constant" fills those pixels instead."""
    inside = (i >= 0) & (i < size)
    if fill_mode == "reflect":
        i = i % (2 * size)                                   # period 2*size: the image, then its mirror
        i = np.where(i < size, i, 2 * size - 1 - i)
    elif fill_mode == "wrap":
        i = i % size
    else:
        i = np.clip(i, 0, size - 1)
    return i, inside


class RandomTranslation(_RandomLayer):
    """Shifts each image up/down and left/right by a random whole number of pixels, in training
    only (Keras's RandomTranslation).

    height_factor: a number f in [0, 1] -> the shift is drawn uniformly in [-f, f] of the
    height; a pair (lower, upper) in [-1, 1] -> in [lower, upper]. Negative moves the image up,
    positive down. width_factor likewise (negative: left).

    x (N, H, W, C) -> y (N, H, W, C):
        dy[n] = round(uniform(lower, upper) * H),  dx[n] likewise with W      whole pixels
        y[n, i, j] = x[n, i - dy[n], j - dx[n]]   where that pixel lies in the image;
                     else the pixel fill_mode picks: "reflect" (the default, as in Keras),
                     "nearest" or "wrap" (see _source_index), or fill_value for "constant"
    The shift is rounded to whole pixels, which is what one expects of a shift; Keras shifts by
    the fraction itself and interpolates (bilinear by default; with whole shifts its "nearest"
    interpolation gives this result).
    Backward: each output pixel's gradient goes back to the input pixel it was copied from,
    added up where one pixel fed several; a filled pixel came from none and passes nothing.
    draw(n) -> (dy (n,) int64, dx (n,) int64), the shifts in pixels.
    """
    FILL_MODES = ("constant", "nearest", "reflect", "wrap")

    def __init__(self, height_factor, width_factor, fill_mode="reflect", fill_value=0.0, seed=None,
                 input_shape=None, name=None, dtype=None):
        super().__init__(seed, input_shape, name, dtype)
        self.height_factor = _factor_range(height_factor, "height_factor", self.name)
        self.width_factor = _factor_range(width_factor, "width_factor", self.name)
        if fill_mode not in self.FILL_MODES:
            raise ValueError(f"{self.name}: fill_mode must be one of {', '.join(map(repr, self.FILL_MODES))}, "
                             f"got {fill_mode!r}")
        self.fill_mode = fill_mode
        self.fill_value = _number_in(fill_value, -np.inf, np.inf, "fill_value", "(-inf, inf)", self.name)

    def compute_output_shape(self, input_shape):
        return _check_image_shape(self, input_shape)

    def draw(self, n):
        """(dy (n,) int64, dx (n,) int64): each image's shift down and right, in pixels; dy drawn first."""
        h, w, _ = self.input_shape
        dy = np.rint(self.rng.uniform(*self.height_factor, size=n) * h).astype(np.int64)
        dx = np.rint(self.rng.uniform(*self.width_factor, size=n) * w).astype(np.int64)
        return dy, dx

    def _sources(self, drawn):
        """For the draws (dy, dx) (rows,): index, a tuple of three (rows, H, W) arrays with
        x[index][n, i, j] = x[n, source row, source column], and inside (rows, H, W), True where
        that source is the shifted pixel itself (False: a pixel fill_mode fills)."""
        dy, dx = drawn
        (h, w, _), rows = self.input_shape, len(dy)
        source_row, row_inside = _source_index(np.arange(h) - dy[:, None], h, self.fill_mode)   # (rows, H)
        source_col, col_inside = _source_index(np.arange(w) - dx[:, None], w, self.fill_mode)   # (rows, W)
        index = (np.arange(rows)[:, None, None], source_row[:, :, None], source_col[:, None, :])
        return index, row_inside[:, :, None] & col_inside[:, None, :]

    def apply(self, x, drawn):
        """x (rows, H, W, C) -> y (rows, H, W, C), each row shifted by its (dy, dx)."""
        x, drawn = self._start_apply(x, drawn)
        index, inside = self._sources(drawn)
        y = x[index]                                             # y[n, i, j] = x[n, i - dy, j - dx] (inside)
        if self.fill_mode == "constant":
            y[~inside] = self.fill_value
        return y

    def _backward_drawn(self, grad_out, drawn):
        index, inside = self._sources(drawn)
        if self.fill_mode == "constant":
            grad_out = np.where(inside[..., None], grad_out, 0)  # filled pixels: no input behind them
        grad_x = np.zeros_like(grad_out)
        np.add.at(grad_x, index, grad_out)                       # dL/dx[source] += dL/dy (a pixel may feed several)
        return grad_x

    def get_config(self):
        config = super().get_config()
        config.update(height_factor=list(self.height_factor), width_factor=list(self.width_factor),
                      fill_mode=self.fill_mode, fill_value=self.fill_value)
        return config


# ---------------------------------------------------------------------------
# RandomErasing
# ---------------------------------------------------------------------------
class RandomErasing(_RandomLayer):
    """Random Erasing, after Zhong, Zheng, Kang, Li and Yang, "Random Erasing Data Augmentation"
    (2017): in training, with probability `probability`, one rectangle of each image is erased.
    Not a Keras layer; the arguments are the paper's p, (s_l, s_h) and (r_1, r_2).

    x (N, H, W, C) -> y (N, H, W, C). For each image, with S = H * W:
        erase = uniform[0, 1) < probability
        S_e = uniform(area) * S,  r_e = uniform(aspect_ratio)       the rectangle's area and height/width
        height = round(sqrt(S_e * r_e)),  width = round(sqrt(S_e / r_e))
            drawn again, up to `attempts` times, until 1 <= height <= H and 1 <= width <= W;
            if none fits, the image is not erased
        top = a uniform integer in [0, H - height],  left in [0, W - width]
        y[n, top:top + height, left:left + width, :] = value, a number, or with value="random"
            uniform[0, 1) values (the paper's random pixels, for images scaled to [0, 1])
    (The paper's algorithm draws the corner first and retries when the rectangle sticks out;
    the authors' code, like this, retries the size and then places it where it fits.)
    Backward: an erased pixel does not depend on x: dL/dx = 0 there, dL/dy elsewhere.
    draw(n) -> (top, left, height, width), each (n,) int64, height = width = 0 for an image left
    alone; with value="random" also fill (n, H, W, C) of the layer's dtype.
    """
    attempts = 100                 # as in the authors' code

    def __init__(self, probability=0.5, area=(0.02, 0.4), aspect_ratio=(0.3, 1 / 0.3), value=0.0, seed=None,
                 input_shape=None, name=None, dtype=None):
        super().__init__(seed, input_shape, name, dtype)
        self.probability = _number_in(probability, 0, 1, "probability", "[0, 1]", self.name)
        self.area = _positive_range(area, "area", self.name, 1, "(0, 1] (a fraction of the image)")
        self.aspect_ratio = _positive_range(aspect_ratio, "aspect_ratio", self.name)
        if value != "random":
            value = _number_in(value, -np.inf, np.inf, "value", "(-inf, inf) or be 'random'", self.name)
        self.value = value

    def compute_output_shape(self, input_shape):
        return _check_image_shape(self, input_shape)

    def draw(self, n):
        """(top, left, height, width) (n,) int64 [+ (fill (n, H, W, C),) with value="random"]."""
        h, w, c = self.input_shape
        rng, rows = self.rng, np.arange(n)
        erase = rng.random(n) < self.probability                                  # (n,)
        area = rng.uniform(*self.area, size=(n, self.attempts)) * (h * w)         # (n, attempts): S_e
        ratio = rng.uniform(*self.aspect_ratio, size=(n, self.attempts))          # (n, attempts): r_e
        heights = np.rint(np.sqrt(area * ratio)).astype(np.int64)
        widths = np.rint(np.sqrt(area / ratio)).astype(np.int64)
        fits = (heights >= 1) & (heights <= h) & (widths >= 1) & (widths <= w)
        first = fits.argmax(axis=1)                                               # the first attempt that fits
        erase &= fits.any(axis=1)
        height = np.where(erase, heights[rows, first], 0)
        width = np.where(erase, widths[rows, first], 0)
        top = (rng.random(n) * (h - height + 1)).astype(np.int64)                 # uniform in [0, H - height]
        left = (rng.random(n) * (w - width + 1)).astype(np.int64)
        drawn = (top, left, height, width)
        if self.value == "random":
            drawn += (rng.random((n, h, w, c)).astype(self.dtype),)
        return drawn

    def _erased(self, drawn):
        """(rows, H, W) bool: True inside each row's rectangle."""
        top, left, height, width = (a[:, None] for a in drawn[:4])
        h, w, _ = self.input_shape
        in_rows = (np.arange(h) >= top) & (np.arange(h) < top + height)          # (rows, H)
        in_cols = (np.arange(w) >= left) & (np.arange(w) < left + width)         # (rows, W)
        return in_rows[:, :, None] & in_cols[:, None, :]

    def apply(self, x, drawn):
        """x (rows, H, W, C) -> y (rows, H, W, C), each row's rectangle set to the value."""
        x, drawn = self._start_apply(x, drawn)
        fill = drawn[4] if self.value == "random" else self.value
        return np.where(self._erased(drawn)[..., None], fill, x).astype(x.dtype, copy=False)

    def _backward_drawn(self, grad_out, drawn):
        return np.where(self._erased(drawn)[..., None], 0, grad_out)

    def get_config(self):
        config = super().get_config()
        config.update(probability=self.probability, area=list(self.area), aspect_ratio=list(self.aspect_ratio),
                      value=self.value)
        return config
