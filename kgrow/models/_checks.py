"""Argument validation shared by the model builders.

Every check raises a ``ValueError`` (or ``TypeError`` for a wrong type) whose
message names the argument, the value received and what is accepted, so a
typo in a recipe fails at build time with an actionable message.
"""
import numbers

import keras


def positive_int(name, value):
    """Returns ``value`` if it is an int >= 1 (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be a positive integer, got {value!r} "
                        f"({type(value).__name__}).")
    if value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value}.")
    return int(value)


def positive_float(name, value):
    """Returns ``value`` as a float if it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a positive number, got {value!r} "
                        f"({type(value).__name__}).")
    value = float(value)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"`{name}` must be a finite number > 0, got {value}.")
    return value


def rate(name, value):
    """Returns ``value`` as a float if it is a probability in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number in [0, 1), got {value!r}.")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1), got {value}.")
    return value


def non_negative_float(name, value):
    """Returns ``value`` as a float if it is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number >= 0, got {value!r}.")
    value = float(value)
    if not 0.0 <= value < float("inf"):
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value}.")
    return value


def choice(name, value, options):
    """Returns ``value`` if it is one of ``options``."""
    if value not in options:
        raise ValueError(f"`{name}` must be one of {list(options)}, got {value!r}.")
    return value


def pair(name, value):
    """Returns ``value`` as a pair of positive ints; an int ``n`` means ``(n, n)``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"`{name}` must be an int or a pair (height, width) of "
                         f"ints, got {value!r}.")
    return tuple(positive_int(f"{name}[{i}]", v) for i, v in enumerate(value))


def image_shape(input_shape, allow_unknown_spatial):
    """Validates a channels-last image shape ``(height, width, channels)``.

    Args:
        input_shape: The shape without the batch axis.
        allow_unknown_spatial: Whether height and width may be ``None``
            (convolutional networks with global pooling accept any size).

    Returns:
        The shape as a tuple.
    """
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValueError("`input_shape` must be (height, width, channels) without "
                         f"the batch axis (channels last), got {input_shape!r}.")
    height, width, channels = input_shape
    positive_int("input_shape[2] (channels)", channels)
    for axis, value in (("height", height), ("width", width)):
        if value is None:
            if not allow_unknown_spatial:
                raise ValueError(f"`input_shape` {tuple(input_shape)}: this model "
                                 f"needs a known {axis} (its position embedding "
                                 "depends on the patch grid).")
            continue
        positive_int(f"input_shape ({axis})", value)
    return tuple(None if v is None else int(v) for v in input_shape)


def classifier(num_classes, activation):
    """Validates the classification head settings.

    Returns:
        ``(num_classes, activation_name)``; ``None`` becomes ``"linear"`` (logits).
    """
    num_classes = positive_int("num_classes", num_classes)
    if activation is None:
        activation = "linear"
    if not isinstance(activation, str):
        raise TypeError("`classifier_activation` must be an activation name such as "
                        f"'softmax', 'sigmoid' or None (logits), got {activation!r}.")
    try:
        keras.activations.get(activation)
    except ValueError as err:
        raise ValueError(f"Unknown `classifier_activation` {activation!r}: "
                         "use a keras activation name such as 'softmax', "
                         "'sigmoid' or None (logits).") from err
    if activation == "softmax" and num_classes < 2:
        raise ValueError("A softmax head needs num_classes >= 2 (a single softmax "
                         "output is always 1); use classifier_activation='sigmoid' "
                         "for a single binary output.")
    return num_classes, activation


def new_initializer(spec):
    """Returns a fresh initializer object built from ``spec``.

    A new object per layer matters: an unseeded Keras initializer fixes a seed
    when it is created, so reusing one object would give every layer the same
    draw.

    Args:
        spec: A Keras initializer name, a serialized config dict, or an
            initializer instance (cloned through its config).
    """
    if isinstance(spec, keras.initializers.Initializer):
        return spec.__class__.from_config(spec.get_config())
    try:
        return keras.initializers.get(spec)
    except (ValueError, TypeError) as err:
        raise ValueError(f"Unknown initializer {spec!r}: use a keras initializer "
                         "name (e.g. 'he_normal'), a config dict or an "
                         "initializer instance.") from err
