from __future__ import annotations

import numpy as np
import pytest
import torch
from fakes import tick_batch, tick_learner

from stream_trainer.learner import Learner
from stream_trainer.learner.result import SKIP_NON_FINITE_GRAD, SKIP_NON_FINITE_LOSS
from stream_trainer.models.forecast import TickModel

make = tick_learner
batch = tick_batch


def params(learner: Learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.model.state_dict().items()}


def test_outputs_and_losses_come_from_the_pre_update_weights():
    learner = make()
    inputs, y = batch()
    learner.step(inputs, y)  # past the zero start: the model's output depends on its weights
    before = learner.predict(inputs, mixed=False)
    res = learner.step(inputs, y)
    assert res.model_losses is not None  # the head has a mixture: these are the model's own
    np.testing.assert_allclose(res.model_losses, (before - y) ** 2, rtol=1e-5)
    assert res.skipped is None and learner.updates == 2
    assert not np.allclose(learner.predict(inputs, mixed=False), before)  # and then it learned


def test_learning_reduces_loss():
    learner = make()
    inputs, y = batch(256)
    first = learner.step(inputs, y).mean_loss
    for _ in range(200):
        last = learner.step(inputs, y).mean_loss
    assert last < 0.2 * first


def test_non_finite_loss_never_reaches_the_weights():
    learner = make()
    inputs, y = batch()
    y[3] = np.nan
    w = params(learner)
    res = learner.step(inputs, y)
    assert res.skipped == SKIP_NON_FINITE_LOSS and learner.updates == 0
    assert all(torch.equal(w[k], v) for k, v in learner.model.state_dict().items())


def test_non_finite_gradient_is_skipped():
    learner = make()
    inputs, y = batch()
    w = params(learner)
    # A finite loss whose gradient overflows: huge inputs times a huge error.
    inputs["window"][:] = 3e19
    y[:] = 0.0
    with torch.no_grad():
        learner.model.linear.weight.fill_(1e-19)
    w = params(learner)
    res = learner.step(inputs, y)
    assert np.isfinite(res.mean_loss) and res.skipped == SKIP_NON_FINITE_GRAD
    assert all(torch.equal(w[k], v) for k, v in learner.model.state_dict().items())
    for v in learner.model.state_dict().values():
        assert torch.isfinite(v).all()


@pytest.mark.parametrize("sparse", [False, True])
def test_gradients_are_clipped(sparse):
    """The total norm counts dense and sparse (embedding) gradients alike."""
    torch.manual_seed(0)
    learner = Learner(
        TickModel(4, 1, 8),
        "regression",
        lr=1.0,
        optimizer="sgd",
        embedding_optimizer="sgd",
        sparse_embeddings=sparse,
        grad_clip_norm=0.001,
    )
    inputs, y = batch()
    y = y * 1000
    w = params(learner)
    # SGD's momentum buffer starts as the first gradient: step one moves lr * grad.
    res = learner.step(inputs, y)
    assert res.clipped and res.grad_norm > 0.001
    delta = sum(float((v - w[k]).norm() ** 2) for k, v in learner.model.state_dict().items())
    assert 0.0009 <= delta**0.5 <= 0.0011  # lr * clip norm
    grad = learner.model.key.weight.grad
    assert grad is None or grad.is_sparse == sparse


def test_sparse_embeddings_update_only_the_rows_of_the_batch():
    torch.manual_seed(0)
    learner = Learner(TickModel(4, 1, 64), "regression", lr=0.01, sparse_embeddings=True)
    inputs, y = batch()
    inputs["symbol"] = np.full(32, 5)
    before = learner.model.key.weight.detach().clone()
    learner.step(inputs, y)
    changed = (learner.model.key.weight != before).any(1).nonzero().flatten().tolist()
    assert changed == [5]
    assert set(learner.optimizer.state_dict()) == {"dense", "sparse"}


def test_embedding_optimizer_has_its_own_learning_rate_and_boost_scales_both():
    learner = Learner(
        TickModel(4, 1, 8), "regression", lr=0.01, embedding_optimizer="adagrad", embedding_lr=0.1
    )
    learner.set_lr_multiplier(2.0)
    lrs = sorted(g["lr"] for g in learner.optimizer.param_groups)
    assert lrs == [0.02, 0.2]
    learner.reset_optimizer()
    assert sorted(g["lr"] for g in learner.optimizer.param_groups) == [0.02, 0.2]


def test_boost_and_reset_and_state_round_trip():
    learner = make(lr=0.01)
    inputs, y = batch()
    learner.step(inputs, y)
    learner.set_lr_multiplier(3.0)
    assert learner.lr == 0.03
    assert learner.optimizer.param_groups[0]["lr"] == 0.03
    state = learner.state_dict()
    other = make(lr=0.01)
    other.load_state_dict(state)
    assert other.updates == 1 and other.lr == 0.03
    a, b = learner.step(inputs, y), other.step(inputs, y)
    np.testing.assert_allclose(a.outputs, b.outputs)
    learner.reset_optimizer()
    fresh = make(lr=0.01).optimizer.state_dict()  # moments forgotten: as a new optimizer's
    for part, new in zip(learner.optimizer.state_dict().values(), fresh.values(), strict=True):
        for k, state in part["state"].items():  # Adagrad: its initial sums; Adam: none
            for name, v in state.items():
                if torch.is_tensor(v):
                    torch.testing.assert_close(v, new["state"][k][name])
    assert learner.optimizer.param_groups[0]["lr"] == 0.03


def click_learner(**kw) -> tuple[Learner, dict, np.ndarray]:
    from stream_trainer.features.clicks import ClickFeaturizer
    from stream_trainer.models.clicks import build
    from stream_trainer.producers.generators import make_generator

    f = ClickFeaturizer(id_buckets=256, context_buckets=64, pair_buckets=512)
    fb = f.featurize(list(make_generator("clicks", seed=2, count=50)))
    torch.manual_seed(0)
    return Learner(build(f.input_spec, dim=4, hidden=8), "binary", **kw), fb.inputs, fb.targets


@pytest.mark.parametrize("sparse", [False, True])
def test_fixed_shape_batches_learn_exactly_what_unpadded_ones_do(sparse):
    """Padding to a fixed size (what CUDA graphs need) changes nothing but the shape:
    padded rows are masked out of the loss, and the padding row of every embedding
    takes no gradient."""
    plain, inputs, y = click_learner(sparse_embeddings=sparse)
    fixed, _, _ = click_learner(sparse_embeddings=sparse, fixed_batch=64)
    for _ in range(3):
        a, b = plain.step(inputs, y), fixed.step(inputs, y)
        assert b.losses.shape == (50,) and b.outputs.shape == (50,)
        np.testing.assert_allclose(a.losses, b.losses, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a.outputs, b.outputs, rtol=1e-4, atol=1e-6)
    for (name, p), q in zip(plain.model.named_parameters(), fixed.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_fixed_batch_guard_still_refuses_non_finite_losses():
    learner, inputs, y = click_learner(fixed_batch=64)
    y = y.copy()
    y[7] = np.nan
    w = params(learner)
    assert learner.step(inputs, y).skipped == SKIP_NON_FINITE_LOSS
    assert all(torch.equal(w[k], v) for k, v in learner.model.state_dict().items())


def test_bf16_forward_learns():
    learner, inputs, y = click_learner(bf16=True)
    first = learner.step(inputs, y).mean_loss
    for _ in range(30):
        last = learner.step(inputs, y).mean_loss
    assert np.isfinite(last) and last < first


def test_cuda_graphs_need_a_gpu_and_fixed_dense_batches():
    with pytest.raises(ValueError, match="cuda"):
        click_learner(cuda_graphs=True, fixed_batch=64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_step_matches_the_eager_step():
    eager, inputs, y = click_learner(device="cuda", fixed_batch=64)
    graphed, _, _ = click_learner(device="cuda", fixed_batch=64, cuda_graphs=True)
    for _ in range(5):
        a, b = eager.step(inputs, y), graphed.step(inputs, y)
        np.testing.assert_allclose(a.losses, b.losses, rtol=1e-4, atol=1e-5)
    for p, q in zip(eager.model.parameters(), graphed.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    bad = y.copy()
    bad[3] = np.nan
    w = params(graphed)
    assert graphed.step(inputs, bad).skipped == SKIP_NON_FINITE_LOSS
    assert all(torch.equal(w[k], v) for k, v in graphed.model.state_dict().items())
    assert graphed.step(inputs, y).skipped is None  # and learns on after a refusal


def test_row_adagrad_is_torch_adagrad_on_sparse_rows():
    """The in-place row step gives torch's Adagrad's numbers, bit for bit, and its state."""
    from stream_trainer.learner.optim import ADAGRAD_INITIAL, RowAdagrad

    torch.manual_seed(0)
    tables = [torch.nn.Embedding(500, 8, sparse=True), torch.nn.Embedding(300, 1, sparse=True)]
    twins = [torch.nn.Embedding(500, 8, sparse=True), torch.nn.Embedding(300, 1, sparse=True)]
    for a, b in zip(tables, twins, strict=True):
        b.load_state_dict(a.state_dict())
    ours = RowAdagrad([t.weight for t in tables], lr=0.1, initial_accumulator_value=ADAGRAD_INITIAL)
    ref = torch.optim.Adagrad(
        [t.weight for t in twins], lr=0.1, initial_accumulator_value=ADAGRAD_INITIAL
    )
    for step in range(30):
        ids = torch.randint(0, 300, (64,))  # repeated ids: uncoalesced gradients
        for mods, opt in ((tables, ours), (twins, ref)):
            opt.zero_grad()
            loss = sum((m(ids) * (1 + step % 3)).pow(2).sum() for m in mods)
            loss.backward()
            if step % 2:  # both coalesced (as after clipping) and raw gradients
                for m in mods:
                    m.weight.grad = m.weight.grad.coalesce()
            opt.step()
    for a, b in zip(tables, twins, strict=True):
        assert torch.equal(a.weight, b.weight)
        assert torch.equal(ours.state[a.weight]["sum"], ref.state[b.weight]["sum"])
        assert torch.equal(ours.state[a.weight]["step"], ref.state[b.weight]["step"])
    fresh = RowAdagrad([t.weight for t in tables], lr=0.1)
    fresh.load_state_dict(ref.state_dict())  # checkpoints of either load into the other
    assert fresh.state_dict()["state"].keys() == ref.state_dict()["state"].keys()
