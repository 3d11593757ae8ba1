"""The CPU accelerators: NumPy fast paths of the ops in ``gpunet.ops``, beside the
CUDA launchers in ``gpunet.cuda``. ``gpunet.ops`` sends NumPy arrays here unless
``GPUNET_CPU_ACCEL=0`` (or ``gpunet.ops.set_cpu_accelerators_enabled(False)``);
the textbook xp path in ``gpunet/ops/<op>.py`` is what each is tested against.

- :mod:`.conv2d`: im2col copying whole window rows at once, the backward over the
  batch in CHWN layout for small outputs, and :mod:`.winograd` for 3x3/5x5 filters
  with many channels;
- :mod:`.pool2d`: max pooling in two separable passes;
- :mod:`.batchnorm`: the statistics and the normalisation in row chunks;
- :mod:`.parallel`: the thread pool all of them split their batch over, and the
  fully connected layer's GEMMs split over it (:func:`.parallel.matmul`).
"""
from .parallel import num_threads, set_num_threads

__all__ = ["num_threads", "set_num_threads"]
