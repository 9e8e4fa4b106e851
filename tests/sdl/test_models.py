"""SAEs, transcoders, anchoring and training on small problems."""

from __future__ import annotations

import math

import pytest
import torch

from neuronsplit.errors import ArgumentTypeError, EmptyClassError, InvalidArgumentError
from neuronsplit.sdl import (
    Anchors,
    SparseAutoencoder,
    Transcoder,
    anchor_loss,
    class_mean_anchors,
    dictionary_recovery,
    gt_anchors,
    make_bench,
    train_sae,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_activations_keep_zero_or_the_pre_activation(dtype: torch.dtype) -> None:
    z = torch.tensor([[3.0, -1.0, 2.0, 0.5], [0.1, 0.2, -5.0, 4.0]], dtype=dtype)
    for activation in ("relu", "topk", "batchtopk", "jumprelu"):
        sae = SparseAutoencoder(2, 4, activation=activation, k=2, seed=0).to(dtype)
        out = sae.activate(z)
        assert bool(((out == 0) | (out == z)).all()), activation  # sigma(z)_i in {0, z_i}
    topk = SparseAutoencoder(2, 4, k=2, seed=0).to(dtype).activate(z)
    expected = torch.tensor([[3.0, 0.0, 2.0, 0.0], [0.0, 0.2, 0.0, 4.0]], dtype=dtype)
    assert torch.equal(topk, expected)
    batch = SparseAutoencoder(2, 4, activation="batchtopk", k=2, seed=0).to(dtype).train()
    # the 4 largest of the whole batch: 4.0, 3.0, 2.0, 0.5 (row 0 keeps three, row 1 one)
    expected = torch.tensor([[3.0, 0.0, 2.0, 0.5], [0.0, 0.0, 0.0, 4.0]], dtype=dtype)
    assert torch.equal(batch.activate(z), expected)
    assert float(batch.batch_threshold) == 0.5  # smallest kept value: the inference threshold
    expected = torch.tensor([[3.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 4.0]], dtype=dtype)
    assert torch.equal(batch.eval().activate(z), expected)


def test_k_larger_than_the_dictionary_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match=r"k=9 is larger than the dictionary "
                                                   r"\(n_latents=8\)"):  # fmt: skip
        SparseAutoencoder(4, 8, k=9)
    with pytest.raises(InvalidArgumentError, match="activation must be one of"):
        SparseAutoencoder(4, 8, activation="gelu")


def test_anchor_counts_are_bounded() -> None:
    bench = make_bench(40, 32, 0.9, 0.4, seed=0)
    with pytest.raises(InvalidArgumentError, match="k=41 anchors but the bench has only n=40"):
        gt_anchors(bench, 41)
    anchors = gt_anchors(bench, 12)
    with pytest.raises(InvalidArgumentError, match="12 anchors but the dictionary has only 8"):
        anchor_loss(SparseAutoencoder(32, 8, k=2), anchors)
    with pytest.raises(InvalidArgumentError, match="12 anchors but the dictionary has only 8"):
        train_sae(SparseAutoencoder(32, 8, k=2), bench, steps=1, anchors=anchors, progress=False)


def test_anchor_loss_is_the_squared_frobenius_distance() -> None:
    sae = SparseAutoencoder(2, 3, k=1, seed=0)
    with torch.no_grad():
        sae.w_enc.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]))
        sae.w_dec.copy_(torch.tensor([[1.0, 0.0, 9.0], [0.0, 1.0, 9.0]]))
    anchors = Anchors(torch.tensor([[0.0, 0.0], [0.0, 0.0]]), torch.eye(2), weight=0.5)
    # encoder: 1 + 4; decoder: exact -> 0.5 * 5
    assert float(anchor_loss(sae, anchors).detach()) == pytest.approx(2.5)


def test_class_mean_anchors_and_empty_class() -> None:
    acts = torch.tensor([[3.0, 4.0], [3.0, 4.0], [0.0, -2.0]])
    a = class_mean_anchors(acts, torch.tensor([1, 1, 0]))
    torch.testing.assert_close(a.encoder, torch.tensor([[0.0, -1.0], [0.6, 0.8]]))
    assert torch.equal(a.decoder, a.encoder.T)
    with pytest.raises(EmptyClassError, match="class 1 has no sample"):
        class_mean_anchors(acts, torch.tensor([0, 0, 2]))


def test_anchoring_pulls_the_first_latents_to_the_anchors() -> None:
    torch.manual_seed(0)
    bench = make_bench(32, 24, 0.9, 0.4, seed=0)
    anchors = gt_anchors(bench, 4, weight=10.0, seed=1)
    free = SparseAutoencoder(24, 64, k=4, seed=0)
    held = SparseAutoencoder(24, 64, k=4, seed=0)
    train_sae(free, bench, steps=150, batch_size=64, lr=1e-2, progress=False)
    train_sae(held, bench, steps=150, batch_size=64, lr=1e-2, anchors=anchors, progress=False)

    def gap(m: SparseAutoencoder) -> float:
        return float((m.w_enc[:4].detach() - anchors.encoder).norm())

    assert gap(held) < 0.25 * gap(free)


def test_topk_recovers_easy_features_and_relu_does_not() -> None:
    """An easy bench (n = n_p: orthonormal-ish features, one active per sample on average):
    the TopK SAE's decoder finds nearly every feature; ordering TopK > ReLU on the encoder."""
    bench = make_bench(24, 24, 0.96, 0.1, seed=0)
    scores = {}
    for activation in ("topk", "relu"):
        sae = SparseAutoencoder(24, 96, activation=activation, k=2, seed=0)
        train_sae(sae, bench, steps=400, batch_size=128, lr=3e-3, l1=0.05, progress=False)
        scores[activation] = (
            dictionary_recovery(sae.encoder_directions(), bench.w_p, tau=0.9),
            dictionary_recovery(sae.decoder_directions(), bench.w_p, tau=0.9),
        )
    assert scores["topk"][1].gt_recovery >= 0.75
    assert scores["topk"][0].max_inner_product > scores["relu"][0].max_inner_product


def test_transcoder_trains_on_pairs_and_checks_shapes() -> None:
    x = torch.randn(128, 6, generator=torch.Generator().manual_seed(0))
    y = x[:, :3] * 2
    tc = Transcoder(6, 12, n_out=3, k=3, seed=0)
    result = train_sae(tc, (x, y), steps=200, batch_size=64, lr=1e-2, progress=False)
    assert result.reconstruction < 0.2 * float(y.square().sum(1).mean())
    with pytest.raises(InvalidArgumentError, match="maps 6 -> 3 dimensions but the data is 6 -> 6"):
        train_sae(tc, (x, x), steps=1, progress=False)
    with pytest.raises(ArgumentTypeError, match="data must be a LinearRepresentationBench"):
        train_sae(tc, [x], steps=1, progress=False)


def test_matryoshka_prefix_reconstructs_alone() -> None:
    x = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
    nested = SparseAutoencoder(4, 16, k=4, seed=0)
    flat = SparseAutoencoder(4, 16, k=4, seed=0)
    train_sae(nested, x, steps=300, batch_size=64, lr=1e-2, prefixes=[4], progress=False)
    train_sae(flat, x, steps=300, batch_size=64, lr=1e-2, progress=False)

    def prefix_error(m: SparseAutoencoder) -> float:
        with torch.no_grad():
            z = m.encode(x)
            return float((x - m.decode(z * (torch.arange(16) < 4))).square().mean())

    assert prefix_error(nested) < prefix_error(flat)


def test_training_is_reproducible_by_seed() -> None:
    bench = make_bench(16, 12, 0.9, 0.5, seed=0)
    a, b = (SparseAutoencoder(12, 32, k=2, seed=3) for _ in range(2))
    train_sae(a, bench, steps=20, batch_size=32, progress=False)
    train_sae(b, bench, steps=20, batch_size=32, progress=False)
    assert torch.equal(a.w_enc, b.w_enc) and torch.equal(a.w_dec, b.w_dec)


def test_a_transcoder_on_the_bench_learns_the_target_map() -> None:
    """Same input and output width: the trainer must still feed x_r = W_r x as the target."""
    bench = make_bench(24, 24, 0.96, 0.1, seed=0)
    tc = Transcoder(24, 96, n_out=24, k=2, seed=0)
    train_sae(tc, bench, steps=400, batch_size=128, lr=3e-3, progress=False)
    to_r = dictionary_recovery(tc.decoder_directions(), bench.w_r, tau=0.9)
    to_p = dictionary_recovery(tc.decoder_directions(), bench.w_p, tau=0.9)
    assert to_r.max_inner_product > to_p.max_inner_product + 0.2


def test_batchtopk_trains_exactly_like_topk_when_each_sample_keeps_k() -> None:
    # one positive pre-activation per sample: the k * B largest of the batch are then each
    # sample's own top k, so BatchTopK and TopK must select, scale and back-propagate alike
    x = torch.tensor([[3.0, -1.0, -1.0, -1.0], [-1.0, 2.0, -1.0, -1.0], [-1.0, -1.0, 4.0, -1.0],
                      [-1.0, -1.0, -1.0, 1.5]])  # fmt: skip
    models = {}
    for activation in ("topk", "batchtopk"):
        sae = SparseAutoencoder(4, 4, activation=activation, k=1, seed=3)
        with torch.no_grad():
            sae.w_enc.copy_(torch.eye(4))
        train_sae(sae, x, steps=5, batch_size=4, lr=1e-3, seed=0, progress=False)
        models[activation] = sae
    a, b = models["topk"], models["batchtopk"]
    for name in ("w_enc", "w_dec", "b_enc", "b_dec"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=0, atol=1e-7)
    # the selected latents' encoder rows did learn (the gradient reaches the encoder)
    assert float((a.encoder_directions() - torch.eye(4)).abs().max()) > 1e-4


@pytest.mark.parametrize(("activation", "prefixes"), [("topk", None), ("batchtopk", [6, 24])])
def test_the_sparse_topk_step_matches_the_dense_one(
    activation: str, prefixes: list[int] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # on a CPU the TopK family computes only the kept latents (and the auxiliary loss's dead
    # ones); loss and gradients are the dense path's, so the trained parameters must agree
    import neuronsplit.sdl.train as train

    bench = make_bench(40, 24, 0.9, 0.4, seed=0)
    anchors = gt_anchors(bench, 4)
    models = {}
    for sparse in (False, True):
        monkeypatch.setattr(train, "_sparse_ok", sparse)
        sae = SparseAutoencoder(24, 96, activation=activation, k=2, seed=0)
        with torch.no_grad():
            # off the tied start: there a latent firing alone already codes the projection,
            # its gradient is rounding noise, and Adam turns noise into lr-sized steps
            sae.w_enc.mul_(1.5)
        result = train_sae(sae, bench, steps=15, batch_size=128, lr=3e-3, dead_after=5,
                           prefixes=prefixes, anchors=anchors, progress=False)  # fmt: skip
        models[sparse] = (sae, result)
    (dense, r_dense), (sparse_sae, r_sparse) = models[False], models[True]
    if activation == "topk":
        assert r_dense.dead_fraction > 0  # the auxiliary loss was exercised
    for name in ("w_enc", "w_dec", "b_enc", "b_dec", "batch_threshold"):
        torch.testing.assert_close(getattr(sparse_sae, name), getattr(dense, name),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
    assert r_sparse.losses == pytest.approx(r_dense.losses, rel=1e-4)


def test_co_firing_latents_move_the_encoder_toward_the_dual_rows() -> None:
    # Why BatchTopK (k = 1) scores 0 % on the LRB encoder rows while TopK (k = 1) scores 100 %:
    # when several latents may fire on one sample (BatchTopK's variable count, or TopK with
    # k >= 2), reconstruction is best with encoder rows that *unmix* the features -- the rows of
    # pinv(W_p), far from W_p's columns because PGD lets GT features overlap negatively -- and
    # the decoder alone keeps the GT directions. TopK with k = 1 never co-fires.
    bench = make_bench(16, 16, 0.9, 0.05, seed=0)
    truth = bench.w_p.float()
    dual = torch.linalg.pinv(bench.w_p).float()
    cos = {}
    for activation in ("topk", "batchtopk"):
        sae = SparseAutoencoder(16, 32, activation=activation, k=1, seed=0)
        train_sae(sae, bench, steps=800, batch_size=256, lr=1e-2, progress=False)
        best = (sae.decoder_directions() @ truth).abs().argmax(0)
        rows = sae.encoder_directions()[best]
        decoder = dictionary_recovery(sae.decoder_directions(), bench.w_p, tau=0.9)
        assert decoder.gt_recovery > 0.9, activation  # both decoders find the features
        cos[activation] = (torch.nn.functional.cosine_similarity(rows, truth.T).abs().mean(),
                           torch.nn.functional.cosine_similarity(rows, dual).abs().mean())  # fmt: skip
    assert float(torch.nn.functional.cosine_similarity(dual, truth.T).abs().mean()) < 0.5
    assert cos["topk"][0] > 0.95 and cos["batchtopk"][0] < 0.85
    assert cos["batchtopk"][1] > cos["topk"][1] + 0.2


def test_jumprelu_l0_pseudo_derivative_is_minus_one_over_bandwidth() -> None:
    # Rajamanoharan et al.: dH(z - theta)/dtheta := -(1/h) K((z - theta)/h); in log theta that
    # is -(theta/h) per sample within h/2 of the threshold, 0 elsewhere
    from neuronsplit.sdl.models import _Step

    log_theta = torch.tensor([-3.0, -3.0], dtype=torch.float64, requires_grad=True)
    theta = math.exp(-3.0)
    z = torch.tensor([[theta, theta + 1.0]], dtype=torch.float64)  # first near, second far
    _Step.apply(z, log_theta, 0.05).sum().backward()
    expected = torch.tensor([-theta / 0.05, 0.0], dtype=torch.float64)
    torch.testing.assert_close(log_theta.grad, expected)
