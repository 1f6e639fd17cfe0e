"""What only CUDA can show of issue 31's findings (the CPU-runnable logic:
tests/test_gpu_logic.py). Skipped cleanly without a CUDA device; ``make device-check``
(scripts/device_check.sh) runs them on a GPU machine."""

from __future__ import annotations

import io
import threading
import warnings

import numpy as np
import pytest
import torch
from test_gpu_logic import click_batches, click_learner

from stream_trainer.learner.device import pick_device

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
TOL = {"rtol": 1e-3, "atol": 1e-4}  # kernels sum in other orders; a stale step: ~lr = 3e-3


def close_weights(a, b, **tol) -> None:
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(p.detach().cpu(), q.detach().cpu(), msg=name, **(tol or TOL))


# ---- finding 5: batches of any size with graphs on -------------------------------------------
def test_variable_batch_sizes_with_graphs_match_an_eager_twin():
    graphed = click_learner(device="cuda", fixed_batch=256, cuda_graphs=True)
    eager = click_learner(device="cuda", sparse_embeddings=False)
    b = click_batches([256, 300, 256, 200, 100, 256, 64])
    steps = [(b[0], None), (b[1], None), (b[2], None), (b[3], b[4]), (b[5], None), (b[6], None)]
    grads = []
    for (x, y), replay in steps:
        r, e = graphed.step(x, y, replay=replay), eager.step(x, y, replay=replay)
        assert r.skipped is None and e.skipped is None
        np.testing.assert_allclose(r.losses, e.losses, **TOL)
        grads.append([id(p.grad) for p in graphed.model.parameters()])
    assert graphed._graph is not None and all(g == grads[0] for g in grads)
    close_weights(graphed, eager)


# ---- finding 1: captures on several threads at once -------------------------------------------
def test_two_pipelines_capture_at_once_on_threads():
    batches = click_batches([256, 128, 300, 256, 192] * 2)
    learners = [click_learner(device="cuda", fixed_batch=256, cuda_graphs=True) for _ in range(3)]
    start, errors = threading.Barrier(len(learners)), []

    def train(learner) -> None:
        try:
            start.wait(30)
            for x, y in batches:
                assert learner.step(x, y).skipped is None
        except BaseException as err:  # reaches the test below
            errors.append(err)

    threads = [threading.Thread(target=train, args=(lr,)) for lr in learners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    twin = click_learner(device="cuda", sparse_embeddings=False)
    for x, y in batches:
        twin.step(x, y)
    torch.cuda.synchronize()
    for learner in learners:
        close_weights(learner, twin)


# ---- findings 3 and 6: checkpoints between CPU and GPU -------------------------------------------
@pytest.mark.parametrize("src,dst", [("cpu", "cuda"), ("cuda", "cpu")])
def test_a_checkpoint_moves_between_cpu_and_gpu(src, dst):
    """Each side with its default embeddings (sparse on the CPU, dense on the GPU)."""
    batches = click_batches([256] * 6)
    writer = click_learner(device=src)
    for x, y in batches[:3]:
        writer.step(x, y)
    buf = io.BytesIO()
    torch.save(writer.state_dict(), buf)
    buf.seek(0)
    moved = click_learner(device=dst)
    moved.load_state_dict(torch.load(buf, map_location="cpu", weights_only=True))
    assert set(moved.optimizer.parts) == set(writer.optimizer.parts) == {"dense", "sparse"}
    for x, y in batches[3:]:
        np.testing.assert_allclose(writer.step(x, y).losses, moved.step(x, y).losses, **TOL)
    close_weights(writer, moved)


# ---- finding 2: one GPU per replica -------------------------------------------------------------
def test_replicas_get_distinct_devices():
    count = torch.cuda.device_count()
    try:
        got = [pick_device("auto", rank) for rank in range(count)]
        assert got == [torch.device(f"cuda:{r}") for r in range(count)]
        assert torch.cuda.current_device() == count - 1  # the last one was made current
        with pytest.raises(ValueError, match="one GPU per replica"):
            pick_device("cuda", count)
    finally:
        torch.cuda.set_device(0)


# ---- finding 4: average mode, sparse embeddings, on a GPU ---------------------------------------
def test_average_mode_with_sparse_embeddings_on_a_gpu():
    import torch.distributed as dist

    from stream_trainer.distributed import Replicas, World

    learner = click_learner(device="cuda", sparse_embeddings=True)
    for x, y in click_batches([128, 128]):
        learner.step(x, y)
    tensors = learner.sync_tensors(with_optimizer=True)
    assert {t.device.type for t in tensors} == {"cpu", "cuda"}  # Adagrad's step: on the host
    before = [t.clone() for t in tensors]
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1)
    try:
        Replicas(World(), "clicks", torch.device("cuda")).average(tensors)
    finally:
        dist.destroy_process_group()
    for a, b in zip(before, tensors, strict=True):  # the mean of one replica: itself
        torch.testing.assert_close(a, b)


# ---- finding 7: serving a GPU model -------------------------------------------------------------
@pytest.mark.parametrize("local", [True, False], ids=["local-copies", "mirror-only"])
def test_serving_copies_of_a_gpu_model_are_whole(local):
    for needed in ("msgspec", "pydantic"):  # the daemon's dependencies: a bare GPU image
        pytest.importorskip(needed)  # may lack them (the logic: tests/test_gpu_logic.py)
    from stream_trainer.serving import Publisher
    from stream_trainer.serving.process import ServingProcess

    learner = click_learner(device="cuda")
    proc = ServingProcess(
        [], "127.0.0.1:0", token=None, max_body_bytes=1024, max_events=16,
        on_request=lambda *r: None,
    )  # fmt: skip
    pub = Publisher(every_s=0.0, mirror=proc.mirror("clicks"), local=local)
    for x, y in click_batches([1024] * 4):
        learner.step(x, y)  # the optimizer step is queued: the copy must wait for it
        pub.publish(learner)
        want = {k: v.detach().cpu() for k, v in learner.model.state_dict().items()}
        slot = proc.slots["clicks"].modules[proc.newest["clicks"].slot].state_dict()
        for k, v in slot.items():
            assert v.device.type == "cpu"
            torch.testing.assert_close(v, want[k], rtol=0, atol=0)
        if local:
            with pub.use() as served:
                for k, v in served.module.state_dict().items():
                    torch.testing.assert_close(v.cpu(), want[k], rtol=0, atol=0)


# ---- finding 8: at most one wait for the device per step -----------------------------------------
def test_a_graphed_step_waits_for_the_device_at_most_once():
    learner = click_learner(device="cuda", fixed_batch=256, cuda_graphs=True)
    ((x, y),) = click_batches([256])
    for _ in range(3):  # capture and warm-up
        learner.step(x, y)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(5):
                learner.step(x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 5, [str(w.message) for w in syncs[:8]]


# ---- finding 3: a by_key model file written on a GPU ---------------------------------------------
def test_a_per_key_model_file_written_on_a_gpu_loads_on_the_cpu(tmp_path):
    from stream_trainer.learner.keyed import KeyedLearner

    gpu = click_learner(device="cuda")
    (x, y), later = click_batches([256, 256])
    gpu.step(x, y)
    (tmp_path / "models").mkdir()
    torch.save(gpu.state_dict(), tmp_path / "models" / "model-k.pt")  # tensors on the GPU
    keyed = KeyedLearner(lambda: click_learner(device="cpu"), tmp_path / "models", 4, lr=3e-3)
    keyed.files["k"] = "model-k.pt"
    cpu = keyed.model("k")
    assert all(p.device.type == "cpu" for p in cpu.model.parameters())
    np.testing.assert_allclose(cpu.step(*later).losses, gpu.step(*later).losses, **TOL)
