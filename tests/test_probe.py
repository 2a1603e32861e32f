"""Linear probe: the torch backend against scikit-learn, the objective against its
own optimality condition, and the low-shot / holdout sampling rules."""

from __future__ import annotations

import numpy as np
import pytest

from evaluators.probe import (
    DEFAULT_C_GRID,
    HIGHER_IS_BETTER,
    ProbeError,
    linear_probe,
    sample_fraction,
    sample_shots,
    stratified_holdout,
)
from featcache.errors import ShapeError, UnknownNameError

GRID = 10.0 ** np.linspace(-4, 2, 7)


def make_problem(seed: int, n: int, d: int, k: int, sep: float, imbalance: bool = False):
    rng = np.random.default_rng(seed)
    means = sep * rng.standard_normal((k, d))
    p = np.linspace(1, 4, k) if imbalance else np.ones(k)
    p = p / p.sum()

    def draw(m):
        y = rng.choice(k, size=m, p=p)
        return (means[y] + rng.standard_normal((m, d))).astype(np.float32), y

    return draw(n), draw(n // 2)


@pytest.fixture(scope="module")
def problem():
    return make_problem(0, 1200, 20, 5, 0.35)


@pytest.fixture(scope="module")
def fits(problem):
    (x, y), (tx, ty) = problem
    out = {
        be: linear_probe(x, y, tx, ty, c_grid=GRID, backend=be, seed=3)
        for be in ("sklearn", "torch")
    }
    out["torch32"] = linear_probe(x, y, tx, ty, c_grid=GRID, dtype="float32", seed=3)
    return out


def _curve(out, key="val_score"):
    """One field of every sweep point, in fitting order."""
    return [p[key] for p in out["sweep"]]


def test_default_grid_is_the_protocol():
    assert DEFAULT_C_GRID.shape == (45,)
    np.testing.assert_allclose(DEFAULT_C_GRID[[0, 22, 44]], [1e-6, 10**-0.5, 1e5])


def test_torch_picks_the_same_C_and_accuracy_as_sklearn(fits):
    sk, tc = fits["sklearn"], fits["torch"]
    assert sk["backend"] == "sklearn" and tc["backend"] == "torch"
    assert tc["C"] == sk["C"]
    assert GRID[0] < sk["C"] < GRID[-1]  # an interior optimum: the sweep matters
    assert abs(tc["top1"] - sk["top1"]) <= 0.003
    assert 0.4 < sk["top1"] < 0.95  # learnable but not trivial
    # same objective, both converged: same sweep curve and nearly the same weights
    np.testing.assert_allclose(_curve(tc), _curve(sk))
    # each point says how its fit ended; converged fits reach the same objective
    assert all(p["converged"] for p in sk["sweep"] + tc["sweep"])
    np.testing.assert_allclose(_curve(tc, "objective"), _curve(sk, "objective"), rtol=1e-7)
    assert sk["n_unconverged"] == tc["n_unconverged"] == 0 and tc["convergence_warning"] is None
    np.testing.assert_allclose(tc["weights"], sk["weights"], rtol=1e-4, atol=1e-5)


def test_float32_torch_picks_the_same_C_within_a_third_of_a_point(fits):
    sk, tc = fits["sklearn"], fits["torch32"]
    assert tc["backend"] == "torch" and tc["dtype"] == "float32"
    assert tc["C"] == sk["C"] and abs(tc["top1"] - sk["top1"]) <= 0.003


def test_result_is_consistent(fits, problem):
    (x, y), (tx, ty) = problem
    out = fits["torch"]
    logits = tx.astype(np.float64) @ out["weights"].T + out["bias"]
    np.testing.assert_allclose(out["test_logits"], logits)
    assert out["top1"] == np.mean(np.argmax(logits, 1) == ty)
    np.testing.assert_allclose(out["test_probs"].sum(1), 1.0)
    assert out["weights"].shape == (5, 20) and out["bias"].shape == (5,)
    assert _curve(out, "C") == pytest.approx(list(GRID))
    assert out["val_top1"] == max(_curve(out))
    assert out["selection"] == "holdout" and out["refit_on"] == "train+val"
    assert out["n_fit"] == 1200 and out["n_val"] == len(out["val_indices"])
    assert set(out["train_indices"]) == set(range(1200))
    recall = np.mean([np.mean(np.argmax(logits[ty == c], 1) == c) for c in range(5)])
    assert out["mean_per_class_recall"] == pytest.approx(recall)
    assert out["top1"] <= out["top5"]
    for name in ("top1", "top5", "mean_per_class_recall", "val_top1"):
        assert HIGHER_IS_BETTER[name] is True


def _objective_gradient(x, y, w, b, C):
    """Gradient of sum_i CE_i + ||W||^2 / (2C), written independently of the code."""
    z = x @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return p.T @ x + w / C, p.sum(0)


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_refit_minimises_the_sklearn_objective(problem, backend):
    (x, y), (tx, ty) = problem
    x64 = x.astype(np.float64)
    val_x, val_y = x64[:200], y[:200]
    out = linear_probe(
        x64[200:], y[200:], tx, ty, val_x=val_x, val_y=val_y, c_grid=[0.05], backend=backend
    )
    assert out["selection"] == "val" and out["refit_on"] == "train+val" and out["n_fit"] == 1200
    w, b = out["weights"], out["bias"]
    all_x, all_y = np.concatenate([x64[200:], val_x]), np.concatenate([y[200:], val_y])
    gw, gb = _objective_gradient(all_x, all_y, w, b, 0.05)
    assert np.abs(gw).max() < 1e-4 and np.abs(gb).max() < 1e-4  # sum-scaled, n = 1200
    # the penalty is really 1/(2C): at C/10 the same weights are far from optimal
    gw10, _ = _objective_gradient(x64, y, w, b, 0.005)
    assert np.abs(gw10).max() > 1.0


def test_binary_uses_sklearn_parameterisation():
    (x, y), (tx, ty) = make_problem(1, 600, 8, 2, 0.5)
    sk = linear_probe(x, y, tx, ty, c_grid=[0.1, 1.0], backend="sklearn")
    tc = linear_probe(x, y, tx, ty, c_grid=[0.1, 1.0], backend="torch")
    assert sk["C"] == tc["C"]
    np.testing.assert_allclose(tc["weights"], sk["weights"], rtol=1e-4, atol=1e-6)
    assert np.all(sk["weights"][0] == 0) and sk["bias"][0] == 0  # softmax([0, z]) = sigmoid(z)
    np.testing.assert_allclose(tc["test_probs"], sk["test_probs"], atol=1e-6)


def test_multilabel_one_vs_rest_macro_auc():
    rng = np.random.default_rng(5)
    w_true = rng.standard_normal((3, 10))
    x = rng.standard_normal((700, 10)).astype(np.float32)
    y = (x @ w_true.T + 0.8 * rng.standard_normal((700, 3)) > 0.3).astype(np.int64)
    sk = linear_probe(x[:500], y[:500], x[500:], y[500:], c_grid=[0.01, 1.0], backend="sklearn")
    tc = linear_probe(x[:500], y[:500], x[500:], y[500:], c_grid=[0.01, 1.0], backend="torch")
    from sklearn.metrics import roc_auc_score

    expect = np.mean([roc_auc_score(y[500:, j], tc["test_logits"][:, j]) for j in range(3)])
    assert tc["multilabel"] and tc["macro_auc"] == pytest.approx(expect)
    assert tc["C"] == sk["C"] and abs(tc["macro_auc"] - sk["macro_auc"]) < 1e-4
    assert 0.8 < tc["macro_auc"] < 1.0 and "top1" not in tc
    assert ((tc["test_probs"] > 0) & (tc["test_probs"] < 1)).all()


# ----------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def labels():
    rng = np.random.default_rng(7)
    counts = [1, 2, 9, 40, 150, 300]
    y = np.concatenate([np.full(c, i) for i, c in enumerate(counts)])
    return rng.permutation(y), counts


def test_sample_fraction_is_stratified_deterministic_and_covers_every_class(labels):
    y, counts = labels
    idx = sample_fraction(y, 0.1, seed=0)
    got = np.bincount(y[idx], minlength=6)
    assert got.tolist() == [max(1, int(np.floor(0.1 * c + 0.5))) for c in counts]
    assert got.tolist() == [1, 1, 1, 4, 15, 30]
    assert np.array_equal(idx, sample_fraction(y, 0.1, seed=0))
    assert not np.array_equal(idx, sample_fraction(y, 0.1, seed=1))
    assert np.all(np.diff(idx) > 0)
    small = sample_fraction(y, 0.01, seed=0)  # nested: 1 % within 10 % for one seed
    assert np.bincount(y[small], minlength=6).tolist() == [1, 1, 1, 1, 2, 3]
    assert set(small) <= set(idx)


def test_sample_shots(labels):
    y, counts = labels
    idx = sample_shots(y, 5, seed=0)
    assert np.bincount(y[idx], minlength=6).tolist() == [min(5, c) for c in counts]
    assert np.array_equal(idx, sample_shots(y, 5, seed=0))
    assert not np.array_equal(idx, sample_shots(y, 5, seed=2))
    assert set(sample_shots(y, 2, seed=0)) <= set(idx)
    with pytest.raises(ProbeError, match="positive integer"):
        sample_shots(y, 0)
    with pytest.raises(ProbeError, match="fraction"):
        sample_fraction(y, 1.5)


def test_stratified_holdout(labels):
    y, counts = labels
    train, val = stratified_holdout(y, 0.1, seed=0)
    assert np.bincount(y[val], minlength=6).tolist() == [0, 0, 1, 4, 15, 30]
    assert np.intersect1d(train, val).size == 0 and train.size + val.size == y.size
    again = stratified_holdout(y, 0.1, seed=0)
    assert np.array_equal(val, again[1]) and np.array_equal(train, again[0])


@pytest.mark.parametrize("low_shot", [{"fraction": 0.1}, {"shots": 3}])
def test_low_shot_never_trains_on_validation_items(low_shot):
    (x, y), (tx, ty) = make_problem(2, 800, 12, 4, 0.5, imbalance=True)
    out = linear_probe(x, y, tx, ty, c_grid=[0.1, 1.0], backend="torch", seed=4, **low_shot)
    train_idx, val_idx = out["train_indices"], out["val_indices"]
    assert np.intersect1d(train_idx, val_idx).size == 0
    assert out["refit_on"] == "train subset" and out["n_fit"] == train_idx.size
    pool, val = stratified_holdout(y, 0.1, seed=4)
    assert np.array_equal(val, val_idx)
    if "fraction" in low_shot:
        expect = pool[sample_fraction(y[pool], 0.1, seed=4)]
    else:
        expect = pool[sample_shots(y[pool], 3, seed=4)]
        assert train_idx.size == 12
    assert np.array_equal(train_idx, expect)
    assert np.bincount(y[train_idx], minlength=4).min() >= 1


def test_bad_options_say_how_to_fix(problem):
    (x, y), (tx, ty) = problem
    with pytest.raises(ProbeError, match="not both"):
        linear_probe(x, y, tx, ty, fraction=0.1, shots=2)
    with pytest.raises(UnknownNameError, match="Did you mean 'sklearn'"):
        linear_probe(x, y, tx, ty, backend="sklern")
    with pytest.raises(ProbeError, match="both val_x and val_y"):
        linear_probe(x, y, tx, ty, val_x=x)
    with pytest.raises(ShapeError, match="dimension"):
        linear_probe(x, y, tx[:, :3], ty)
    with pytest.raises(ProbeError, match="single class"):
        linear_probe(x, np.zeros_like(y), tx, ty, c_grid=[1.0])
    with pytest.raises(ProbeError, match="sklearn' runs on the CPU"):
        linear_probe(x, y, tx, ty, backend="sklearn", device="cuda")


def test_sweep_patience_stops_early_and_is_recorded(problem):
    (x, y), (tx, ty) = problem
    out = linear_probe(x, y, tx, ty, c_grid=GRID, backend="torch", seed=3, sweep_patience=1)
    assert out["sweep_patience"] == 1 and len(out["sweep"]) < len(GRID)
    assert out["sweep"][-2]["val_score"] == max(_curve(out))


@pytest.mark.gpu
def test_torch_backend_on_cuda_equals_cpu(problem, fits):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    (x, y), (tx, ty) = problem
    gpu = linear_probe(x, y, tx, ty, c_grid=GRID, backend="torch", device="cuda", seed=3)
    cpu = fits["torch"]
    assert gpu["C"] == cpu["C"] and gpu["top1"] == pytest.approx(cpu["top1"], abs=0.003)
    np.testing.assert_allclose(gpu["weights"], cpu["weights"], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_cold_path_on_cuda_reproduces_sklearn_fits(capped):
    import warnings

    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    (x, y), (tx, ty) = make_problem(1, 600, 16, 4, 0.6)
    kw = {"c_grid": 10.0 ** np.linspace(-3, 4, 8), "max_iter": 10, "seed": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gpu = linear_probe(x, y, tx, ty, device="cuda", warm_start=False, **kw)
    sk = capped["sklearn"]
    for key in ("n_iter", "converged", "val_score"):
        assert _curve(gpu, key) == _curve(sk, key), key
    np.testing.assert_allclose(_curve(gpu, "objective"), _curve(sk, "objective"), rtol=1e-9)


def test_warm_start_extrapolates_the_solution_path_in_log_c():
    from evaluators.probe import _path_start

    # the parabola through the last three solutions, one-point and two-point cases too
    def sol(t):
        return np.array([[1.0 + 2 * t - 0.5 * t**2, -t]])

    assert _path_start([], 0.0) is None
    np.testing.assert_allclose(_path_start([(0.0, sol(0.0))], 7.0), sol(0.0))
    np.testing.assert_allclose(_path_start([(0.0, sol(0.0)), (0.5, sol(0.5))], 1.0)[0, 1], -1.0)
    path = [(t, sol(t)) for t in (-1.0, 0.25, 1.5)]
    np.testing.assert_allclose(_path_start(path, 2.75), sol(2.75))


# ------------------------------------------------------------ CLIP_benchmark protocol


def _clip_reference_fit(x, y, n_out, wd, *, lr, epochs, batch_size, seed):
    """CLIP_benchmark's training loop written plainly: DataLoader(shuffle=True), AdamW,
    cosine schedule without warmup set before each step, seeded by torch.manual_seed."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torch.nn.Linear(x.shape[1], n_out)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
        data = TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y))
        loader = DataLoader(data, batch_size=batch_size, shuffle=True)
        steps = epochs * len(loader)
        for epoch in range(epochs):
            for i, (xb, yb) in enumerate(loader):
                step = i + epoch * len(loader)
                for g in opt.param_groups:
                    g["lr"] = 0.5 * (1 + np.cos(np.pi * step / steps)) * lr
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()
    return model.weight.detach().double().numpy(), model.bias.detach().double().numpy()


def test_adamw_fit_equals_the_clip_benchmark_loop():
    from evaluators.probe import _AdamWBackend, _encode

    (x, y), _ = make_problem(2, 300, 12, 4, 0.5)
    task, t = _encode(y, False, binary_softmax=True)
    fit = _AdamWBackend(lr=0.1, epochs=3, batch_size=64, seed=7, device="cpu").fit(x, task, t, 1e-2)
    w, b = _clip_reference_fit(x, t, 4, 1e-2, lr=0.1, epochs=3, batch_size=64, seed=7)
    np.testing.assert_allclose(fit.w, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fit.b, b, rtol=1e-5, atol=1e-6)
    assert fit.n_iter == 3 * 5  # 300 rows in batches of 64: 5 steps per epoch


def _clip_reference_search(acc):
    """CLIP_benchmark's WeightDecayTuner.tune_weight_decay over an accuracy table."""
    wd_list = np.logspace(-6, 2, num=97).tolist()

    def find_peak(idxs):
        best_idx, max_acc = 0, 0
        for idx in idxs:
            if max_acc < acc[idx]:
                best_idx, max_acc = idx, acc[idx]
        return best_idx

    peak = find_peak([0, 16, 32, 48, 64, 80, 96])
    span = 8
    while span > 0:
        peak = find_peak([max(peak - span, 0), peak, min(peak + span, len(wd_list) - 1)])
        span //= 2
    return peak


@pytest.mark.parametrize("seed", range(6))
def test_clip_weight_decay_search_follows_the_reference(seed):
    from evaluators.probe import CLIP_WD_GRID, _clip_sweep, _Fit

    rng = np.random.default_rng(seed)
    # a bumpy curve with plateaus (ties) and, for seed 0, all zeros
    acc = np.round(rng.random(97), 1) * (seed > 0)
    fitted = []

    def fit_one(wd):  # stands in for a fit: its "weights" are the grid index
        fitted.append(wd)
        return _Fit(np.array([[np.argmin(np.abs(CLIP_WD_GRID - wd))]]), np.zeros(1), 1, None)

    peak, sweep, done = _clip_sweep(fit_one, lambda fit: float(acc[int(fit.w[0, 0])]))
    assert peak == _clip_reference_search(acc)
    assert len(fitted) == len(set(fitted)) == len(sweep) <= 19  # each point fitted once
    assert _curve({"sweep": sweep}, "weight_decay") == fitted
    np.testing.assert_allclose(CLIP_WD_GRID[[0, 16, 96]], [1e-6, 10 ** (-6 + 16 / 12), 100.0])


def test_clip_benchmark_protocol_end_to_end(problem, fits):
    (x, y), (tx, ty) = problem
    out = linear_probe(x, y, tx, ty, protocol="clip_benchmark", seed=3, epochs=5)
    assert out["protocol"] == "clip_benchmark" and out["C"] is None
    assert out["weight_decay"] in _curve(out, "weight_decay")
    assert out["backend"] == "adamw" and out["dtype"] == "float32"
    assert (out["lr"], out["epochs"], out["batch_size"]) == (0.1, 5, 64)
    assert out["refit_on"] == "train+val" and out["n_fit"] == 1200
    # a trained probe on normalised features: close to the logistic-regression one
    assert abs(out["top1"] - fits["sklearn"]["top1"]) < 0.05
    assert fits["sklearn"]["protocol"] == "dinov2" and fits["sklearn"]["weight_decay"] is None
    with pytest.raises(ProbeError, match="c_grid belong to the dinov2 protocol"):
        linear_probe(x, y, tx, ty, protocol="clip_benchmark", c_grid=[1.0])
    with pytest.raises(ProbeError, match="c_grid, tol belong to the dinov2 protocol"):
        linear_probe(x, y, tx, ty, protocol="clip_benchmark", c_grid=np.ones(2), tol=1e-6)
    with pytest.raises(ProbeError, match="epochs belong to the clip_benchmark protocol"):
        linear_probe(x, y, tx, ty, epochs=3)
    with pytest.raises(UnknownNameError, match="probe protocol"):
        linear_probe(x, y, tx, ty, protocol="clip")


# ------------------------------------------------------------------ convergence
@pytest.fixture(scope="module")
def capped():
    """A problem whose larger-C fits need more than 10 L-BFGS iterations, fitted at
    max_iter=10 by scikit-learn and by the torch backend, cold and warm."""
    import warnings

    (x, y), (tx, ty) = make_problem(1, 600, 16, 4, 0.6)
    kw = {"c_grid": 10.0 ** np.linspace(-3, 4, 8), "max_iter": 10, "seed": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "sklearn": linear_probe(x, y, tx, ty, backend="sklearn", **kw),
            "cold": linear_probe(x, y, tx, ty, backend="torch", warm_start=False, **kw),
            "warm": linear_probe(x, y, tx, ty, backend="torch", **kw),
        }


def test_cold_path_reproduces_sklearn_fits_at_the_same_max_iter(capped):
    sk, cold = capped["sklearn"], capped["cold"]
    assert cold["warm_start"] is False and sk["warm_start"] is False
    assert not any(_curve(sk, "converged"))  # every fit stopped at max_iter
    for key in ("C", "n_iter", "converged", "val_score"):
        assert _curve(cold, key) == _curve(sk, key), key
    np.testing.assert_allclose(_curve(cold, "objective"), _curve(sk, "objective"), rtol=1e-9)
    assert cold["C"] == sk["C"] and cold["top1"] == sk["top1"]
    np.testing.assert_allclose(cold["weights"], sk["weights"], rtol=1e-5, atol=1e-6)


def test_warm_starts_reach_lower_objectives_where_fits_hit_max_iter(capped):
    warm, cold = capped["warm"], capped["cold"]
    assert warm["warm_start"] is True
    gain = np.subtract(_curve(cold, "objective"), _curve(warm, "objective"))
    assert (gain[2:] > 0).all()  # past the smallest C the path start is ahead
    assert _curve(warm, "val_score") != _curve(cold, "val_score")  # so choices can differ


def test_unconverged_choice_is_counted_and_warned_in_one_line(capped, fits):
    from evaluators.probe import ProbeConvergenceWarning

    cold = capped["cold"]
    assert cold["n_unconverged"] == len(cold["sweep"]) + 1  # every sweep fit and the refit
    (x, y), (tx, ty) = make_problem(1, 600, 16, 4, 0.6)
    with pytest.warns(ProbeConvergenceWarning) as caught:
        out = linear_probe(x, y, tx, ty, c_grid=10.0 ** np.linspace(-3, 4, 8), max_iter=10, seed=1)
    message = str(caught[0].message)
    assert len(caught) == 1 and "\n" not in message and message == out["convergence_warning"]
    assert f"the chosen C={out['C']:.4g}" in message and "--no-warm-start" in message
    assert f"({out['n_unconverged']} unconverged" in message
    assert fits["torch"]["convergence_warning"] is None  # converged sweeps stay quiet


def test_warm_start_belongs_to_the_dinov2_protocol(problem):
    (x, y), (tx, ty) = problem
    with pytest.raises(ProbeError, match="warm_start"):
        linear_probe(x, y, tx, ty, protocol="clip_benchmark", warm_start=False, epochs=1)
