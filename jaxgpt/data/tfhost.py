"""TensorFlow for host-side input work only: it must leave the accelerators to JAX."""

import os


def import_tensorflow():
  """Imports TensorFlow with GPUs and TPUs hidden from it, so it never grabs their memory."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for device_type in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], device_type)
    except (RuntimeError, ValueError):
      pass  # TF already initialised its devices, or knows no such device type.
  return tf
