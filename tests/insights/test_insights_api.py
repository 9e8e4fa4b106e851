"""Captum Insights through Flask's test client: registration, /init, /fetch, hazards, CLI."""

from __future__ import annotations

import base64
import sys
import threading
import urllib.request
from collections.abc import Iterator

import pytest
import torch

pytest.importorskip("captum.insights", reason="needs the insights extra (captum==0.8.0 + flask)")

from captum.insights.attr_vis import config, server  # noqa: E402

from neuronsplit import Disentangle  # noqa: E402
from neuronsplit.demo import get_demo_model, load_digits  # noqa: E402
from neuronsplit.errors import (  # noqa: E402
    InvalidTargetError,
    MissingExtraError,
    UnknownSubunitError,
)
from neuronsplit.insights import (  # noqa: E402
    InsightsApp,
    frontend_built,
    make_visualizer,
    register,
    require_insights,
    serve,
)
from neuronsplit.plan import SplitPlan, UnitSplit  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
# Insights' own batching warns that its per-sample inputs do not require grad (they need not)
pytestmark = pytest.mark.filterwarnings("ignore:It looks like that the attribution")


def demo_test_plan(model: torch.nn.Module) -> SplitPlan:
    """fc2 unit 2 split by the sign of its weights, unit 4 in two groups plus shared inputs.

    One layer has one merge form: both use Hesse's overlap form (subunit k = t_k + r), so the
    Insights method reads subunits that are two rows; the browser test uses the disjoint form.
    """
    w = model.fc2.weight.detach()
    pos = [i for i in range(64) if w[2, i] > 0]
    neg = [i for i in range(64) if w[2, i] <= 0]
    return SplitPlan(
        [
            UnitSplit("fc2", 2, [pos, neg], merge="overlap", labels=("w>0", "w<=0")),
            UnitSplit(
                "fc2",
                4,
                [list(range(0, 20)), list(range(20, 40))],
                shared=list(range(40, 64)),
                merge="overlap",
            ),
        ]
    )


@pytest.fixture(scope="module")
def app() -> Iterator[InsightsApp]:
    model = get_demo_model()
    with make_visualizer(
        model, demo_test_plan(model), method_name="Disentangle (api test)"
    ) as made:
        yield made
    assert "Disentangle (api test)" not in config.ATTRIBUTION_NAMES_TO_METHODS


@pytest.fixture()
def client(app: InsightsApp) -> Iterator[object]:
    previous = server.visualizer
    server.visualizer = app.visualizer
    try:
        yield server.app.test_client()
    finally:
        server.visualizer = previous


def _fetch(client: object, method: str, arguments: dict) -> list[dict]:
    response = client.post(  # type: ignore[attr-defined]
        "/fetch",
        json={
            "attribution_method": method,
            "arguments": arguments,
            "prediction": "all",
            "classes": [],
        },
    )
    assert response.status_code == 200, response.data[:2000]
    outputs = [o for per_input in response.get_json() for o in per_input]  # input x model
    assert len(outputs) >= 4
    return outputs


def _assert_pngs(outputs: list[dict]) -> None:
    for out in outputs:
        (feature,) = out["feature_outputs"]
        assert feature["type"] == "image" and feature["name"] == "Digit"
        for key in ("base", "modified"):
            data = base64.b64decode(feature[key])
            assert data.startswith(PNG) and len(data) > 1000


def test_init_lists_disentangle(client: object, app: InsightsApp) -> None:
    init = client.get("/init").get_json()  # type: ignore[attr-defined]
    assert app.method_name in init["methods"]
    assert "Integrated Gradients" in init["methods"]
    assert init["classes"] == [str(d) for d in range(10)]
    arg = init["method_arguments"][app.method_name]["subunit"]
    assert arg["type"] == "enum" and arg["limit"] == list(app.choices)
    assert arg["limit"] == [
        "fc2/u2/k0 (w>0)",
        "fc2/u2/k1 (w<=0)",
        "fc2/u2/residual",
        "fc2/u2/unit",
        "fc2/u4/k0",
        "fc2/u4/k1",
        "fc2/u4/residual",
        "fc2/u4/unit",
    ]
    assert arg["value"] == "fc2/u2/k0 (w>0)"


def test_fetch_integrated_gradients(client: object) -> None:
    outputs = _fetch(client, "Integrated Gradients", {"n_steps": 5, "method": "gausslegendre"})
    _assert_pngs(outputs)


@pytest.mark.parametrize("choice", ["fc2/u2/k1 (w<=0)", "fc2/u4/residual", "fc2/u2/unit"])
def test_fetch_subunit_method(client: object, app: InsightsApp, choice: str) -> None:
    outputs = _fetch(client, app.method_name, {"subunit": choice})
    _assert_pngs(outputs)
    for out in outputs:
        assert 0 <= out["active_index"] < 10 and len(out["predicted"]) == 4


def test_filter_matching_nothing_returns_instead_of_hanging(
    client: object, app: InsightsApp
) -> None:
    result: list[object] = []

    def fetch() -> None:
        response = client.post(  # type: ignore[attr-defined]
            "/fetch",
            json={
                "attribution_method": app.method_name,
                "arguments": {"subunit": "fc2/u4/k0"},
                "prediction": "all",
                "classes": ["no such class"],
            },
        )
        result.append(response.get_json())

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "Insights looped forever on a filter that matches nothing"
    assert result == [[]]


def test_insights_call_convention_matches_disentangle(app: InsightsApp) -> None:
    """Insights constructs cls(model) and calls attribute.__wrapped__ with a 0-d tensor target."""
    cls = config.ATTRIBUTION_NAMES_TO_METHODS[app.method_name]
    method = cls(app.model)
    sample = load_digits("test").images[:1]
    target = torch.tensor(3)
    dis = Disentangle(app.model)
    got = method.attribute.__wrapped__(
        method, (sample,), additional_forward_args=None, target=target, subunit="fc2/u4/k1"
    )
    assert isinstance(got, tuple) and got[0].shape == sample.shape
    torch.testing.assert_close(got[0], dis.attribute(sample, target=3, subunit=("fc2", 4, 1)))
    unit = method.attribute.__wrapped__(method, (sample,), target=target, subunit="fc2/u2/unit")
    labelled = method.attribute.__wrapped__(
        method, (sample,), target=target, subunit="fc2/u2/k1 (w<=0)"
    )
    plain = method.attribute.__wrapped__(method, (sample,), target=target, subunit="fc2/u2/k1")
    torch.testing.assert_close(labelled[0], plain[0])
    with pytest.raises(UnknownSubunitError, match=r"cannot parse subunit 'fc2/u2/k1 \(w>0\)'"):
        method.attribute.__wrapped__(method, (sample,), target=target, subunit="fc2/u2/k1 (w>0)")
    expected = dis.attribute_unit(sample, target=3, layer="fc2", unit=2).unit
    torch.testing.assert_close(unit[0], expected)
    # overlap form: (t_0 + r) + (t_1 + r) - (K-1) r is the unit, also through Insights
    parts = [
        method.attribute.__wrapped__(method, (sample,), target=target, subunit=choice)[0]
        for choice in ("fc2/u2/k0 (w>0)", "fc2/u2/k1 (w<=0)", "fc2/u2/residual")
    ]
    torch.testing.assert_close(sum(parts), unit[0], rtol=1e-4, atol=1e-6)
    # the original (unsplit) model passed by Insights is replaced by the bound split model
    other = cls(get_demo_model())
    assert other.model is app.model


def test_all_zero_and_greyscale_maps_render(app: InsightsApp) -> None:
    feature = app.visualizer.features[0]
    image = torch.rand(1, 1, 8, 8)
    out = feature.visualize(torch.zeros(1, 1, 8, 8), image, 0.0)  # Captum would assert here
    assert base64.b64decode(out.modified).startswith(PNG)
    out = feature.visualize(torch.randn(1, 1, 8, 8), image, 0.5)
    assert base64.b64decode(out.base).startswith(PNG) and out.contribution == 0.5
    out = feature.visualize(torch.randn(1, 3, 8, 8), torch.rand(1, 3, 8, 8), 0.5)
    assert base64.b64decode(out.modified).startswith(PNG)


def test_register_refuses_duplicates_and_unregisters(app: InsightsApp) -> None:
    with pytest.raises(ValueError, match=r"'Integrated Gradients' is already registered"):
        register(app.model, name="Integrated Gradients")
    with pytest.raises(ValueError, match=r"already registered"):
        register(app.model, name=app.method_name)
    n_methods, n_configs = (
        len(config.ATTRIBUTION_NAMES_TO_METHODS),
        len(config.ATTRIBUTION_METHOD_CONFIG),
    )
    with pytest.raises(UnknownSubunitError, match=r"subunit k=2 does not exist for unit 4"):
        register(app.model, name="temp subunits", subunits=[("fc2", 4, 2)])
    with register(app.model, name="temp subunits", subunits=[("fc2", 4, 1)]) as reg:
        assert reg.choices == ("fc2/u4/k1", "fc2/u4/unit")
        assert config.ATTRIBUTION_NAMES_TO_METHODS["temp subunits"] is reg.method
        assert "temp subunits" in config.ATTRIBUTION_METHOD_CONFIG
    assert len(config.ATTRIBUTION_NAMES_TO_METHODS) == n_methods
    assert len(config.ATTRIBUTION_METHOD_CONFIG) == n_configs
    reg.remove()  # idempotent


def test_bad_data_is_refused() -> None:
    model = get_demo_model()
    plan = demo_test_plan(model)
    images = torch.rand(8, 1, 8, 8)
    with pytest.raises(InvalidTargetError, match=r"needs a label for every image"):
        make_visualizer(model, plan, images=images, labels=None)
    with pytest.raises(InvalidTargetError, match=r"2 class names for 10 model outputs"):
        make_visualizer(
            model, plan, images=images, labels=torch.zeros(8, dtype=torch.long), classes=["a", "b"]
        )
    with pytest.raises(InvalidTargetError, match=r"label 12 is out of range for 10 classes"):
        make_visualizer(model, plan, images=images, labels=torch.full((8,), 12))
    assert "Disentangle (subunits)" not in config.ATTRIBUTION_NAMES_TO_METHODS  # rolled back


def test_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "captum.insights", None)
    monkeypatch.setitem(sys.modules, "captum.insights.attr_vis", None)
    with pytest.raises(MissingExtraError, match=r'pip install "neuronsplit\[insights\]"'):
        require_insights()
    with pytest.raises(MissingExtraError, match=r"captum==0.8.0"):
        make_visualizer()


def test_frontend_is_built() -> None:
    assert frontend_built(), "captum's Insights front end (frontend/build/index.html) is missing"


def test_serve_in_daemon_thread(app: InsightsApp) -> None:
    previous = server.visualizer
    with serve(app) as running:
        assert running._thread is not None and running._thread.daemon
        assert server.visualizer is app.visualizer
        with urllib.request.urlopen(running.url, timeout=10) as response:
            assert b"Captum Insights" in response.read()
        with urllib.request.urlopen(running.url + "init", timeout=10) as response:
            assert app.method_name.encode() in response.read()
    assert server.visualizer is previous
    with pytest.raises(OSError):
        urllib.request.urlopen(running.url, timeout=2)


def test_cli_dry_run(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from neuronsplit.cli import main

    plan_file = tmp_path / "plan.json"
    plan_file.write_text(demo_test_plan(get_demo_model()).to_json())
    assert main(["insights", "--dry-run", "--plan", str(plan_file)]) == 0
    out = capsys.readouterr().out
    assert "Integrated Gradients" in out and "fc2/u2/k0 (w>0)" in out and "fc2/u4/residual" in out
    assert not [n for n in config.ATTRIBUTION_NAMES_TO_METHODS if n.startswith("Disentangle (sub")]
