"""The shop's load scenario: the browse-and-buy path (catalog pages, product pages, search, cart).

Conveyor's ``load`` suite runs it with Locust, headless, against the replica (``kind: load`` in
include/services/demo_shop.yaml: users, duration and the thresholds it is judged by). Each simulated
user shops on one replica host: the hosts of ``CONVEYOR_REPLICA_URLS`` in turn (Locust's ``--host`` when
it is not set).

``/recommendations`` is left out on purpose: it is the demo's canary story (v1.2.0 breaks it for a
share of live traffic, and the canary judge, comparing hosts, is what catches it); the load suite
guards the latency and capacity of the path every shopper takes. Run it by hand against a local shop::

    locust -f tests/load/locustfile.py --headless -u 10 -r 10 --run-time 20s --host http://127.0.0.1:8000
"""

from __future__ import annotations

import itertools
import os
import random

from locust import HttpUser, between, task

PRODUCTS = 100  # ids 1..PRODUCTS: the populated catalog holds more (500 in the demo)
QUERIES = ("lamp", "chair", "mug", "desk", "book")
_hosts = itertools.count()


class Shopper(HttpUser):
    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        urls = [u.strip().rstrip("/") for u in os.environ.get("CONVEYOR_REPLICA_URLS", "").split(",") if u.strip()]
        if urls:
            self.client.base_url = urls[next(_hosts) % len(urls)]

    @task(4)
    def browse(self) -> None:
        self.client.get(f"/products?page={random.randint(1, 5)}", name="/products")

    @task(3)
    def product(self) -> None:
        self.client.get(f"/products/{random.randint(1, PRODUCTS)}", name="/products/:id")

    @task(2)
    def search(self) -> None:
        self.client.get(f"/search?q={random.choice(QUERIES)}", name="/search")

    @task(1)
    def cart(self) -> None:
        items = [{"id": random.randint(1, PRODUCTS), "quantity": random.randint(1, 3)} for _ in range(2)]
        self.client.post("/cart", json={"items": items}, name="/cart")
