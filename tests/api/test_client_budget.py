"""Who a client is, and how many of its requests count for release decisions: pure logic."""

from api.client_budget import BUDGET, TABLE_FULL, ClientBudget, client_key

PEER = ("10.1.2.3", 51000)


def xff(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-forwarded-for", v.encode()) for v in values] + [(b"host", b"api")]


def test_without_trusted_proxies_the_peer_is_the_client_whatever_it_forwards():
    assert client_key(PEER, xff("1.1.1.1"), 0) == "10.1.2.3"
    assert client_key(PEER, [], 0) == "10.1.2.3"
    assert client_key(None, xff("1.1.1.1"), 0) == ""


def test_behind_one_proxy_a_forged_leftmost_entry_does_not_change_the_client():
    # the proxy appended the address it saw (203.0.113.7) to whatever the client sent
    honest = client_key(PEER, xff("203.0.113.7"), 1)
    forged = [client_key(PEER, xff(f"198.51.100.{i}, 203.0.113.7"), 1) for i in range(5)]
    assert honest == "203.0.113.7" and set(forged) == {"203.0.113.7"}


def test_behind_n_proxies_the_nth_entry_from_the_right_is_the_client():
    assert client_key(PEER, xff("6.6.6.6, 203.0.113.7, 10.0.0.2"), 2) == "203.0.113.7"
    assert client_key(PEER, xff("6.6.6.6, 203.0.113.7", "10.0.0.2"), 2) == "203.0.113.7"  # lines joined in order
    assert client_key(PEER, xff("203.0.113.7"), 3) == "203.0.113.7"  # fewer entries: the leftmost
    assert client_key(PEER, [], 2) == "10.1.2.3"  # no header: the peer
    assert client_key(PEER, xff(" , "), 1) == "10.1.2.3"  # only empty entries: none


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_client_counts_up_to_its_budget_each_second_and_others_are_not_affected():
    clock = Clock()
    budget = ClientBudget(3, clock=clock)
    first = [budget.take("a") for _ in range(5)]
    assert first == [None, None, None, BUDGET, BUDGET]
    assert budget.take("b") is None  # another client has its own budget
    clock.now += 0.5
    assert budget.take("a") == BUDGET  # still the same second
    clock.now += 0.6
    assert [budget.take("a") for _ in range(4)] == [None, None, None, BUDGET]  # a new second


def test_past_the_table_of_clients_new_clients_are_not_counted_until_the_next_second():
    clock = Clock()
    budget = ClientBudget(5, max_clients=3, clock=clock)
    assert [budget.take(c) for c in "abc"] == [None, None, None]
    assert budget.take("d") == TABLE_FULL
    assert budget.take("a") is None  # a known client still counts
    budget.clear()
    assert budget.take("d") is None
