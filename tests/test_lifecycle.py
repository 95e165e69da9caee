import pytest

from daemon.domain import Market, Offering
from daemon.lifecycle import TERMINAL, TRANSITIONS, IllegalTransition, Reason, State, all_edges
from daemon.store.repo import Store
from daemon.store.schema import InstanceEvent
from tests.conftest import T0

OFF = Offering("aws", "us-east-1", "us-east-1a", "g5.xlarge", "A10G", 1, Market.SPOT, 0.46)

# A path from REQUESTED to each state, so every edge can be walked from a real row.
PATHS = {
    State.REQUESTED: [],
    State.PROVISIONING: [State.PROVISIONING],
    State.RUNNING: [State.PROVISIONING, State.RUNNING],
    State.DRAINING: [State.PROVISIONING, State.RUNNING, State.DRAINING],
    State.TERMINATING: [State.PROVISIONING, State.RUNNING, State.TERMINATING],
}


@pytest.mark.parametrize("src,dst", all_edges(), ids=lambda s: str(s))
def test_every_edge_is_recorded(store, src, dst):
    with store.session() as s:
        row = Store.create_instance(s, instance_id="i1", name="fleet-i1", service="chat", provider="sim",
                                    offering=OFF, at=T0, reason=Reason.LAUNCH_REQUESTED, decision_id=None)
        for st in PATHS[src]:
            Store.transition(s, row, st, Reason.DRIFT, T0)
        Store.transition(s, row, dst, Reason.PREEMPTED, T0, detail="edge test")
    with store.session() as s:
        evs = s.query(InstanceEvent).order_by(InstanceEvent.id).all()
        assert evs[-1].from_state == str(src) and evs[-1].to_state == str(dst)
        assert len(evs) == len(PATHS[src]) + 2
        if dst in TERMINAL:
            assert s.get(type(row), "i1").ended_at is not None


NON_EDGES = [(s, d) for s in State for d in State if d not in TRANSITIONS[s] and s in PATHS]


@pytest.mark.parametrize("src,dst", NON_EDGES, ids=lambda s: str(s))
def test_illegal_edges_are_refused_and_not_recorded(store, src, dst):
    with store.session() as s:
        row = Store.create_instance(s, instance_id="i1", name="fleet-i1", service="chat", provider="sim",
                                    offering=OFF, at=T0, reason=Reason.LAUNCH_REQUESTED, decision_id=None)
        for st in PATHS[src]:
            Store.transition(s, row, st, Reason.DRIFT, T0)
    with pytest.raises(IllegalTransition):
        with store.session() as s:
            row = s.get(type(row), "i1")
            Store.transition(s, row, dst, Reason.DRIFT, T0)
    with store.session() as s:
        assert s.get(type(row), "i1").state == str(src)
        assert s.query(InstanceEvent).count() == len(PATHS[src]) + 1


def test_terminal_states_have_no_exit():
    for st in TERMINAL:
        assert TRANSITIONS[st] == {}
    for src, dsts in TRANSITIONS.items():
        for dst, why in dsts.items():
            assert why, f"edge {src}->{dst} needs a comment"
