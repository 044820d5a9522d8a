"""Devices (issue 15): ``device = auto | cpu | cuda | cuda:N`` for the bi-encoder, the judge and training,
validated by name; ``auto`` resolves to the CPU on a machine without a GPU, which never touches CUDA; the
autocast precision per device; several devices encode through sentence-transformers' multi-process pool."""

from __future__ import annotations

import numpy as np
import pytest

from mining_jobs.cli import main
from mining_jobs.config import ConfigError, load_config
from retriever import devices as D

pytest.register_assert_rewrite("mining_fixtures")
from mining_fixtures import mining_env  # noqa: E402

pytest_plugins = ("mining_fixtures",)
pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine without CUDA, where any use of CUDA fails the test."""
    import torch

    def forbidden(*a, **k):
        raise AssertionError("CUDA was touched on a machine without a GPU")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("init", "_lazy_init", "device_count", "is_bf16_supported", "set_device"):
        monkeypatch.setattr(torch.cuda, name, forbidden)


def test_device_syntax_is_checked_by_name():
    assert D.parse_devices("cuda:1") == ["cuda:1"]
    assert D.parse_devices("cuda:0, cuda:1", several=True) == ["cuda:0", "cuda:1"]
    for bad in ("gpu", "cuda:x", "CUDA", "", "tpu:0"):
        with pytest.raises(D.DeviceError) as err:
            D.parse_devices(bad, "candidates.device")
        assert err.value.field == "candidates.device" and repr(bad) in str(err.value)
    with pytest.raises(D.DeviceError):
        D.parse_devices("cuda:0,cuda:1", "cross_encoder.device")  # one device only here
    with pytest.raises(D.DeviceError):
        D.parse_devices("auto,cpu", "candidates.device", several=True)


def test_configs_refuse_an_unknown_device_naming_the_option(capsys):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["candidates.device=gpu"])
    assert err.value.field == "candidates.device"
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["cross_encoder.device=cuda:0,gpu"])
    assert err.value.field == "cross_encoder.device"
    assert main(["-q", "train", "--triples", "x.parquet", "--device", "gpu"]) == 2
    assert "--device = 'gpu': expected auto" in capsys.readouterr().err
    assert main(["-q", "evaluate", "--device", "cuda:a", "--out", "x"]) == 2
    assert "--device = 'cuda:a'" in capsys.readouterr().err


def test_auto_is_the_cpu_without_a_gpu_and_cuda_is_refused(no_gpu):
    assert D.resolve_device("auto") == "cpu"
    assert D.resolve_device("cpu") == "cpu"
    assert D.resolve_devices("cpu,cpu") == ["cpu", "cpu"]
    with pytest.raises(D.DeviceError, match=r"train\.device = 'cuda:1': this machine has no CUDA device") as err:
        D.resolve_device("cuda:1", "train.device")
    assert err.value.field == "train.device"


def test_precision_per_device(monkeypatch):
    import torch

    from retriever.encoder import resolve_bf16

    assert D.autocast_dtype("cpu", True) is torch.bfloat16
    assert D.autocast_dtype("cpu", False) is None  # fp32 on a CPU without AMX / AVX-512 BF16
    assert D.autocast_dtype("cuda:0", True) is torch.bfloat16
    assert D.autocast_dtype("cuda:0", False, "auto") is torch.float16  # a GPU without bf16: fp16
    assert D.autocast_dtype("cuda:0", False, "off") is None
    assert D.precision_name("cpu", False) == "fp32" and D.precision_name("cpu", True) == "bf16"
    assert D.precision_name("cuda", False) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_bf16("auto", "cuda:0") is True
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_bf16("auto", "cuda:0") is False and resolve_bf16("on", "cuda:0") is True


def test_mining_with_auto_devices_runs_on_the_cpu_and_never_touches_cuda(no_gpu, monkeypatch, data_root, tmp_path,
                                                                        tiny_bi_encoder, tiny_cross_encoder):
    import retriever.encoder as E

    seen = []
    real = E.Encoder.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        seen.append(self.device)

    monkeypatch.setattr(E.Encoder, "__init__", spy)
    mining_env(monkeypatch, data_root, tmp_path / "cache")
    assert main(["-q", "mine", "--out", str(tmp_path / "run"), "--data", "adi", "--split", "test",
                 "--candidates.model", str(tiny_bi_encoder), "--cross-encoder", str(tiny_cross_encoder),
                 "--candidates.device", "auto", "--cross-encoder.device", "auto"]) == 0
    assert seen and set(seen) == {"cpu"}


def test_cuda_on_a_machine_without_a_gpu_stops_before_any_work(no_gpu, monkeypatch, data_root, tmp_path, capsys):
    mining_env(monkeypatch, data_root, tmp_path / "cache")
    assert main(["-q", "mine", "--out", str(tmp_path / "run"), "--data", "adi", "--split", "test",
                 "--candidates.device", "cuda"]) == 2
    assert "candidates.device = 'cuda': this machine has no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_several_devices_encode_through_the_multi_process_pool(tiny_bi_encoder):
    from retriever.encoder import Encoder

    texts = [f"document number {i} about topic {i % 7}" for i in range(40)]
    one = Encoder(str(tiny_bi_encoder), bf16="off")
    pooled = Encoder(str(tiny_bi_encoder), bf16="off")
    pooled.pool_devices = ["cpu", "cpu"]
    try:
        np.testing.assert_allclose(pooled.encode_documents(texts), one.encode_documents(texts), atol=1e-5)
        assert pooled._mp_pool is not None
    finally:
        pooled.close()


@pytest.mark.slow
def test_several_devices_score_through_the_multi_process_pool(tiny_cross_encoder):
    from retriever.rerank import CrossEncoderScorer, close_pools, use_devices

    pairs = [(f"query {i}", f"document about {i % 5} things") for i in range(30)]
    one = CrossEncoderScorer(str(tiny_cross_encoder), max_length=32, bf16="off")
    pooled = CrossEncoderScorer(str(tiny_cross_encoder), max_length=32, bf16="off")
    use_devices(pooled, ["cpu", "cpu"])
    try:
        np.testing.assert_allclose(pooled.score(pairs), one.score(pairs), atol=1e-5)
        assert pooled._mp_pool is not None
    finally:
        close_pools(pooled)
    assert pooled._mp_pool is None


def test_devices_never_enter_a_fingerprint(tmp_path, monkeypatch):
    """Where a job runs does not change what it computes: a run resumes, or is reused, on another device."""
    from mining_jobs import evaluate as ev
    from mining_jobs.iterate import load_loop_config
    from mining_jobs.train import TrainConfig

    demo = "examples/demo.toml"
    base = load_loop_config(demo).fingerprint()
    for s in ("train.device=cpu", "mine.candidates.device=cuda:1", "mine.cross_encoder.device=cpu,cpu"):
        assert load_loop_config(demo, [s]).fingerprint() == base, s
    assert load_config(overrides=["candidates.device=cuda"]).fingerprint() == load_config().fingerprint()
    t = TrainConfig(triples=str(tmp_path / "x.parquet"))
    assert TrainConfig(triples=t.triples, device="cuda:0").fingerprint() == t.fingerprint()
    keys = []

    def stop(out, layout, key, **kw):
        keys.append(key)
        raise RuntimeError("stop before any work")

    monkeypatch.setattr(ev, "prepare", stop)
    for d in ("cpu", "cuda"):
        with pytest.raises(RuntimeError):
            ev._prepare_out(ev.EvalConfig(out=str(tmp_path / "e"), device=d))
    assert len(keys) == 2 and keys[0] == keys[1]
