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
        strategy_name: 'mirrored', 'one_device', 'cpu' or 'multi_worker'.
        devices: Device names the strategy uses on this machine.
        dtype_policy: Keras dtype policy, 'mixed_float16' or 'float32'.
        jit_compile: Whether XLA compilation is requested.
        task: This process's task in a multi-worker cluster, e.g. 'worker/1' ('chief/0' alone).
        workers: Number of training processes taking part (1 unless multi_worker).
        is_chief: Whether this process writes the model, checkpoints and logs.
        input_pipeline: This process's index among the workers (the chief is 0), for reading its part.
    """

    strategy: object
    strategy_name: str
    devices: tuple[str, ...]
    dtype_policy: str
    jit_compile: bool
    task: str = "chief/0"
    workers: int = 1
    is_chief: bool = True
    input_pipeline: int = 0

    def describe(self) -> dict[str, object]:
        return {
            "strategy": self.strategy_name,
            "devices": list(self.devices),
            "replicas": self.strategy.num_replicas_in_sync,
            "dtype_policy": self.dtype_policy,
            "jit_compile": self.jit_compile,
            "task": self.task,
            "workers": self.workers,
            "is_chief": self.is_chief,
        }


@dataclasses.dataclass(frozen=True)
class ClusterTask:
    """Where this process sits in a multi-worker cluster (from TF_CONFIG)."""

    task_type: str
    task_index: int
    workers: int
    is_chief: bool
    input_pipeline: int = 0


def multi_worker_task(resolver) -> ClusterTask:
    """Reads this process's task from a cluster resolver.

    The chief is the 'chief' task, or worker 0 when the cluster names no chief (TensorFlow's rule).

    Raises:
        ConfigError: if the cluster is empty (TF_CONFIG unset) or the task is not a training task.
    """
    cluster = resolver.cluster_spec().as_dict()
    if not cluster:
        raise ConfigError(
            "strategy 'multi_worker' needs TF_CONFIG in the environment: the cluster's workers (host:port) "
            'and this process\'s task, e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}'
        )
    task_type, task_index = resolver.task_type, int(resolver.task_id or 0)
    if task_type not in ("chief", "worker"):
        raise ConfigError(f"strategy 'multi_worker' trains in 'chief' and 'worker' tasks; TF_CONFIG says {task_type!r}")
    workers = sum(len(cluster.get(kind, ())) for kind in ("chief", "worker"))
    is_chief = task_type == "chief" or ("chief" not in cluster and task_index == 0)
    has_chief = "chief" in cluster
    input_pipeline = 0 if task_type == "chief" else task_index + (1 if has_chief else 0)
    return ClusterTask(task_type, task_index, workers, is_chief, input_pipeline)


def _multi_worker_strategy(tf):
    from pipeline.training import keras_multi_worker

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    task = multi_worker_task(resolver)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except RuntimeError as err:  # TensorFlow ran an op before: collectives are configured at start-up.
        raise ConfigError(f"strategy 'multi_worker' must be set up before TensorFlow runs anything: {err}") from err
    keras_multi_worker.enable()
    return strategy, task


def _gpu_supports_float16(gpu) -> bool:
    import tensorflow as tf

    details = tf.config.experimental.get_device_details(gpu)
    capability = details.get("compute_capability") or (0, 0)
    return tuple(capability) >= (7, 0)


def plan_hardware(config: PipelineConfig) -> HardwarePlan:
    """Chooses strategy and precision from `config` and the visible devices.

    'auto' picks MirroredStrategy on several GPUs, one GPU when there is one, else
    the CPU; mixed_float16 on GPUs of compute capability >= 7.0. 'multi_worker' uses
    MultiWorkerMirroredStrategy over the cluster TF_CONFIG describes (TensorFlow reads
    it), with this machine's GPUs or its CPU; call it before TensorFlow runs any op.

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
    task = ClusterTask("chief", 0, 1, True)
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device" if gpus else "cpu"
    if name == "mirrored":
        if not gpus:
            raise ConfigError("strategy 'mirrored' needs at least one GPU; none is visible")
        devices = tuple(f"/gpu:{i}" for i in range(len(gpus)))
        strategy = tf.distribute.MirroredStrategy(devices=list(devices))
    elif name == "multi_worker":
        strategy, task = _multi_worker_strategy(tf)
        devices = tuple(f"/gpu:{i}" for i in range(len(gpus))) or ("/cpu:0",)
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
        task=f"{task.task_type}/{task.task_index}",
        workers=task.workers,
        is_chief=task.is_chief,
        input_pipeline=task.input_pipeline,
    )
    log.info("hardware plan: %s", plan.describe())
    return plan
