import pytest
import tensorflow as tf

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import ConfigError
from pipeline.training.hardware import plan_hardware

HAS_GPU = bool(tf.config.list_physical_devices("GPU"))


def test_auto_plan_matches_visible_devices():
    plan = plan_hardware(PipelineConfig())
    if HAS_GPU:
        assert plan.strategy_name in ("one_device", "mirrored")
        assert plan.devices[0].startswith("/gpu")
    else:
        assert plan.strategy_name == "cpu" and plan.devices == ("/cpu:0",)
        assert plan.dtype_policy == "float32"  # mixed precision 'auto' stays off on CPU.
    assert plan.describe()["replicas"] == plan.strategy.num_replicas_in_sync


def test_one_device_falls_back_to_cpu_and_xla_is_passed_through():
    plan = plan_hardware(PipelineConfig(strategy="one_device", jit_compile=True))
    assert plan.devices == (("/gpu:0",) if HAS_GPU else ("/cpu:0",))
    assert plan.jit_compile is True
    assert isinstance(plan.strategy, tf.distribute.OneDeviceStrategy)


@pytest.mark.skipif(HAS_GPU, reason="checks the error raised when no GPU is visible")
def test_gpu_only_options_fail_clearly_without_a_gpu():
    with pytest.raises(ConfigError, match="strategy 'mirrored' needs at least one GPU"):
        plan_hardware(PipelineConfig(strategy="mirrored"))
    with pytest.raises(ConfigError, match="mixed_precision 'on' needs a GPU"):
        plan_hardware(PipelineConfig(mixed_precision="on"))
