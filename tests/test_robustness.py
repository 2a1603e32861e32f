"""PGD robustness: the attack against closed forms, its bounds, and `bobx robustness` end to end."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import torch
from torch import nn

import featcache
from featcache.errors import BobxError
from featcache.jobs import make_job, run_job
from featcache.training.attack import AttackRun, parse_eps, parse_step_size, pgd_linf
from featcache.training.model import ImageClassifier
from tests._tiny import extract_digits, tiny_manifests
from tests.test_cli_store import bobx

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _linear_model(w: torch.Tensor, b: torch.Tensor) -> ImageClassifier:
    """Pixels (B, 3, H, W) -> normalise -> flatten -> Linear: a linear classifier."""
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return ImageClassifier(nn.Sequential(nn.Flatten(), lin), MEAN, STD).eval()


def test_pgd_reaches_the_closed_form_optimum_of_a_linear_model():
    """Binary linear model, logits (0, m(x)) with m(x) = v . x + c in pixel space: for
    class 1 the worst case in the box [x - eps, x + eps] n [0, 1] moves every pixel
    against sign(v) as far as allowed; for class 0, along it. PGD gets there exactly."""
    g = torch.Generator().manual_seed(0)
    shape, d = (3, 4, 4), 48
    x = torch.rand((64, *shape), generator=g)
    x[:8] = x[:8].round()  # pixels at 0 and 1: the box clips the perturbation
    v = 0.02 * torch.randn(d, generator=g)  # margins of order 1: the softmax never saturates
    w = torch.stack([torch.zeros(d), v])
    model = _linear_model(w, torch.zeros(2))
    m0 = model(x)[:, 1]  # the margin of class 1 over class 0
    y = (m0 > 0).long()  # every point starts correctly classified
    s = torch.tensor(STD).view(1, 3, 1, 1).expand(1, *shape).reshape(-1)
    v_pixel = v / s  # the normalisation divides by std: the pixel-space weights
    for eps in (1 / 255, 2 / 255, 8 / 255):
        adv = pgd_linf(model, x, y, eps=eps, steps=20, step_size=eps / 5)
        direction = torch.where(y.view(-1, 1) == 1, -1.0, 1.0) * torch.sign(v_pixel)
        flat = x.reshape(len(x), -1)
        want = torch.minimum(torch.maximum(flat + eps * direction, flat - eps), flat + eps)
        want = want.clamp(0, 1).reshape(x.shape)
        torch.testing.assert_close(adv, want, rtol=0, atol=1e-6)
        margin = model(adv)[:, 1]
        robust = ((margin > 0).long() == y).float().mean()
        closed = ((m0 + (want - x).reshape(len(x), -1) @ v_pixel) > 0).long() == y
        assert robust == closed.float().mean()
    assert robust < 1  # at 8/255 the attack flips some of them


def test_pgd_respects_the_ball_and_the_pixel_range():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 5))
    model = ImageClassifier(net, MEAN, STD).eval()
    x = torch.rand(16, 3, 16, 16)
    x[:4] = 0.0
    y = torch.randint(0, 5, (16,))
    for random_start in (False, True):
        for eps in (1 / 255, 4 / 255, 0.1):
            adv = pgd_linf(
                model,
                x,
                y,
                eps=eps,
                steps=7,
                step_size=eps / 3,
                random_start=random_start,
                generator=torch.Generator().manual_seed(1),
            )
            assert (adv - x).abs().max() <= eps + 1e-6
            assert adv.min() >= 0 and adv.max() <= 1
            assert not torch.equal(adv, x)
    assert torch.equal(pgd_linf(model, x, y, eps=0.0, steps=20, step_size=0.1), x)
    assert torch.equal(
        pgd_linf(model, x, y, eps=0.0, steps=20, step_size=0.1, random_start=True), x
    )
    with pytest.raises(BobxError, match="uint8"):
        pgd_linf(model, (x * 255).to(torch.uint8), y, eps=0.1, steps=1, step_size=0.1)


def _digits_linear() -> tuple[ImageClassifier, torch.Tensor, torch.Tensor]:
    """A softmax classifier trained on digits pixels (8x8 grey as 3x8x8 in [0, 1])."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    xs, ys = load_digits(return_X_y=True)
    x = torch.tensor(xs / 16.0, dtype=torch.float32).view(-1, 1, 8, 8).repeat(1, 3, 1, 1)
    s = torch.tensor(STD).view(1, 3, 1, 1)
    m = torch.tensor(MEAN).view(1, 3, 1, 1)
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(((x - m) / s).reshape(len(x), -1), ys)
    model = _linear_model(torch.tensor(clf.coef_).float(), torch.tensor(clf.intercept_).float())
    return model, x[1500:], torch.tensor(ys[1500:])


def test_robust_accuracy_falls_as_eps_grows():
    model, x, y = _digits_linear()
    accuracy = []
    for eps in (0.0, 1 / 255, 4 / 255, 16 / 255, 64 / 255):
        adv = pgd_linf(model, x, y, eps=eps, steps=20, step_size=eps / 5)
        with torch.no_grad():
            accuracy.append(float((model(adv).argmax(1) == y).float().mean()))
    assert accuracy[0] > 0.9
    assert all(a >= b for a, b in zip(accuracy, accuracy[1:], strict=False)), accuracy
    assert accuracy[-1] < 0.5 * accuracy[0]


def test_eps_and_step_size_parsing():
    assert parse_eps("1/255") == ("1/255", 1 / 255)
    assert parse_eps(" 0 ") == ("0", 0.0) and parse_eps("0.004")[1] == 0.004
    assert parse_step_size("eps/5", 0.01) == pytest.approx(0.002)
    assert parse_step_size("eps*0.25", 0.01) == pytest.approx(0.0025)
    assert parse_step_size("1/1020", 0.01) == pytest.approx(1 / 1020)
    for bad in ("x/255", "1/0", "2"):
        with pytest.raises(BobxError):
            parse_eps(bad)
    with pytest.raises(BobxError, match="eps/5"):
        parse_step_size("eps/x", 0.1)


class _Pixels:
    """An ImageSplit-like view of digits as 8x8 RGB images (labels inside)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.labels, self.split = x, y.numpy(), "test"

    def load(self, i: int):
        from PIL import Image

        return Image.fromarray((self.x[i].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))

    def describe(self, i: int) -> str:
        return f"digit {i}"


def test_attack_job_resumes_to_the_same_counts(tmp_path):
    """The attack as a job: killed after two batches, resumed, same counts as one go."""
    from torchvision.transforms import PILToTensor

    model, x, y = _digits_linear()
    split = _Pixels(x, y)
    rows = np.arange(100)
    job = make_job("robustness", "linear", "digits", {"t": 1})

    def factory(_job, crash_after=None):
        run = AttackRun(
            model,
            split,
            rows,
            transform=PILToTensor(),
            input_size=(3, 8, 8),
            eps=[parse_eps("0"), parse_eps("4/255")],
            steps=5,
            step_size="eps/5",
            random_start=True,
            batch_size=16,
            seed=3,
        )
        if crash_after is None:
            return run
        inner = run.run

        def crashing():
            for event in inner():
                yield event
                if event.step == crash_after:
                    raise KeyboardInterrupt

        run.run = crashing  # type: ignore[method-assign]
        return run

    ref = run_job(featcache.open_store(str(tmp_path / "ref")), job, factory)
    store = featcache.open_store(str(tmp_path / "s"))
    with pytest.raises(KeyboardInterrupt):
        run_job(store, job, lambda j: factory(j, crash_after=2), checkpoint_every_steps=1)
    out = run_job(store, job, factory, checkpoint_every_steps=1)
    assert out.resumed_from == 2 and out.metrics == ref.metrics
    assert ref.metrics["top1@4/255"] < ref.metrics["top1@0"]


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory):
    """rb_resnet (random init, 32 px) extracted and probed on digits."""
    from featcache.runners.classification import run_probe

    root = tiny_manifests(tmp_path_factory.mktemp("rb"), "rb")
    mp = pytest.MonkeyPatch()
    mp.setenv("BOBX_MANIFESTS", str(root))
    store = featcache.open_store(str(root / "store"))
    extract_digits(store, "rb_resnet", dtype="float32")
    run_probe(store, "rb_resnet", "digits", dtype="float32", c_grid=[0.1, 1.0])
    yield store
    mp.undo()


def test_robustness_cli_against_the_stored_probe(probed):
    store = probed
    args = ["--backbone", "rb_resnet", "--dataset", "digits", "--weights", "random"]
    opts = ["--limit", "48", "--steps", "3", "--num-workers", "0", "--device", "cpu", "--json"]
    rows = json.loads(bobx("robustness", *args, *opts, store=store.url).stdout)
    by_eps = {r["params"]["eps"]: r for r in rows}
    assert list(by_eps) == ["0", "1/255", "2/255"]
    for r in rows:
        assert (r["task"], r["metric"], r["split"]) == ("robustness", "top1", "test")
        p = r["params"]
        assert (p["attack"], p["norm"], p["steps"], p["head"], p["head_run"]) == (
            "pgd",
            "linf",
            3,
            "probe",
            "full",
        )
        assert p["limit"] == 48 and p["random_start"] is False
    assert by_eps["1/255"]["params"]["eps_value"] == pytest.approx(1 / 255)
    assert by_eps["2/255"]["params"]["step_size_value"] == pytest.approx(2 / 255 / 5)
    clean = by_eps["0"]["value"]
    assert by_eps["2/255"]["value"] <= by_eps["1/255"]["value"] <= clean
    # the clean accuracy is the probe's own on the same images (features stored as float32)
    arrays, _ = store.get_artifact("probe", "rb_resnet", "digits", "full")
    subset = np.sort(np.random.default_rng([0, 11]).choice(450, 48, replace=False))
    probe_acc = np.mean(arrays["test_logits"][subset].argmax(1) == arrays["test_labels"][subset])
    assert abs(clean - probe_acc) <= 1 / 48 + 1e-9
    again = bobx("robustness", *args, *opts[:-1], store=store.url)
    assert "already attacked" in again.stdout
    assert len(store.results(task="robustness")) == 3


def test_missing_head_names_the_command(probed, tmp_path):
    from featcache.runners.robustness import run_robustness

    empty = str(tmp_path / "empty")
    bad = bobx(
        "robustness", "--backbone", "rb_resnet", "--dataset", "digits", "--weights", "random",
        store=empty, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "run `bobx probe --backbone rb_resnet" in bad.stderr
    assert bad.stderr.count("\n") == 1
    nothing = featcache.open_store(empty)
    with pytest.raises(BobxError, match="run `bobx finetune --backbone rb_resnet"):
        run_robustness(nothing, "rb_resnet", "digits", head="finetune", weights="random")
    with pytest.raises(BobxError, match="eps"):
        run_robustness(probed, "rb_resnet", "digits", eps=["1/0"], weights="random")
    with pytest.raises(BobxError, match="robustness head"):
        run_robustness(probed, "rb_resnet", "digits", head="knn", weights="random")
    assert nothing.results().empty


def test_robustness_of_a_finetuned_head(probed):
    from featcache.runners.finetune import run_finetune
    from featcache.runners.robustness import run_robustness

    store = featcache.open_store(f"memory://{uuid.uuid4().hex}")
    tuned = run_finetune(
        store,
        "rb_resnet",
        "digits",
        recipe="quick",
        overrides={"epochs": 1},
        weights="random",
        device="cpu",
        num_workers=0,
    )
    out = run_robustness(
        store,
        "rb_resnet",
        "digits",
        head="finetune",
        eps=["2/255"],
        steps=2,
        limit=450,
        weights="random",
        device="cpu",
        num_workers=0,
    )
    clean, robust = (r.value for r in out.records)
    assert clean == pytest.approx(tuned.records[0].value)  # the fine-tune's own test top-1
    assert robust <= clean
    assert out.records[0].params["head"] == "finetune"
    assert out.records[0].params["head_run"] == "quick"


@pytest.mark.gpu
def test_pgd_on_cuda_equals_the_cpu_attack():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    model, x, y = _digits_linear()
    cpu = pgd_linf(model, x, y, eps=4 / 255, steps=10, step_size=1 / 255)
    gpu = pgd_linf(model.cuda(), x.cuda(), y.cuda(), eps=4 / 255, steps=10, step_size=1 / 255)
    assert (gpu.cpu() - x).abs().max() <= 4 / 255 + 1e-6
    agree = (gpu.cpu() == cpu).float().mean()
    assert agree > 0.99  # sign flips only where a gradient entry is ~0
