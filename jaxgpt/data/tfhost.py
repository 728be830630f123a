"""TensorFlow for host-side input work only: it must leave the accelerators to JAX."""

import os


def import_tensorflow():
  """Imports TensorFlow with GPUs and TPUs hidden from it, so it never grabs their memory,
  and without its start-up lines on stderr: the oneDNN notice (oneDNN's custom kernels serve
  float math, which the integer input pipeline does not do) and absl's info lines."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for device_type in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], device_type)
    except (RuntimeError, ValueError):
      pass  # TF already initialised its devices, or knows no such device type.
  return tf
