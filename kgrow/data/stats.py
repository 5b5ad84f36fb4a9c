"""Per-channel normalization statistics on the 0-255 pixel scale.

The pipelines normalize images as ``(pixels - mean) / std`` per channel. The
statistics describe the dataset, so they are computed from the full training
set before any ``subset`` is taken: exactly for in-memory arrays, and from the
first `STREAM_STATS_SAMPLES` training images for streamed datasets (reading
all of ImageNet for two numbers per channel would take longer than an epoch).
"""
import numpy as np
import tensorflow as tf

#: Training images used to estimate the statistics of a streamed dataset.
STREAM_STATS_SAMPLES = 2048
#: Channels whose standard deviation is below this are divided by 1 instead
#: (a constant channel carries no information; dividing by ~0 would blow up).
MIN_STD = 1e-3


def array_channel_stats(x, pixel_scale=1.0, chunk=4096):
    """Exact per-channel mean and std of ``[N, H, W, C]`` images.

    Sums run in float64 over chunks of samples, so memory stays bounded for
    large uint8 arrays.

    Args:
        x: Images, any numeric dtype.
        pixel_scale: Factor mapping stored values to the 0-255 scale.
        chunk: Samples per chunk.

    Returns:
        ``(mean, std)``: float64 arrays of length C on the 0-255 scale.

    Example:
        >>> import numpy as np
        >>> x = np.array([0, 255], np.uint8).reshape(2, 1, 1, 1)
        >>> array_channel_stats(x)
        (array([127.5]), array([127.5]))
    """
    channels = x.shape[-1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    for start in range(0, x.shape[0], chunk):
        part = x[start:start + chunk].reshape(-1, channels).astype(np.float64)
        total += part.sum(axis=0)
        total_sq += np.square(part).sum(axis=0)
    count = x.size // channels
    return _finish(total, total_sq, count, pixel_scale)


def stream_channel_stats(dataset, pixel_scale=1.0, samples=STREAM_STATS_SAMPLES):
    """Per-channel mean and std over the first ``samples`` images of a dataset.

    Args:
        dataset: Unbatched ``(image [H, W, C], label)`` elements; images may
            differ in size.
        pixel_scale: Factor mapping stored values to the 0-255 scale.
        samples: Number of leading images to use.

    Returns:
        ``(mean, std)`` as in `array_channel_stats`.
    """
    channels = dataset.element_spec[0].shape[-1]

    def accumulate(acc, element):
        image = tf.reshape(tf.cast(element[0], tf.float64), [-1, channels])
        return (acc[0] + tf.reduce_sum(image, 0), acc[1] + tf.reduce_sum(image * image, 0),
                acc[2] + tf.cast(tf.shape(image)[0], tf.float64))

    zeros = tf.zeros([channels], tf.float64)
    total, total_sq, count = dataset.take(samples).reduce(
        (zeros, zeros, tf.constant(0.0, tf.float64)), accumulate)
    return _finish(total.numpy(), total_sq.numpy(), float(count), pixel_scale)


def _finish(total, total_sq, count, pixel_scale):
    if count <= 0:
        raise ValueError("Cannot compute normalization statistics of an empty dataset.")
    mean = total / count
    var = np.maximum(total_sq / count - mean ** 2, 0.0)
    return mean * pixel_scale, np.sqrt(var) * pixel_scale


def safe_std(std):
    """``std`` with near-zero entries replaced by 1 (see `MIN_STD`)."""
    std = np.asarray(std, dtype=np.float64)
    return np.where(std < MIN_STD, 1.0, std)
