"""Hardware-dependent choices: distribution strategy, mixed precision, XLA.

GPU paths are real and fall back cleanly: with no GPU the default (CPU) strategy
and float32 are used whatever `auto` would pick on a GPU machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class HardwarePlan:
    """What training will run on.

    Attributes:
        strategy: The `tf.distribute.Strategy` to build and train the model under.
        strategy_name: 'mirrored', 'one_device' or 'cpu'.
        devices: Device names the strategy uses.
        dtype_policy: Keras dtype policy, 'mixed_float16' or 'float32'.
        jit_compile: Whether XLA compilation is requested.
    """

    strategy: object
    strategy_name: str
    devices: tuple[str, ...]
    dtype_policy: str
    jit_compile: bool

    def describe(self) -> dict[str, object]:
        return {
            "strategy": self.strategy_name,
            "devices": list(self.devices),
            "replicas": self.strategy.num_replicas_in_sync,
            "dtype_policy": self.dtype_policy,
            "jit_compile": self.jit_compile,
        }


def _gpu_supports_float16(gpu) -> bool:
    import tensorflow as tf

    details = tf.config.experimental.get_device_details(gpu)
    capability = details.get("compute_capability") or (0, 0)
    return tuple(capability) >= (7, 0)


def plan_hardware(config: PipelineConfig) -> HardwarePlan:
    """Chooses strategy and precision from `config` and the visible devices.

    'auto' picks MirroredStrategy on several GPUs, one GPU when there is one, else
    the CPU; mixed_float16 on GPUs of compute capability >= 7.0.

    Args:
        config: Uses `strategy`, `mixed_precision` and `jit_compile`.

    Returns:
        The plan.

    Raises:
        ConfigError: if the config asks for GPUs or mixed precision that are not there.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # Growth can only be set before the GPU is first used; later calls raise.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    name = config.strategy
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device" if gpus else "cpu"
    if name == "mirrored":
        if not gpus:
            raise ConfigError("strategy 'mirrored' needs at least one GPU; none is visible")
        devices = tuple(f"/gpu:{i}" for i in range(len(gpus)))
        strategy = tf.distribute.MirroredStrategy(devices=list(devices))
    elif name == "one_device":
        devices = ("/gpu:0",) if gpus else ("/cpu:0",)
        strategy = tf.distribute.OneDeviceStrategy(devices[0])
    else:
        devices = ("/cpu:0",)
        strategy = tf.distribute.get_strategy()

    on_gpu = devices[0].startswith("/gpu")
    if config.mixed_precision == "on" and not on_gpu:
        raise ConfigError("mixed_precision 'on' needs a GPU; use 'auto' or 'off' on CPU")
    use_mixed = config.mixed_precision == "on" or (
        config.mixed_precision == "auto" and on_gpu and all(_gpu_supports_float16(g) for g in gpus)
    )
    plan = HardwarePlan(
        strategy=strategy,
        strategy_name=name,
        devices=devices,
        dtype_policy="mixed_float16" if use_mixed else "float32",
        jit_compile=config.jit_compile,
    )
    log.info("hardware plan: %s", plan.describe())
    return plan
