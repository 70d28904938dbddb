import pytest
import torch

from txl_audio.devices import device_name, resolve_device


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert "threads" in device_name(torch.device("cpu"))


def test_bad_name_names_the_option():
    with pytest.raises(ValueError, match="train.device must be auto, cpu or cuda"):
        resolve_device("tpu", option="train.device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="--device cuda was asked for but torch sees no CUDA GPU"):
        resolve_device("cuda")
