"""Two versions at once: a canary split that keeps a customer on one side, and a shadow that never slows production."""

import asyncio
import re
import time

from fastapi.testclient import TestClient

from api.app import create_app
from api.holder import ModelHolder
from api.release.traffic import Target, Traffic

from .conftest import make_model


class RolloutSource:
    """Stands in for the registry during a rollout: production, a canary and the traffic between them."""

    def __init__(self, models: dict, target: Target):
        self.models, self.current = models, target

    def target_version(self) -> str:
        return self.current.production

    def target(self) -> Target:
        return self.current

    def load(self, version: str):
        model = self.models[version]
        if isinstance(model, Exception):
            raise model
        return model


def serving(trained, target: Target, **extra) -> tuple[ModelHolder, RolloutSource]:
    models = {"1": make_model(trained, "1"), "2": make_model(trained, "2"), **extra}
    for model in models.values():
        if not isinstance(model, Exception):
            model.entity_field = "customerID"
            model.__post_init__()  # rebuilt with the customer field accepted
    source = RolloutSource(models, target)
    holder = ModelHolder(source=source)
    asyncio.run(holder.refresh())
    return holder, source


def test_a_canary_split_keeps_each_customer_on_one_version(trained, records):
    holder, _ = serving(trained, Target("1", "2", Traffic("canary", "2", weight=30)))
    with TestClient(create_app(holder)) as client:
        answers = {}
        for i in range(200):
            body = {"records": [{**records[i % len(records)], "customerID": f"c-{i % 50}"}]}
            version = client.post("/predict", json=body).headers["X-Model-Version"]
            answers.setdefault(f"c-{i % 50}", set()).add(version)
        info = client.get("/model").json()
    assert all(len(versions) == 1 for versions in answers.values())  # one customer, one version
    on_canary = sum(versions == {"2"} for versions in answers.values())
    assert 5 <= on_canary <= 25  # about 30 % of 50 customers
    assert info["version"] == "1" and info["canary"]["version"] == "2"
    assert info["traffic"] == {"mode": "canary", "weight": 30, "shadow_share": 0.0}


def test_without_a_customer_the_request_id_decides_and_the_weight_moves_customers_once(trained, records):
    holder, source = serving(trained, Target("1", "2", Traffic("canary", "2", weight=10)))
    with TestClient(create_app(holder)) as client:

        def side(request_id: str) -> str:
            answer = client.post("/predict", json={"records": records[:1]}, headers={"X-Request-Id": request_id})
            return answer.headers["X-Model-Version"]

        at_10 = {rid: side(rid) for rid in (f"r{i}" for i in range(100))}
        source.current = Target("1", "2", Traffic("canary", "2", weight=50))
        asyncio.run(holder.refresh())
        at_50 = {rid: side(rid) for rid in at_10}
    assert all(at_50[rid] == "2" for rid, version in at_10.items() if version == "2")  # who moved, stays
    assert sum(v == "2" for v in at_10.values()) < sum(v == "2" for v in at_50.values())


def test_shadow_scores_a_copy_off_the_request_path_and_counts_agreement(trained, records):
    holder, _ = serving(trained, Target("1", "2", Traffic("shadow", "2", shadow_share=1.0)))
    with TestClient(create_app(holder)) as client:
        for _ in range(20):
            answer = client.post("/predict", json={"records": records[:5]})
            assert answer.headers["X-Model-Version"] == "1"  # production answers
        time.sleep(1)
        text = client.get("/metrics").text
    agreed = float(re.search(r'api_shadow_agreement_total\{agree="true",version="2"\} (\S+)', text).group(1))
    assert agreed == 100  # the same model under another version number agrees with itself
    assert re.search(r'api_shadow_requests_total\{outcome="scored",version="2"\} 20.0', text)
    assert re.search(r'api_shadow_score_delta_bucket\{le="0.01",version="2"\} 100.0', text)
    # production's scores on the shadowed records, beside the shadow version's: a rollout compares the two
    production = re.findall(r'api_shadow_production_score_bucket\{le="([^"]+)",version="2"\} (\S+)', text)
    shadow = re.findall(r'api_score_bucket\{le="([^"]+)",version="2"\} (\S+)', text)
    assert production and production == shadow and production[-1] == ("+Inf", "100.0")


def test_a_refused_canary_leaves_production_answering_everything(trained, records):
    from api.release.check import RefusedVersion

    crafted = RefusedVersion("2", "classifier.estimators_[3]: node 65's left child is outside the tree")
    holder, _ = serving(trained, Target("1", "2", Traffic("canary", "2", weight=100)), **{"2": crafted})
    with TestClient(create_app(holder)) as client:
        versions = {
            client.post("/predict", json={"records": records[:1]}).headers["X-Model-Version"] for _ in range(20)
        }
        info = client.get("/model").json()
    assert versions == {"1"} and info["canary"] is None and info["traffic"]["mode"] == "off"
    assert "outside the tree" in info["refused_canary"]["reason"]
